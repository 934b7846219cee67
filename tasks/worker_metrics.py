"""Prometheus metrics of a prefork worker: children write, the main process serves.

Pool children increment the pipeline's metrics; prometheus_client's multiprocess mode keeps
them in files under PROMETHEUS_MULTIPROC_DIR, which must be set before prometheus_client is
first imported. This module is imported first by `tasks.celery` for that reason; it only acts
in a `celery worker` process.
"""

from __future__ import annotations

import os
import sys
import tempfile

IS_WORKER = "worker" in sys.argv[1:]

if IS_WORKER and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="coachpipe-worker-metrics-")


def serve(port: int) -> None:
    """Serve the aggregated metrics of this worker and its pool on `port` (main process)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)


def child_exited(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
