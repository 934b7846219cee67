"""`coachpipe api`: uvicorn serving the read API, logs through the pipeline's logging.

With `workers > 1` uvicorn forks that many processes sharing the listening socket. Each builds
its app from the environment (`app_from_environment`), so each has its own broadcaster: one
Redis subscription per process, whatever the number of streams it serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import uvicorn

from api.limits import BoundedHttpToolsProtocol, configure_limits
from config import Settings, load_settings
from config.logging import configure_logging

if TYPE_CHECKING:
    from fastapi import FastAPI

FACTORY = "api.server:app_from_environment"


def app_from_environment() -> FastAPI:
    """The app of one worker process, built from the environment and `.env`."""
    from api.app import create_app

    settings = load_settings()
    configure_logging(settings, process="api")
    configure_limits(settings)
    return create_app(settings)


def serve(
    settings: Settings, *, host: str | None = None, port: int | None = None, workers: int = 1
) -> None:
    from api.app import create_app

    configure_logging(settings, process="api")
    configure_limits(settings)
    several = workers > 1
    uvicorn.run(
        FACTORY if several else create_app(settings),
        factory=several,
        workers=workers if several else None,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_config=None,  # our handlers: structured, secrets (e.g. ?access_token=) masked
        access_log=True,
        http=BoundedHttpToolsProtocol,
        proxy_headers=True,
    )
