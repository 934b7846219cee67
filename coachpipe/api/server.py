"""`coachpipe api`: uvicorn serving the read API, logs through the pipeline's logging."""

from __future__ import annotations

import uvicorn

from config import Settings
from config.logging import configure_logging


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    from coachpipe.api.app import create_app

    configure_logging(settings, process="api")
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
    )
