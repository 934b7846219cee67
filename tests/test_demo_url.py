"""The dashboard address the demo prints: signed in when it can be, never a crash when not."""

from __future__ import annotations

import uuid

import jwt
from pydantic import SecretStr

from coachpipe.demo import dashboard_url

COACH = uuid.UUID("00000000-0000-0000-0000-0000000000c1")
API = "http://127.0.0.1:8000"


def test_with_the_project_secret_the_url_carries_a_token_for_the_coach() -> None:
    url = dashboard_url(API, COACH, SecretStr("s" * 32), "Ada Coach")
    page, token = url.split("#token=")
    assert page == f"{API}/dashboard?coach={COACH}"
    claims = jwt.decode(token, "s" * 32, algorithms=["HS256"], audience="authenticated")
    assert (claims["sub"], claims["role"]) == (str(COACH), "authenticated")
    assert claims["user_metadata"] == {"full_name": "Ada Coach"}  # the page shows the name


def test_a_jwks_only_project_gets_the_page_without_a_token() -> None:
    url = dashboard_url(API, COACH, None)
    assert url.startswith(f"{API}/dashboard?coach={COACH} ")
    assert "#token=" not in url
