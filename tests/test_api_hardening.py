"""Safe defaults of the read API: token audience, issuer and lifetime; rejections logged once
per reason; bounded request heads; page headers; CORS only for the team's own origin."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.auth import AuthError, RejectionLog, Verifier
from config import Settings
from devtools.processes import wait_for
from tests.test_api import COACH, SECRET, claims, hs256

ISSUER = "https://abcdefgh.supabase.co/auth/v1"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"supabase_jwt_secret": SecretStr(SECRET), "jwt_issuer": ISSUER}
    )


def user(**extra: object) -> str:
    return hs256(claims(sub=str(COACH), iss=ISSUER) | extra)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: user(aud="evil"), "audience"),
        (lambda: user(aud=None), "audience"),
        (lambda: user(iss="https://other.supabase.co/auth/v1"), "issuer"),
        (lambda: hs256(claims(sub=str(COACH))), "issuer"),  # no iss at all
        (lambda: user(exp=1e300), "lifetime"),
        (lambda: user(iat=int(time.time()), exp=int(time.time()) + 8 * 86_400), "lifetime"),
        (lambda: user(exp=int(time.time()) - 3600), "expired"),
        (lambda: hs256(claims(sub=str(COACH), iss=ISSUER), "another-secret-of-32-bytes-or-more"),
         "signature"),
        (lambda: "garbage", "malformed"),
    ],
)  # fmt: skip
def test_a_user_token_must_be_this_projects_for_this_audience_and_short_lived(
    api_settings: Settings, token: object, reason: str
) -> None:
    with pytest.raises(AuthError) as refused:
        Verifier(api_settings).verify(token())  # type: ignore[operator]
    assert refused.value.reason == reason


def test_good_user_tokens_and_project_keys_pass(api_settings: Settings) -> None:
    verifier = Verifier(api_settings)
    assert verifier.verify(user()).subject == str(COACH)
    assert verifier.verify(user(aud=["authenticated", "other"])).subject == str(COACH)
    # Supabase's service_role key: no subject, no audience, issuer "supabase".
    key = hs256({"iss": "supabase", "role": "service_role", "iat": 1, "exp": int(time.time()) + 60})
    assert verifier.verify(key).admin


def test_without_an_issuer_configured_the_issuer_is_not_checked(settings: Settings) -> None:
    plain = settings.model_copy(update={"supabase_jwt_secret": SecretStr(SECRET)})
    assert Verifier(plain).verify(hs256(claims(sub=str(COACH)))).subject == str(COACH)


@pytest.mark.parametrize(
    ("moments", "logged"),
    [
        ([0], [1]),
        ([0, 1, 2], [1, 0, 0]),
        ([0, 30, 61], [1, 0, 2]),
        ([0, 61, 122], [1, 1, 1]),
        ([0, 59.9, 60, 60.1], [1, 0, 2, 0]),
    ],
)
def test_one_rejection_line_per_reason_per_minute_counting_the_rest(
    moments: list[float], logged: list[int]
) -> None:
    now = [0.0]
    rejections = RejectionLog(every_s=60, clock=lambda: now[0])
    seen = []
    for moment in moments:
        now[0] = moment
        seen.append(rejections.should_log("expired"))
    assert seen == logged
    assert rejections.should_log("audience") == 1  # reasons are limited apart


def test_the_page_forbids_framing_and_foreign_scripts(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings)) as client:
        headers = client.get("/dashboard").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


def test_cors_answers_only_the_configured_origin(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings)) as closed:
        assert (
            "access-control-allow-origin"
            not in closed.options(
                "/status",
                headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
            ).headers
        )
    allowed = api_settings.model_copy(update={"api_cors_origins": "https://app.example"})
    with TestClient(create_app(allowed)) as client:
        ok = client.options(
            "/status",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        )
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = client.options(
            "/status",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in other.headers


def _raw(base: str, head: bytes, body_after: int = 0) -> tuple[bytes, float]:
    """Send `head` in 64 KiB pieces on a raw socket; the status line and the seconds taken."""
    parts = urlsplit(base)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        try:
            for start in range(0, len(head), 65_536):
                sock.sendall(head[start : start + 65_536])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest arrived: the point
        answer = sock.recv(200)
    return answer.split(b"\r\n", 1)[0], time.monotonic() - started


def test_oversized_heads_are_refused_at_once_and_others_still_served(
    api: str, tmp_path: Path
) -> None:
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 30_000_000
    status, _ = _raw(api, huge + b"\r\n\r\n")
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    status, _ = _raw(api, b"GET /healthz?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == b"HTTP/1.1 414 URI Too Long"
    many = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 100) for i in range(300))
    status, _ = _raw(api, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert httpx.get(f"{api}/healthz", timeout=5).status_code == 200
    log = tmp_path / "api.log"
    wait_for(lambda: "request_head_too_large" in log.read_text(), 10)


def test_a_rejected_token_leaves_one_log_line_with_its_reason(api: str, tmp_path: Path) -> None:
    for _ in range(5):
        answer = httpx.get(
            f"{api}/coaches/{COACH}/aggregates", headers={"Authorization": "Bearer garbage"}
        )
        assert answer.status_code == 401
    log = tmp_path / "api.log"
    wait_for(lambda: "token_rejected" in log.read_text(), 10)
    lines = [line for line in log.read_text().splitlines() if "token_rejected" in line]
    assert len(lines) == 1 and "reason=malformed" in lines[0]
