"""Prometheus metrics of a prefork worker: children write, the main process serves.

Pool children increment the pipeline's metrics; prometheus_client's multiprocess mode keeps
them in files under PROMETHEUS_MULTIPROC_DIR. The celery command imports prometheus_client
before our app (through Flower's command plugin), so setting the variable is not enough: the
value class prometheus_client chose at import is switched too, before the pipeline's metrics
are created. This module is imported first by `tasks.celery` for that reason; it only acts in
a `celery worker` process.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

IS_WORKER = "worker" in sys.argv[1:]

CREATED_DIR: str | None = None

if IS_WORKER:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        CREATED_DIR = tempfile.mkdtemp(prefix="coachpipe-worker-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = CREATED_DIR
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def serve(port: int, host: str) -> None:
    """Serve the aggregated metrics of this worker and its pool on `port` (main process)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)


def child_exited(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def remove_files() -> None:
    """The worker stops: drop the metric files it created (nothing else shares them)."""
    if CREATED_DIR is not None:
        shutil.rmtree(CREATED_DIR, ignore_errors=True)
