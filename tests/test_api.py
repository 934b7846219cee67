"""The read API against a real Redis: who may read what, ETags, and live events over SSE.

Request/response tests use Starlette's TestClient (the app with its lifespan, in process). The
SSE tests need a real server: uvicorn runs in a thread on a free port and a real HTTP client
reads the stream, while the test writes through `AggregateStore` and `HealthBoard`, exactly as
workers and listeners do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.server
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import httpx
import jwt
import orjson
import pytest
import redis
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from pydantic import SecretStr

from api.app import STATUS_POLL_S, create_app
from api.auth import LEEWAY_S, AuthError, Verifier
from coachpipe.embedded import free_port
from config import Settings
from devtools.processes import wait_for
from pipeline.health import HealthBoard, ListenerHealth, ListenerState
from pipeline.store import AggregateStore

SECRET = "a-test-only-hs256-secret-of-32+-bytes"
COACH = UUID("0b5e4a52-3c1f-4d55-9d1e-6f6a0c7f1a01")
OTHER = UUID("0b5e4a52-3c1f-4d55-9d1e-6f6a0c7f1a02")
STATS = "coach-stats"
ACTIVITY = "coach-activity"


# --- tokens ---------------------------------------------------------------------------------
def claims(sub: str | None = str(COACH), *, ttl_s: float = 300, **extra: Any) -> dict[str, Any]:
    """Claims shaped like Supabase's: `sub` is the user id, `role` the Postgres role."""
    now = int(time.time())
    values: dict[str, Any] = {"iat": now, "exp": now + int(ttl_s), "aud": "authenticated"}
    values.setdefault("role", "authenticated")
    if sub is not None:
        values["sub"] = sub
    return values | extra


def hs256(payload: dict[str, Any], secret: str | bytes = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_made(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A token assembled without PyJWT, which refuses to make some of the bad ones we need."""
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(payload))}".encode()
    return f"{signing_input.decode()}.{b64(sign(signing_input))}"


def unsigned(payload: dict[str, Any]) -> str:
    return hand_made({"alg": "none", "typ": "JWT"}, payload, lambda _: b"")


def tampered(token: str) -> str:
    """The same token with one signature byte changed."""
    head, body, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0xFF
    return f"{head}.{body}.{b64(bytes(raw))}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin_token() -> str:
    """Like Supabase's service_role key: a role, no subject."""
    return hs256(claims(sub=None, role="service_role"))


# --- stored data ----------------------------------------------------------------------------
def store(client: redis.Redis, coach: UUID, name: str, value: dict[str, Any]) -> int:
    """One stored write, as a worker makes it (versioned CAS + update notice)."""
    writer = AggregateStore(client)
    version = writer.next_version(coach)
    now = datetime.now(UTC)
    result = writer.write(name, 1, version, {coach: value}, snapshot_at=now, computed_at=now)
    assert result.stored == 1
    return version


@pytest.fixture
def stored(redis_client: redis.Redis) -> dict[tuple[UUID, str], int]:
    return {
        (COACH, STATS): store(redis_client, COACH, STATS, {"sessions": {"completed": 7}}),
        (COACH, ACTIVITY): store(redis_client, COACH, ACTIVITY, {"items": []}),
        (OTHER, STATS): store(redis_client, OTHER, STATS, {"sessions": {"completed": 3}}),
    }


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"supabase_jwt_secret": SecretStr(SECRET)})


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as test_client:
        yield test_client


# --- the auth matrix ------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    headers: Callable[[], dict[str, str]]
    status: int
    coach: UUID = COACH


