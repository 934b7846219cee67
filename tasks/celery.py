"""The Celery app: `celery -A tasks worker|beat|flower` finds it here.

Configured from `Settings` (the edge of the worker and beat processes). Redis is the default
broker; a BROKER_URL pointing at RabbitMQ works unchanged.
"""

from __future__ import annotations

# First: decides where a worker's pool children keep their metrics (see the module).
from tasks import worker_metrics  # isort: skip

import os
import sys
from typing import Any

import structlog
from celery import Celery
from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from config import Settings, SettingsError, load_settings
from config.logging import configure_logging
from pipeline import keys
from tasks.producer import CeleryTaskSender
from tasks.runtime import Runtime
from tasks.schedule import beat_schedule

REALTIME_QUEUE = "realtime"
REFRESH_QUEUE = "refresh"


def celery_config(settings: Settings) -> dict[str, Any]:
    broker = settings.require_broker_url()
    config: dict[str, Any] = {
        "broker_url": broker,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": REFRESH_QUEUE,
        "task_routes": {
            "tasks.jobs.drain": {"queue": REALTIME_QUEUE},
            "tasks.jobs.*": {"queue": REFRESH_QUEUE},
        },
        # Tasks are idempotent: ack after they finish, requeue if the worker dies under them.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Flower and metrics: worker events, and "sent" events from producers (listeners).
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        # Beat: schedule and lock in Redis, so a second beat stands by instead of doubling work.
        "beat_scheduler": "tasks.beat_scheduler.ResilientScheduler",
        "redbeat_redis_url": settings.require_redis_url(),
        "redbeat_redis_options": {"socket_timeout": 5, "socket_connect_timeout": 5},
        "redbeat_key_prefix": f"{keys.PREFIX}:redbeat",
        "redbeat_lock_timeout": 6,  # a standby takes over within ~7 s
        "beat_max_loop_interval": 1,
        "beat_schedule": beat_schedule(settings),
    }
    if broker.startswith(("redis", "rediss", "unix")):
        config["broker_transport_options"] = {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_throttle": 1,  # restore lost messages every 10 s, not every ~100 s
        }
    return config


def _load() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        sys.exit(f"coachpipe: {error}")


settings = _load()
app = Celery("coachpipe")
runtime = Runtime(settings, CeleryTaskSender(app))
try:
    app.conf.update(celery_config(settings))
except SettingsError as error:
    sys.exit(f"coachpipe: {error}")
app.conf.imports = ("tasks.jobs",)


@setup_logging.connect
def _logging(**_: Any) -> None:
    role = next((arg for arg in sys.argv if arg in {"worker", "beat", "flower"}), "celery")
    configure_logging(settings, process=role)


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    runtime.reset_after_fork()


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    if settings.worker_metrics_port and worker_metrics.IS_WORKER:
        try:
            worker_metrics.serve(settings.worker_metrics_port)
        except OSError as error:  # another worker on this host has the port
            structlog.get_logger("tasks").warning(
                "metrics_port_taken", port=settings.worker_metrics_port, error=str(error)
            )


@worker_process_shutdown.connect
def _forget_child(pid: int | None = None, **_: Any) -> None:
    if worker_metrics.IS_WORKER:
        worker_metrics.child_exited(pid or os.getpid())


@worker_shutdown.connect
def _drop_metric_files(**_: Any) -> None:
    worker_metrics.remove_files()
