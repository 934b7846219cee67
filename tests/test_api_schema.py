"""The read API against its own OpenAPI schema: generated requests never get a 5xx.

Schemathesis generates requests for every operation; the app runs in process, with its lifespan
(so the SSE route answers too, cut after its first event), against a real Redis holding stored
aggregates. Positive cases are sent as generated (fuzzed paths, queries and Authorization
headers: mostly 401) and again as an admin for the coach that has data (200, then 304 with the
ETag). Negative cases are sent as an admin and must be refused with a 4xx. Every response is
validated against the schema (status codes, content types, bodies), not only for 5xx.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
import redis
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis import GenerationMode

from api.app import create_app
from config import Settings
from pipeline.aggregates import NAMES
from pipeline.store import AggregateStore
from tests.test_api import SECRET, admin_token, bearer

COACH = UUID("5c4e0e4e-1d0a-4a8f-9a57-3b3f8c2d9e10")
MAX_EXAMPLES = 50


@pytest.fixture
def api_app(settings: Settings, redis_client: redis.Redis) -> FastAPI:
    store = AggregateStore(redis_client)
    now = datetime.now(UTC)
    for name in NAMES:
        value = {"name": name, "numbers": [1, 2.5, None], "nested": {"ok": True}}
        store.write(
            name, 1, store.next_version(COACH), {COACH: value}, snapshot_at=now, computed_at=now
        )
    configured = settings.model_copy(update={"supabase_jwt_secret": SecretStr(SECRET)})
    return create_app(configured)


def load_schema(app: FastAPI, *, admin: bool) -> schemathesis.BaseSchema:
    """The app's schema; with `admin`, every request carries an admin token (not generated)."""
    config: dict[str, Any] = {"max-stream-events": 1}
    if admin:
        config |= {
            "headers": bearer(admin_token()),
            "generation": {"with-security-parameters": False},
        }
    return schemathesis.openapi.from_asgi(
        "/openapi.json", app, config=schemathesis.Config.from_dict(config)
    )


Check = Callable[[schemathesis.Case], Iterator[schemathesis.Response]]


def run(schema: schemathesis.BaseSchema, mode: GenerationMode, check: Check) -> Counter[int]:
    seen: Counter[int] = Counter()

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def each(case: schemathesis.Case) -> None:
        for response in check(case):
            seen[response.status_code] += 1

    each()
    print(f"\n{mode}: responses by status {dict(sorted(seen.items()))}")
    assert not any(status >= 500 for status in seen)
    return seen


def test_generated_requests_and_tokens_get_no_server_error(api_app: FastAPI) -> None:
    """Generated paths, queries and Authorization headers; then the same request as an admin
    for the coach that has data (200, and 304 when the ETag is sent back)."""

    def check(case: schemathesis.Case) -> Iterator[schemathesis.Response]:
        yield case.call_and_validate()
        parameters = dict(case.path_parameters or {})
        if "coach_id" in parameters:
            parameters["coach_id"] = str(COACH)
        if "name" in parameters:
            parameters["name"] = "coach-stats"
        case.path_parameters = parameters
        response = case.call_and_validate(headers=bearer(admin_token()))
        yield response
        if tag := response.headers.get("etag"):
            yield case.call_and_validate(headers=bearer(admin_token()) | {"If-None-Match": tag[0]})

    seen = run(load_schema(api_app, admin=False), GenerationMode.POSITIVE, check)
    assert seen[200] and seen[304] and seen[401], seen


def test_schema_violating_requests_are_refused_with_4xx(api_app: FastAPI) -> None:
    """Negative cases as an admin: malformed coach ids and parameters are 4xx, never 2xx/5xx."""

    def check(case: schemathesis.Case) -> Iterator[schemathesis.Response]:
        yield case.call_and_validate()

    seen = run(load_schema(api_app, admin=True), GenerationMode.NEGATIVE, check)
    assert seen[422], seen
