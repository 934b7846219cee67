"""Every worker sweeps the recompute scheduler on a timer: a dead worker's claims come back
within about a lease, not a broker visibility timeout.

The sweep (`RecomputeScheduler.sweep`) is one Redis round trip over every shard: it requeues the
pairs of expired claim leases and resends a drain that is `late_ms` overdue (lost by its sender,
or prefetched by a worker that was killed). It runs in the worker's main process, on the
timer of Celery's event loop (`SWEEP_S` apart, setting `WORKER_SWEEP_S`), so it needs no thread
and stops with the worker. Beat's sweep task stays as a backstop for a pipeline without workers
alive. Several workers sweeping at once is harmless: each script is atomic, and only the first
finds an expired lease.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import bootsteps

from pipeline import metrics
from pipeline.errors import TRANSIENT_ERRORS

log = structlog.get_logger("tasks.sweeper")


class Sweeper(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no type information
    """A worker bootstep: `tasks.celery.create_app` adds it to the app's worker steps."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.timer_ref: Any = None

    def start(self, worker: Any) -> None:
        interval = worker.app.settings.worker_sweep_s
        if interval > 0:
            self.timer_ref = worker.timer.call_repeatedly(interval, sweep_once, (worker.app,))

    def stop(self, worker: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None


def sweep_once(app: Any) -> None:
    """One sweep of every shard; a Redis or broker outage is logged and counted, never raised
    (the next tick tries again)."""
    try:
        app.runtime.scheduler.sweep()
    except TRANSIENT_ERRORS as error:
        metrics.SWEEP_ERRORS.inc()
        log.warning("worker_sweep_failed", error=str(error))
