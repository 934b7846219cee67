"""The read API: aggregates from Redis (never Postgres), live updates over SSE, the dashboard.

`create_app(settings)` wires the parts: the shared services (`api.services`), the routers
(`api.aggregates`, `api.events`, `api.status`) and the answers to failed authentication and
an unreachable Redis. Who may read what is decided in `api.access` and `api.auth`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis
import structlog
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from api import aggregates, events, status
from api.auth import AuthError, RejectionLog
from api.services import Services
from api.status_watch import STATUS_POLL_S
from config import Settings
from pipeline import metrics
from pipeline.cancellation import cancel_and_wait

__all__ = ["STATUS_POLL_S", "create_app"]
log = structlog.get_logger("api")
CLOSE_TIMEOUT_S = 5.0
"""Seconds the API's shutdown waits for its Redis connections to close."""


def create_app(settings: Settings) -> FastAPI:
    shared = Services.from_settings(settings)
    app = FastAPI(
        title="coachpipe read API",
        version="1",
        description="Precomputed coach dashboard aggregates, fresh within a second of a change.",
        lifespan=lifespan,
    )
    app.state.services = shared
    app.state.broadcaster = shared.broadcaster  # its `subscribers` tell how many streams are open
    app.state.rejections = RejectionLog()
    app.exception_handler(AuthError)(auth_failed)
    app.exception_handler(redis.RedisError)(redis_failed)
    for module in (aggregates, events, status):
        app.include_router(module.router)
    origins = settings.cors_origins()
    if origins:  # the team's own app calling from the browser; nobody else
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET"],
            allow_headers=["Authorization", "If-None-Match"],
            expose_headers=["ETag"],
        )
    return app


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One Redis subscription and one status watch per process, for as long as it serves."""
    shared: Services = app.state.services
    await shared.broadcaster.start()
    watcher = asyncio.create_task(shared.status.run(), name="status-watch")
    yield
    await cancel_and_wait(watcher)
    await shared.broadcaster.stop()
    try:  # closing connections never holds the shutdown of the process for long
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await shared.close()
    except TimeoutError:
        log.warning("api_close_timeout", timeout_s=CLOSE_TIMEOUT_S)


async def auth_failed(request: Request, error: AuthError) -> JSONResponse:
    metrics.API_AUTH_REJECTED.labels(error.reason).inc()
    count = request.app.state.rejections.should_log(error.reason)
    if count:
        log.warning(
            "token_rejected",
            reason=error.reason,
            status=error.status,
            path=request.url.path,
            rejections=count,
        )
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    return JSONResponse({"detail": str(error)}, status_code=error.status, headers=headers)


async def redis_failed(request: Request, error: redis.RedisError) -> JSONResponse:
    log.warning("api_redis_error", path=request.url.path, error_type=type(error).__name__)
    return JSONResponse({"detail": "aggregates are unavailable (Redis)"}, status_code=503)
