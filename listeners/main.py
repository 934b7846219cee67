"""Entry point of a listener process: `coachpipe listen --source postgres|supabase`.

SIGTERM (or Ctrl-C) unsubscribes, closes the connection, finishes the batch in flight (its
invalidations are enqueued, its position confirmed), reports `disconnected` and exits 0.
"""

from __future__ import annotations

import asyncio
import signal

import redis
import structlog
from prometheus_client import start_http_server

from config import Settings, SourceName
from config.logging import configure_logging
from listeners.runner import Listener
from listeners.source import Source
from pipeline.db import make_engine

log = structlog.get_logger("listeners.main")


def make_source(settings: Settings, name: SourceName) -> Source:
    if name is SourceName.POSTGRES:
        from listeners.postgres_source import PostgresSource

        return PostgresSource(settings)
    from listeners.supabase_source import SupabaseSource

    return SupabaseSource(settings)


async def serve(
    settings: Settings, source_name: SourceName, listener_class: type[Listener] = Listener
) -> None:
    source = make_source(settings, source_name)
    client = redis.Redis.from_url(settings.require_redis_url(), health_check_interval=30)
    engine = make_engine(
        settings.require_database_url(), application_name="coachpipe-listener", snapshots=True
    )
    listener = listener_class(source, settings, client=client, engine=engine)
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


def run(
    settings: Settings,
    source_name: SourceName | None = None,
    listener_class: type[Listener] = Listener,
) -> int:
    configure_logging(settings, process="listener")
    if settings.listener_metrics_port:
        # Scraped from outside the host (Prometheus), hence every interface.
        start_http_server(settings.listener_metrics_port, addr="0.0.0.0")  # noqa: S104
    asyncio.run(serve(settings, source_name or settings.listener_source, listener_class))
    return 0
