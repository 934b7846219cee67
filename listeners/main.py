"""Entry point of a listener process: `coachpipe listen --source postgres|supabase`.

SIGTERM (or Ctrl-C) unsubscribes, closes the connection, finishes the batch in flight (its
invalidations are enqueued, its position confirmed), reports `disconnected` and exits 0. A bug
(any error that is not a transient outage) is logged with its traceback and exits 1; a durable
source still holds the batch that failed.

Everything the process uses, the Celery app it enqueues through included, is built from the
one `Settings` passed in.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog
from prometheus_client import start_http_server

from config import Settings, SourceName
from config.logging import configure_logging
from listeners.invalidation import Invalidation
from listeners.runner import Listener
from listeners.source import Source
from pipeline.db import make_engine
from pipeline.redis_client import connect
from tasks.celery import create_app
from tasks.producer import CeleryTaskSender

log = structlog.get_logger("listeners.main")

InvalidationFactory = Callable[[CeleryTaskSender], Invalidation]
"""Builds a listener's strategy from its task sender (None: the product's dedup strategy)."""


def make_source(settings: Settings, name: SourceName) -> Source:
    if name is SourceName.POSTGRES:
        from listeners.postgres_source import PostgresSource

        return PostgresSource(settings)
    from listeners.supabase_source import SupabaseSource

    return SupabaseSource(settings)


async def serve(
    settings: Settings,
    source_name: SourceName,
    invalidation: InvalidationFactory | None = None,
) -> None:
    source = make_source(settings, source_name)
    app = create_app(settings)
    client = connect(settings.require_redis_url(), health_check_interval=30)
    engine = make_engine(
        settings.require_database_url(), application_name="coachpipe-listener", snapshots=True
    )
    listener = Listener(
        source,
        settings,
        client=client,
        engine=engine,
        sender=app.sender,
        invalidation=invalidation(app.sender) if invalidation else None,
    )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if not stopping:
            log.info("listener_stopping", listener=listener.listener_id)
            stopping.append(loop.create_task(listener.stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    try:
        await listener.run()
    finally:
        engine.dispose()
        client.close()
        app.close()


def run(
    settings: Settings,
    source_name: SourceName | None = None,
    invalidation: InvalidationFactory | None = None,
) -> int:
    configure_logging(settings, process="listener")
    if settings.listener_metrics_port:
        try:
            start_http_server(settings.listener_metrics_port, addr=settings.metrics_host)
        except OSError as error:  # another listener on this host has the port: run without
            log.warning("metrics_port_taken", port=settings.listener_metrics_port, error=str(error))
    try:
        asyncio.run(serve(settings, source_name or settings.listener_source, invalidation))
    except Exception as error:
        log.exception("listener_failed", error_type=type(error).__name__)
        return 1
    return 0
