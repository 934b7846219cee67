"""The read API: aggregates from Redis (never Postgres), live updates over SSE, the dashboard.

Every coach route needs a bearer token (or `access_token` query parameter for EventSource,
which cannot set headers) that lets its holder read that coach; see `auth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.resources import files
from typing import Annotated, Any
from uuid import UUID

import orjson
import redis
import redis.asyncio as aioredis
import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.auth import AuthError, ForbiddenError, Principal, Verifier
from api.broadcast import Broadcaster
from config import Settings
from pipeline import keys
from pipeline.aggregates import NAMES
from pipeline.health import HealthBoard, RealtimeStatus
from pipeline.redis_values import as_text

STATUS_POLL_S = 1.0
KEEPALIVE_S = 15
FIELDS = ("version", "computed_at", "schema", "value", "as_of")
log = structlog.get_logger("api")


class StoredAggregateOut(BaseModel):
    aggregate: str
    version: int
    computed_at: str
    as_of: str
    schema_version: int
    value: dict[str, Any]


class CoachAggregatesOut(BaseModel):
    coach_id: UUID
    aggregates: dict[str, StoredAggregateOut]


class ListenerOut(BaseModel):
    listener_id: str
    source: str
    state: str
    heartbeat_at: float
    last_event_at: float | None
    reconnect_attempts: int
    detail: str


class StatusOut(BaseModel):
    status: str = Field(description="green, yellow or red")
    reason: str
    listeners: list[ListenerOut] = Field(default_factory=list, description="admins only")


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing, expired, malformed or unverifiable token"},
    403: {"model": Problem, "description": "the token may not read this coach"},
}


NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified: the `If-None-Match` ETag is still current"},
    404: {"model": Problem, "description": "nothing stored (or no such aggregate)"},
    503: {"model": Problem, "description": "Redis does not answer"},
}


@dataclass(frozen=True)
class Stored:
    """One stored aggregate as read from Redis; its value stays the JSON the worker wrote."""

    version: int
    body: dict[str, Any]


def _stored(name: str, fields: list[Any]) -> Stored | None:
    if fields[0] is None:
        return None
    version, computed_at, schema, value, as_of = fields
    body = {
        "aggregate": name,
        "version": int(version),
        "computed_at": as_text(computed_at),
        "as_of": as_text(as_of),
        "schema_version": int(schema),
        "value": orjson.Fragment(value),  # spliced in as stored: no parse, no re-serialization
    }
    return Stored(int(version), body)


def _etag(parts: list[str]) -> str:
    return '"' + hashlib.blake2s("|".join(parts).encode(), digest_size=12).hexdigest() + '"'


def _not_modified(request: Request, tag: str) -> bool:
    """RFC 9110 weak comparison: `W/` prefixes are ignored, `*` matches any stored value."""
    sent = {
        t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")
    }
    return tag in sent or "*" in sent


def _json(body: Any, tag: str) -> Response:
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={"ETag": tag, "Cache-Control": "private, no-cache"},
    )


def _status_json(status: RealtimeStatus) -> str:
    return orjson.dumps({"status": status.color.value, "reason": status.reason}).decode()


BEARER = HTTPBearer(
    auto_error=False,
    description="A Supabase access token (HS256 project secret or a key of the project's JWKS).",
)


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    access_token: Annotated[
        str | None, Query(description="The token, for EventSource (it cannot set headers).")
    ] = None,
) -> Principal:
    """The verified holder of the request's bearer token, else of `access_token`."""
    if request.headers.get("authorization") and credentials is None:
        raise AuthError("Authorization must be 'Bearer <token>'")
    token = credentials.credentials if credentials is not None else access_token
    verifier: Verifier = request.app.state.verifier
    return await verifier.verify_async(token)


# Module level, so FastAPI resolves the (postponed) annotation as a dependency.
Who = Annotated[Principal, Depends(principal)]


