"""A worker's periodic sweep (`tasks.sweeper`) outlives a Redis it cannot reach."""

from __future__ import annotations

from prometheus_client import REGISTRY
from pydantic import SecretStr

from coachpipe.embedded import free_port
from config import Settings
from tasks.celery import create_app
from tasks.sweeper import sweep_once


def errors() -> float:
    return REGISTRY.get_sample_value("coachpipe_sweep_errors_total") or 0.0


def test_a_sweep_without_redis_is_logged_and_counted_not_raised(settings: Settings) -> None:
    url = SecretStr(f"redis://127.0.0.1:{free_port()}/0")
    unreachable = settings.model_copy(update={"redis_url": url})
    app = create_app(unreachable)
    try:
        before = errors()
        sweep_once(app)  # the worker's timer calls this every WORKER_SWEEP_S
        assert errors() == before + 1
    finally:
        app.close()
