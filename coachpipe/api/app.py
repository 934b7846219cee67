"""The read API: aggregates from Redis (never Postgres), live updates over SSE, the dashboard.

Every coach route needs a bearer token (or `access_token` query parameter for EventSource,
which cannot set headers) that lets its holder read that coach; see `auth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Annotated, Any
from uuid import UUID

import orjson
import redis
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, ORJSONResponse
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from coachpipe.api.auth import AuthError, Principal, Verifier
from coachpipe.api.broadcast import Broadcaster
from config import Settings
from pipeline import keys
from pipeline.aggregates import NAMES
from pipeline.health import HealthBoard
from pipeline.redis_values import as_text

STATUS_POLL_S = 1.0
KEEPALIVE_S = 15
FIELDS = ("version", "computed_at", "schema", "value", "as_of")


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


def _stored(name: str, fields: list[Any]) -> StoredAggregateOut | None:
    if fields[0] is None:
        return None
    version, computed_at, schema, value, as_of = fields
    return StoredAggregateOut.model_construct(
        aggregate=name,
        version=int(version),
        computed_at=as_text(computed_at),
        as_of=as_text(as_of),
        schema_version=int(schema),
        value=orjson.loads(value),
    )


def create_app(settings: Settings) -> FastAPI:
    verifier = Verifier(settings)
    client = aioredis.Redis.from_url(settings.require_redis_url(), health_check_interval=30)
    board = HealthBoard(
        redis.Redis.from_url(settings.require_redis_url()), stale_after_s=settings.heartbeat_stale_s
    )
    broadcaster = Broadcaster(client)
    state: dict[str, Any] = {"status": None}

    async def watch_status() -> None:
        while True:
            with contextlib.suppress(Exception):
                status = await asyncio.to_thread(board.status)
                if state["status"] is None or status.color != state["status"].color:
                    broadcaster.publish_status(
                        orjson.dumps(
                            {"status": status.color.value, "reason": status.reason}
                        ).decode()
                    )
                state["status"] = status
            await asyncio.sleep(STATUS_POLL_S)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await broadcaster.start()
        watcher = asyncio.create_task(watch_status())
        yield
        watcher.cancel()
        await broadcaster.stop()
        await client.aclose()

    app = FastAPI(
        title="coachpipe read API",
        version="1",
        description="Precomputed coach dashboard aggregates, fresh within a second of a change.",
        default_response_class=ORJSONResponse,
        lifespan=lifespan,
    )

    @app.exception_handler(AuthError)
    async def auth_failed(_: Request, error: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
        return ORJSONResponse({"detail": str(error)}, status_code=error.status, headers=headers)

    def principal(
        authorization: Annotated[str | None, Header()] = None,
        access_token: Annotated[str | None, Query(description="for EventSource")] = None,
    ) -> Principal:
        token = access_token
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value:
                raise AuthError("Authorization must be 'Bearer <token>'")
            token = value
        return verifier.verify(token)

    def readable(coach_id: UUID, who: Principal) -> None:
        if not who.may_read(coach_id):
            from coachpipe.api.auth import ForbiddenError

            raise ForbiddenError("this token may only read its own coach's aggregates")

    def etag(parts: list[str]) -> str:
        return '"' + hashlib.blake2s("|".join(parts).encode(), digest_size=12).hexdigest() + '"'

    def not_modified(request: Request, tag: str) -> bool:
        return tag in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}

    @app.get(
        "/coaches/{coach_id}/aggregates",
        response_model=CoachAggregatesOut,
        responses=ERRORS | {404: {"model": Problem}},
    )
    async def all_aggregates(
        coach_id: UUID, request: Request, who: Annotated[Principal, Depends(principal)]
    ) -> Any:
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
        tag = etag([f"{name}:{stored.version}" for name, stored in found.items()])
        if not_modified(request, tag):
            return Response(status_code=304, headers={"ETag": tag})
        body = {
            "coach_id": str(coach_id),
            "aggregates": {n: s.model_dump() for n, s in found.items()},
        }
        return ORJSONResponse(body, headers={"ETag": tag, "Cache-Control": "private, no-cache"})

    @app.get(
        "/coaches/{coach_id}/aggregates/{name}",
        response_model=StoredAggregateOut,
        responses=ERRORS | {404: {"model": Problem}},
    )
    async def one_aggregate(
        coach_id: UUID, name: str, request: Request, who: Annotated[Principal, Depends(principal)]
    ) -> Any:
        readable(coach_id, who)
        if name not in NAMES:
            raise HTTPException(404, f"unknown aggregate; known: {', '.join(NAMES)}")
        stored = _stored(name, await client.hmget(keys.aggregate(name, coach_id), FIELDS))
        if stored is None:
            raise HTTPException(404, "nothing stored for this coach")
        tag = etag([f"{name}:{stored.version}"])
        if not_modified(request, tag):
            return Response(status_code=304, headers={"ETag": tag})
        return ORJSONResponse(
            stored.model_dump(), headers={"ETag": tag, "Cache-Control": "private, no-cache"}
        )

    @app.get("/coaches/{coach_id}/events", responses=ERRORS, response_class=EventSourceResponse)
    async def events(
        coach_id: UUID, request: Request, who: Annotated[Principal, Depends(principal)]
    ) -> EventSourceResponse:
        """Server-Sent Events: `update` (a stored write of this coach) and `status` changes."""
        readable(coach_id, who)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async with broadcaster.watch(str(coach_id)) as queue:
                current = state["status"]
                if current is not None:
                    yield ServerSentEvent(
                        orjson.dumps(
                            {"status": current.color.value, "reason": current.reason}
                        ).decode(),
                        event="status",
                    )
                while True:
                    event = await queue.get()
                    yield ServerSentEvent(event.data, event=event.kind)

        return EventSourceResponse(stream(), ping=KEEPALIVE_S, send_timeout=30)

    @app.get("/status", response_model=StatusOut, responses=ERRORS)
    async def status(who: Annotated[Principal, Depends(principal)]) -> Any:
        current = await asyncio.to_thread(board.status)
        body = current.as_json()
        if not who.admin:
            body["listeners"] = []
        return body

    @app.get("/healthz", response_model=dict[str, str])
    async def healthz() -> Any:
        try:
            await client.ping()
        except Exception as error:
            return ORJSONResponse(
                {"status": "unhealthy", "redis": type(error).__name__}, status_code=503
            )
        return {"status": "ok"}

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        page = files("coachpipe") / "static" / "dashboard.html"
        return HTMLResponse(page.read_text(), headers={"Cache-Control": "no-cache"})

    return app