AUTH_CASES = [
    Case("no token", dict, 401),
    Case("not a JWT", lambda: bearer("not.a.jwt"), 401),
    Case("garbage", lambda: bearer("x"), 401),
    Case("Basic scheme", lambda: {"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    Case("Bearer without a token", lambda: {"Authorization": "Bearer "}, 401),
    Case("expired", lambda: bearer(hs256(claims(ttl_s=-600))), 401),
    Case("no exp", lambda: bearer(hs256({"sub": str(COACH), "role": "authenticated"})), 401),
    Case("wrong signature", lambda: bearer(tampered(hs256(claims()))), 401),
    Case("alg none", lambda: bearer(unsigned(claims())), 401),
    Case("alg none, admin", lambda: bearer(unsigned(claims(role="service_role"))), 401),
    Case(
        "another secret",
        lambda: bearer(hs256(claims(), "another-secret-of-at-least-32-bytes")),
        401,
    ),
    Case("no subject", lambda: bearer(hs256(claims(sub=None))), 401),
    Case("another coach", lambda: bearer(hs256(claims(sub=str(OTHER)))), 403),
    Case("self", lambda: bearer(hs256(claims())), 200),
    Case("self, lowercase scheme", lambda: {"Authorization": f"bearer {hs256(claims())}"}, 200),
    Case("service_role, no sub", lambda: bearer(admin_token()), 200, OTHER),
    Case("service_role with sub", lambda: bearer(hs256(claims(role="service_role"))), 200, OTHER),
    Case(
        "app_metadata admin",
        lambda: bearer(hs256(claims(sub=str(uuid4()), app_metadata={"role": "admin"}))),
        200,
        OTHER,
    ),
    Case(
        "user_metadata admin is the user's own say",
        lambda: bearer(hs256(claims(sub=str(uuid4()), user_metadata={"role": "admin"}))),
        403,
        OTHER,
    ),
    Case("anon key", lambda: bearer(hs256(claims(sub=None, role="anon"))), 403),
    Case("anon with sub", lambda: bearer(hs256(claims(role="anon"))), 403),
]


# An accepted event stream never ends, so TestClient cannot read it: those cases run on a real
# server in test_who_may_read_the_event_stream.
REQUESTS = [
    (route, case)
    for route in ("all", "one", "events")
    for case in AUTH_CASES
    if not (route == "events" and case.status == 200)
]
ACCEPTED = [case for case in AUTH_CASES if case.status == 200]


@pytest.mark.parametrize(
    ("route", "case"), REQUESTS, ids=[f"{route}-{case.name}" for route, case in REQUESTS]
)
def test_who_may_read(
    client: TestClient, stored: dict[tuple[UUID, str], int], case: Case, route: str
) -> None:
    path = (
        f"/coaches/{case.coach}/"
        + {
            "all": "aggregates",
            "one": f"aggregates/{STATS}",
            "events": "events",
        }[route]
    )
    response = client.get(path, headers=case.headers())
    assert response.status_code == case.status, response.text
    if case.status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    if case.status == 200:
        assert response.json()["aggregates" if route == "all" else "version"]


def test_the_event_stream_takes_its_token_from_the_query(client: TestClient) -> None:
    """EventSource cannot set headers, so `access_token` is read from the query as well."""
    mine = client.get(f"/coaches/{OTHER}/events", params={"access_token": hs256(claims())})
    assert mine.status_code == 403
    bad = client.get(f"/coaches/{COACH}/events", params={"access_token": unsigned(claims())})
    assert bad.status_code == 401


def test_status_needs_a_token(client: TestClient) -> None:
    assert client.get("/status").status_code == 401
    assert client.get("/status", headers=bearer(hs256(claims(role="anon")))).status_code == 403


def test_healthz_needs_no_token(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_without_a_configured_key_every_token_is_refused(settings: Settings) -> None:
    with TestClient(create_app(settings)) as unconfigured:
        response = unconfigured.get(f"/coaches/{COACH}/aggregates", headers=bearer(admin_token()))
    assert response.status_code == 401
    assert "not configured" in response.json()["detail"]


def test_a_remembered_token_still_expires_on_the_verifiers_clock(api_settings: Settings) -> None:
    now = [float(int(time.time()))]
    verifier = Verifier(api_settings, clock=lambda: now[0])
    token = hs256(claims() | {"exp": int(now[0]) + 60})
    assert verifier.verify(token).subject == str(COACH)
    now[0] += 60 + LEEWAY_S - 1  # past exp, within the leeway; past the cache's TTL too
    assert verifier.verify(token).subject == str(COACH)
    now[0] += 0.5
    assert verifier.verify(token).subject == str(COACH)  # remembered
    now[0] += 1
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token)


@pytest.mark.parametrize("exp", ["tomorrow", None, True, [1]], ids=repr)
def test_an_exp_that_is_not_a_number_is_refused(api_settings: Settings, exp: object) -> None:
    token = hs256({"sub": str(COACH), "role": "authenticated", "exp": exp})
    with pytest.raises(AuthError):
        Verifier(api_settings).verify(token)


# --- asymmetric keys from a JWKS endpoint ---------------------------------------------------
@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        exporter: dict[str, Any] = {
            "RS256": RSAAlgorithm,
            "ES256": ECAlgorithm,
            "EdDSA": OKPAlgorithm,
        }
        public: dict[str, Any] = exporter[self.algorithm].to_jwk(
            self.private.public_key(), as_dict=True
        )
        return public | {"kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, payload: dict[str, Any], kid: str | None = None) -> str:
        return jwt.encode(
            payload, self.private, algorithm=self.algorithm, headers={"kid": kid or self.kid}
        )


def new_key(algorithm: str, kid: str) -> SigningKey:
    if algorithm == "RS256":
        return SigningKey(kid, algorithm, rsa.generate_private_key(65537, 2048))
    if algorithm == "ES256":
        return SigningKey(kid, algorithm, ec.generate_private_key(ec.SECP256R1()))
    return SigningKey(kid, algorithm, ed25519.Ed25519PrivateKey.generate())


ALGORITHMS = ("RS256", "ES256", "EdDSA")


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, SigningKey]:
    return {algorithm: new_key(algorithm, f"key-{algorithm.lower()}") for algorithm in ALGORITHMS}


@pytest.fixture(scope="module")
def jwks_url(signing_keys: dict[str, SigningKey]) -> Iterator[str]:
    """A tiny JWKS endpoint, like Supabase's `/auth/v1/.well-known/jwks.json`."""
    body = orjson.dumps({"keys": [key.jwk() for key in signing_keys.values()]})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/auth/v1/.well-known/jwks.json"
    server.shutdown()
    server.server_close()


@pytest.fixture
def jwks_client(api_settings: Settings, jwks_url: str) -> Iterator[TestClient]:
    """A project that signs with asymmetric keys and still accepts its legacy HS256 secret."""
    configured = api_settings.model_copy(update={"supabase_jwks_url": SecretStr(jwks_url)})
    with TestClient(create_app(configured)) as test_client:
        yield test_client


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_asymmetric_tokens_are_verified_with_the_jwks_keys(
    jwks_client: TestClient,
    stored: dict[tuple[UUID, str], int],
    signing_keys: dict[str, SigningKey],
    algorithm: str,
) -> None:
    key = signing_keys[algorithm]
    path = f"/coaches/{COACH}/aggregates/{STATS}"
    assert jwks_client.get(path, headers=bearer(key.sign(claims()))).status_code == 200
    assert (
        jwks_client.get(path, headers=bearer(key.sign(claims(sub=str(OTHER))))).status_code == 403
    )

    impostor = new_key(algorithm, key.kid)  # same kid, another private key
    refused = jwks_client.get(path, headers=bearer(impostor.sign(claims())))
    assert refused.status_code == 401, refused.text
    unknown = jwks_client.get(path, headers=bearer(key.sign(claims(), kid="no-such-key")))
    assert unknown.status_code == 401, unknown.text
    expired = jwks_client.get(path, headers=bearer(key.sign(claims(ttl_s=-600))))
    assert expired.status_code == 401


def test_a_key_is_used_only_with_its_own_algorithm(
    jwks_client: TestClient,
    stored: dict[tuple[UUID, str], int],
    signing_keys: dict[str, SigningKey],
) -> None:
    path = f"/coaches/{COACH}/aggregates/{STATS}"
    rsa_key = signing_keys["RS256"]
    # An ES256 signature presented under the RSA key's kid.
    wrong_kid = signing_keys["ES256"].sign(claims(), kid=rsa_key.kid)
    assert jwks_client.get(path, headers=bearer(wrong_kid)).status_code == 401
    # The classic confusion: HMAC keyed with the RSA public key's PEM, sent as HS256.
    pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused = hand_made(
        {"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid},
        claims(),
        lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )
    assert jwks_client.get(path, headers=bearer(confused)).status_code == 401
    # The project's HS256 secret still works next to the JWKS.
    assert jwks_client.get(path, headers=bearer(hs256(claims()))).status_code == 200


def test_an_asymmetric_token_is_refused_without_a_jwks(
    client: TestClient, stored: dict[tuple[UUID, str], int], signing_keys: dict[str, SigningKey]
) -> None:
    token = signing_keys["ES256"].sign(claims())
    response = client.get(f"/coaches/{COACH}/aggregates/{STATS}", headers=bearer(token))
    assert response.status_code == 401


# --- reading --------------------------------------------------------------------------------
def test_all_aggregates_of_a_coach(client: TestClient, stored: dict[tuple[UUID, str], int]) -> None:
    response = client.get(f"/coaches/{COACH}/aggregates", headers=bearer(hs256(claims())))
    assert response.status_code == 200
    body = response.json()
    assert body["coach_id"] == str(COACH)
    assert set(body["aggregates"]) == {STATS, ACTIVITY}
    stats = body["aggregates"][STATS]
    assert stats["version"] == stored[(COACH, STATS)]
    assert stats["value"] == {"sessions": {"completed": 7}}
    assert stats["aggregate"] == STATS
    assert stats["schema_version"] == 1
    assert response.headers["Cache-Control"] == "private, no-cache"


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        (f"/coaches/{uuid4()}/aggregates", "nothing stored"),
        (f"/coaches/{uuid4()}/aggregates/{STATS}", "nothing stored"),
        (f"/coaches/{COACH}/aggregates/coach-trends", "nothing stored"),
        (f"/coaches/{COACH}/aggregates/no-such-aggregate", "unknown aggregate"),
    ],
)
def test_unknown_coach_or_aggregate_is_404(
    client: TestClient, stored: dict[tuple[UUID, str], int], path: str, detail: str
) -> None:
    response = client.get(path, headers=bearer(admin_token()))
    assert response.status_code == 404
    assert detail in response.json()["detail"]


def test_a_coach_id_that_is_not_a_uuid_is_422(client: TestClient) -> None:
    assert client.get("/coaches/42/aggregates", headers=bearer(admin_token())).status_code == 422


@pytest.mark.parametrize("route", ["one", "all"])
def test_etag_answers_304_until_a_new_version_is_stored(
    client: TestClient,
    redis_client: redis.Redis,
    stored: dict[tuple[UUID, str], int],
    route: str,
) -> None:
    path = f"/coaches/{COACH}/aggregates" + (f"/{STATS}" if route == "one" else "")
    auth = bearer(hs256(claims()))
    first = client.get(path, headers=auth)
    assert first.status_code == 200
    tag = first.headers["ETag"]
    assert tag.startswith('"') and tag.endswith('"')

    for sent in (tag, f"W/{tag}", f'"something-else", {tag}', "*"):
        again = client.get(path, headers=auth | {"If-None-Match": sent})
        assert again.status_code == 304, sent
        assert again.headers["ETag"] == tag
        assert again.content == b""
    assert client.get(path, headers=auth | {"If-None-Match": '"old"'}).status_code == 200

    version = store(redis_client, COACH, STATS, {"sessions": {"completed": 8}})
    changed = client.get(path, headers=auth | {"If-None-Match": tag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != tag
    body = changed.json()
    stats = body if route == "one" else body["aggregates"][STATS]
    assert stats["version"] == version
    assert stats["value"] == {"sessions": {"completed": 8}}


def test_an_older_version_never_replaces_what_is_served(
    client: TestClient, redis_client: redis.Redis, stored: dict[tuple[UUID, str], int]
) -> None:
    now = datetime.now(UTC)
    stale = AggregateStore(redis_client).write(
        STATS, 1, 1, {COACH: {"stale": True}}, snapshot_at=now, computed_at=now
    )
    assert stale.stale == 1
    body = client.get(f"/coaches/{COACH}/aggregates/{STATS}", headers=bearer(admin_token())).json()
    assert body["value"] == {"sessions": {"completed": 7}}


def heartbeat(board: HealthBoard, state: ListenerState, listener_id: str = "test:1") -> None:
    board.report(ListenerHealth(listener_id, "postgres", state, time.time(), detail="slot ok"))


def test_status_hides_listener_details_from_coaches(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    board = HealthBoard(redis_client, stale_after_s=settings.heartbeat_stale_s)
    assert client.get("/status", headers=bearer(admin_token())).json()["status"] == "red"
    heartbeat(board, ListenerState.CONNECTED)

    admin = client.get("/status", headers=bearer(admin_token())).json()
    assert admin["status"] == "green"
    assert [listener["listener_id"] for listener in admin["listeners"]] == ["test:1"]
    assert admin["listeners"][0]["detail"] == "slot ok"

    coach = client.get("/status", headers=bearer(hs256(claims()))).json()
    assert coach["status"] == "green"
    assert coach["listeners"] == []


def test_without_redis_reads_are_503_not_500(api_settings: Settings) -> None:
    nowhere = SecretStr(f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(api_settings.model_copy(update={"redis_url": nowhere}))) as down:
        for path in (f"/coaches/{COACH}/aggregates", f"/coaches/{COACH}/aggregates/{STATS}"):
            response = down.get(path, headers=bearer(admin_token()))
            assert response.status_code == 503, response.text
        assert down.get("/healthz").status_code == 503


def test_openapi_and_dashboard_are_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/coaches/{coach_id}/aggregates/{name}" in schema["paths"]
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert 'data-testid="sessions-completed"' in page.text


# --- live events over SSE on a real server --------------------------------------------------
@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """uvicorn on a free port in a thread; the base URL while it runs."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, message="uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def base_url(api_settings: Settings) -> Iterator[str]:
    with serving(create_app(api_settings)) as url:
        yield url


@dataclass(frozen=True)
class Received:
    kind: str
    data: dict[str, Any]
    at: float
    """time.time() when the client parsed it."""


async def _read(response: httpx.Response, queue: asyncio.Queue[Received]) -> None:
    kind, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            kind = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data += line.removeprefix("data:").strip()
        elif not line and data:
            await queue.put(Received(kind, orjson.loads(data), time.time()))
            kind, data = "message", ""


@contextlib.asynccontextmanager
async def subscribe(
    base_url: str, coach: UUID, headers: dict[str, str]
) -> AsyncIterator[asyncio.Queue[Received]]:
    """An SSE client reading in the background; the events land in the yielded queue."""
    queue: asyncio.Queue[Received] = asyncio.Queue()
    timeout = httpx.Timeout(10, read=None)
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=timeout) as http,
        http.stream("GET", f"/coaches/{coach}/events", headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = asyncio.create_task(_read(response, queue))
        try:
            yield queue
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def next_event(queue: asyncio.Queue[Received], kind: str, timeout: float) -> Received:
    """The next event of `kind`, skipping others."""
    async with asyncio.timeout(timeout):
        while True:
            event = await queue.get()
            if event.kind == kind:
                return event


# How long an event takes to arrive is measured by the benchmark; here a wait only bounds a hang.
EVENT_TIMEOUT_S = 10


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda case: case.name)
def test_who_may_read_the_event_stream(
    base_url: str, redis_client: redis.Redis, case: Case
) -> None:
    """The accepted tokens of the auth matrix open the stream and receive its coach's writes."""

    async def scenario() -> None:
        async with subscribe(base_url, case.coach, case.headers()) as events:
            await next_event(events, "status", EVENT_TIMEOUT_S)
            version = store(redis_client, case.coach, STATS, {"sessions": {"completed": 1}})
            update = await next_event(events, "update", EVENT_TIMEOUT_S)
            assert update.data["coach_id"] == str(case.coach), update
            assert update.data["version"] == version

    asyncio.run(scenario())


def test_sse_delivers_the_watched_coachs_writes_in_order(
    base_url: str, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        async with subscribe(base_url, COACH, bearer(hs256(claims()))) as events:
            await next_event(events, "status", EVENT_TIMEOUT_S)  # the stream is live
            for round_ in range(6):
                store(redis_client, OTHER, STATS, {"round": round_})  # not ours: never delivered
                version = store(redis_client, COACH, STATS, {"round": round_})
                event = await next_event(events, "update", EVENT_TIMEOUT_S)
                # Notices travel in order on one subscription, so had the other coach's write
                # (or a repeat of the previous round's) been delivered it would be this event.
                assert event.data["coach_id"] == str(COACH), event
                assert event.data["aggregate"] == STATS
                assert event.data["version"] == version

    asyncio.run(scenario())


def test_sse_admin_watches_any_coach_and_each_stream_gets_only_its_coach(
    base_url: str, redis_client: redis.Redis
) -> None:
    async def scenario() -> None:
        async with (
            subscribe(base_url, OTHER, bearer(admin_token())) as other_events,
            subscribe(base_url, COACH, bearer(hs256(claims()))) as coach_events,
        ):
            await next_event(other_events, "status", EVENT_TIMEOUT_S)
            await next_event(coach_events, "status", EVENT_TIMEOUT_S)
            store(redis_client, OTHER, ACTIVITY, {"items": []})
            received = await next_event(other_events, "update", EVENT_TIMEOUT_S)
            assert received.data["coach_id"] == str(OTHER)
            assert received.data["aggregate"] == ACTIVITY
            # Had the coach's stream carried the other coach's write, it would come before this.
            mine = store(redis_client, COACH, ACTIVITY, {"items": []})
            received = await next_event(coach_events, "update", EVENT_TIMEOUT_S)
            assert (received.data["coach_id"], received.data["version"]) == (str(COACH), mine)

    asyncio.run(scenario())


def test_sse_carries_realtime_status_changes(
    base_url: str, redis_client: redis.Redis, settings: Settings
) -> None:
    """Heartbeats → green; reconnecting → yellow; heartbeats stop → red once they are stale."""
    board = HealthBoard(redis_client, stale_after_s=settings.heartbeat_stale_s)
    beating: dict[str, ListenerState] = {}

    async def report_every_half_second() -> None:
        while True:
            if "state" in beating:
                await asyncio.to_thread(heartbeat, board, beating["state"])
            await asyncio.sleep(0.5)

    async def scenario() -> float:
        async with subscribe(base_url, COACH, bearer(hs256(claims()))) as events:
            first = await next_event(events, "status", EVENT_TIMEOUT_S)
            assert first.data["status"] == "red"
            reporter = asyncio.create_task(report_every_half_second())
            try:
                beating["state"] = ListenerState.CONNECTED
                green = await next_event(events, "status", STATUS_POLL_S + EVENT_TIMEOUT_S)
                assert green.data["status"] == "green", green
                assert "connected" in green.data["reason"]

                beating["state"] = ListenerState.RECONNECTING
                yellow = await next_event(events, "status", STATUS_POLL_S + EVENT_TIMEOUT_S)
                assert yellow.data["status"] == "yellow", yellow
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            last_beat = max(h.heartbeat_at for h in board.listeners())
            red = await next_event(
                events, "status", settings.heartbeat_stale_s + STATUS_POLL_S + EVENT_TIMEOUT_S
            )
            assert red.data["status"] == "red", red
            assert "stale" in red.data["reason"]
            return red.at - last_beat

    after = asyncio.run(scenario())
    # Not how soon (the benchmark measures that) but not too soon: red only once it is stale.
    assert after >= settings.heartbeat_stale_s


def test_sse_a_closed_stream_leaves_no_watcher_behind(api_settings: Settings) -> None:
    app = create_app(api_settings)

    async def scenario(url: str) -> None:
        async with (
            subscribe(url, COACH, bearer(hs256(claims()))) as first,
            subscribe(url, OTHER, bearer(admin_token())) as second,
        ):
            await next_event(first, "status", EVENT_TIMEOUT_S)
            await next_event(second, "status", EVENT_TIMEOUT_S)
            assert app.state.broadcaster.subscribers == 2

    with serving(app) as url:
        asyncio.run(scenario(url))
        wait_for(lambda: app.state.broadcaster.subscribers == 0, 5, message="watchers to go")