def create_app(settings: Settings) -> FastAPI:
    verifier = Verifier(settings)
    client = aioredis.Redis.from_url(settings.require_redis_url(), health_check_interval=30)
    board_client = redis.Redis.from_url(settings.require_redis_url())
    board = HealthBoard(
        board_client, stale_after_s=settings.heartbeat_stale_s, red_after_s=settings.red_after_s
    )
    broadcaster = Broadcaster(client)
    latest: dict[str, RealtimeStatus] = {}

    async def watch_status() -> None:
        """Poll the listeners' health; tell every stream when the color changes."""
        while True:
            try:
                status = await asyncio.to_thread(board.status)
            except Exception as error:  # Redis away: keep the last known status, try again
                log.warning("status_poll_failed", error_type=type(error).__name__)
            else:
                previous = latest.get("status")
                latest["status"] = status
                if previous is None or status.color != previous.color:
                    broadcaster.publish_status(_status_json(status))
            await asyncio.sleep(STATUS_POLL_S)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await broadcaster.start()
        watcher = asyncio.create_task(watch_status())
        yield
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await broadcaster.stop()
        await client.aclose()
        board_client.close()

    app = FastAPI(
        title="coachpipe read API",
        version="1",
        description="Precomputed coach dashboard aggregates, fresh within a second of a change.",
        lifespan=lifespan,
    )

    app.state.verifier = verifier
    app.state.broadcaster = broadcaster

    @app.exception_handler(AuthError)
    async def auth_failed(_: Request, error: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
        return JSONResponse({"detail": str(error)}, status_code=error.status, headers=headers)

    @app.exception_handler(redis.RedisError)
    async def redis_failed(request: Request, error: redis.RedisError) -> JSONResponse:
        log.warning("api_redis_error", path=request.url.path, error_type=type(error).__name__)
        return JSONResponse({"detail": "aggregates are unavailable (Redis)"}, status_code=503)

    def readable(coach_id: UUID, who: Principal) -> None:
        if not who.may_read(coach_id):
            raise ForbiddenError("this token may only read its own coach's aggregates")

    @app.get(
        "/coaches/{coach_id}/aggregates",
        response_model=CoachAggregatesOut,
        responses=ERRORS | NOT_MODIFIED,
    )
    async def all_aggregates(coach_id: UUID, request: Request, who: Who) -> Any:
        readable(coach_id, who)
        pipe = client.pipeline(transaction=False)
        for name in NAMES:
            pipe.hmget(keys.aggregate(name, coach_id), FIELDS)
        found = {
            name: stored
            for name, fields in zip(NAMES, await pipe.execute(), strict=True)
            if (stored := _stored(name, fields)) is not None
        }
        if not found:
            raise HTTPException(404, "nothing stored for this coach")
        tag = _etag([f"{name}:{stored.version}" for name, stored in found.items()])
        if _not_modified(request, tag):
            return Response(status_code=304, headers={"ETag": tag})
        aggregates = {name: stored.body for name, stored in found.items()}
        return _json({"coach_id": str(coach_id), "aggregates": aggregates}, tag)

    @app.get(
        "/coaches/{coach_id}/aggregates/{name}",
        response_model=StoredAggregateOut,
        responses=ERRORS | NOT_MODIFIED,
    )
    async def one_aggregate(coach_id: UUID, name: str, request: Request, who: Who) -> Any:
        readable(coach_id, who)
        if name not in NAMES:
            raise HTTPException(404, f"unknown aggregate; known: {', '.join(NAMES)}")
        stored = _stored(name, await client.hmget(keys.aggregate(name, coach_id), FIELDS))
        if stored is None:
            raise HTTPException(404, "nothing stored for this coach")
        tag = _etag([f"{name}:{stored.version}"])
        if _not_modified(request, tag):
            return Response(status_code=304, headers={"ETag": tag})
        return _json(stored.body, tag)

    @app.get("/coaches/{coach_id}/events", responses=ERRORS, response_class=EventSourceResponse)
    async def events(coach_id: UUID, request: Request, who: Who) -> EventSourceResponse:
        """Server-Sent Events: `update` (a stored write of this coach) and `status` changes."""
        readable(coach_id, who)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async with broadcaster.watch(str(coach_id)) as queue:
                if "status" in latest:
                    yield ServerSentEvent(_status_json(latest["status"]), event="status")
                while True:
                    event = await queue.get()
                    yield ServerSentEvent(event.data, event=event.kind)

        return EventSourceResponse(stream(), ping=KEEPALIVE_S, send_timeout=30)

    @app.get("/status", response_model=StatusOut, responses=ERRORS)
    async def status(who: Who) -> Any:
        current = await asyncio.to_thread(board.status)
        body = current.as_json()
        if not who.admin:
            body["listeners"] = []
        return body

    @app.get(
        "/healthz",
        response_model=dict[str, str],
        responses={503: {"description": "Redis does not answer"}},
    )
    async def healthz() -> Any:
        try:
            await client.ping()
        except Exception as error:
            return JSONResponse(
                {"status": "unhealthy", "redis": type(error).__name__}, status_code=503
            )
        return {"status": "ok"}

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        page = files("api") / "static" / "dashboard.html"
        return HTMLResponse(page.read_text(), headers={"Cache-Control": "no-cache"})

    return app
