"""The Celery app, built from a `Settings` passed in: `create_app(settings)`.

Nothing here reads the environment. `celery -A tasks worker|beat|flower` finds the app through
`tasks.app`, which builds it at that edge with `app_from_environment`. Redis is the default
broker; a BROKER_URL pointing at RabbitMQ (`amqp://`) gets quorum queues, publisher confirms
and countdowns held by the broker (`amqp_config`); a `sentinel://` one, the Redis master its
sentinels name (`redis_transport_options`).
"""

from __future__ import annotations

# First: decides where a worker's pool children keep their metrics (see the module).
from tasks import worker_metrics  # isort: skip

import os
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

import structlog
from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from kombu.entity import Exchange, Queue

from config import Settings, SettingsError, load_settings
from config.logging import configure_logging, redact_text
from config.settings import SENTINEL_BROKER
from pipeline import keys
from pipeline.redis_client import connect
from tasks import jobs, names
from tasks.pipeline_app import PipelineApp
from tasks.schedule import beat_schedule
from tasks.sweeper import Sweeper

REDBEAT_REDIS_OPTIONS = {"socket_timeout": 5, "socket_connect_timeout": 5}
"""A vanished Redis cannot hang beat: its calls time out and the scheduler backs off."""
SOFT_LIMIT_MARGIN_S = 5
"""A task is told to stop (soft limit) this long before it is killed (hard limit)."""


def _limits(time_limit_s: int) -> dict[str, int]:
    return {
        "time_limit": time_limit_s,
        "soft_time_limit": max(time_limit_s - SOFT_LIMIT_MARGIN_S, 1),
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    broker = settings.require_broker_url()
    realtime = _limits(settings.realtime_time_limit_s)
    refresh = _limits(settings.refresh_time_limit_s)
    config: dict[str, Any] = {
        "broker_url": broker,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": names.REFRESH_QUEUE,
        "task_routes": {name: {"queue": names.queue_of(name)} for name in jobs.TASKS},
        "task_annotations": {
            name: realtime if names.queue_of(name) == names.REALTIME_QUEUE else refresh
            for name in jobs.TASKS
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
        # Shown by `celery report`, `inspect conf` and Flower, which mask only keys named like
        # passwords: the URL is shown masked (by our masker: kombu's cannot parse the
        # several hosts of a Cluster or Sentinel URL); beat's client is built from the real
        # one (`create_app`).
        "redbeat_redis_url": redact_text(settings.require_redis_url()),
        "redbeat_redis_options": REDBEAT_REDIS_OPTIONS,
        "redbeat_key_prefix": keys.REDBEAT_PREFIX,
        "redbeat_lock_timeout": 6,  # a standby takes over within ~7 s
        "beat_max_loop_interval": 1,
        "beat_schedule": beat_schedule(settings),
    }
    if names.is_amqp(broker):
        config.update(amqp_config())
    else:
        config["broker_transport_options"] = redis_transport_options(settings)
    return config


QUEUE_ORDER = "sorted"
"""kombu's Redis transport polls a worker's queues with one `BRPOP` whose keys come in this
order, and Redis pops from the first non-empty one. Its default, `round_robin`, rotates the
queue it just took from to the end, so a worker serving both queues alternates between them:
with beat's refresh batches waiting, each realtime drain waited for one. `sorted` polls them in
name order every time, and `realtime` sorts before `refresh` (`tasks.names`, tested): waiting
drains go first, a refresh batch runs when none waits. While drains never stop waiting (a
lasting overload), beat's tasks wait too and expire after their interval: the clock tick's
next run covers the window since the last one that ran, and the realtime status check (its
fallback poll, its failover check) runs at the first gap between drains. The lease sweep does
not wait: every worker runs it on its event loop's timer (`tasks.sweeper`). (RabbitMQ has no
such order across queues: run separate workers per queue there, see README.)"""


def redis_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's Redis transport options for BROKER_URL (also what a bare `kombu.Connection` to
    that broker needs: `coachpipe doctor`, the test helpers).

    A `sentinel://` broker (kombu's `SentinelChannel`) asks the sentinels for the master
    named BROKER_MASTER_NAME and for it again on every reconnection, so after a failover the
    workers, beat and producers reconnect to the promoted replica by themselves (Celery's
    consumer restarts on the connection error). The URL's password is the master's;
    BROKER_SENTINEL_PASSWORD, when set, authenticates to the sentinels (`sentinel_kwargs`,
    which Celery's `inspect conf` and Flower show masked, as they do the URL's password).
    """
    options: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_throttle": 1,  # restore lost messages every 10 s, not every ~100 s
        # A worker serving both queues takes a waiting realtime drain before waiting bulk work.
        "queue_order_strategy": QUEUE_ORDER,
    }
    if settings.require_broker_url().startswith(f"{SENTINEL_BROKER}://"):
        options["master_name"] = settings.broker_master_name
        if settings.broker_sentinel_password is not None:
            password = settings.broker_sentinel_password.get_secret_value()
            options["sentinel_kwargs"] = {"password": password}
    return options


def amqp_config() -> dict[str, Any]:
    """RabbitMQ: each queue a durable quorum queue (replicated, survives a node's loss) bound to
    a topic exchange of its name; publisher confirms, so a send returns only once RabbitMQ took
    the message.

    Quorum queues have no global QoS: Celery sees the `x-queue-type` argument
    (`worker_detect_quorum_queues`) and uses a fixed per-consumer prefetch, so a countdown task
    a worker held would take a prefetch slot until it runs. Celery therefore sends countdowns
    of a second or more through its native delayed delivery (a chain of TTL queues,
    `celery_delayed_0..27`, declared by the worker, which needs topic exchanges): the broker
    keeps the message, no visibility timeout or `consumer_timeout` is involved, and an unacked
    delivery comes back as soon as its worker's channel closes. Shorter countdowns are held
    by the worker (`tasks.producer`). Source: Celery 5.5 "Using Quorum Queues",
    `celery.app.base.Celery.send_task` and `celery.worker.consumer.delayed_delivery` (5.7.0).
    """
    queues = [
        Queue(  # type: ignore[no-untyped-call]
            name,
            Exchange(name, type="topic"),  # type: ignore[no-untyped-call]
            routing_key=name,
            queue_arguments={"x-queue-type": "quorum"},
        )
        for name in names.QUEUES
    ]
    return {
        "task_queues": queues,
        "task_default_exchange": names.REFRESH_QUEUE,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": names.REFRESH_QUEUE,
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
        "broker_transport_options": {"confirm_publish": True},
    }


def create_app(settings: Settings) -> PipelineApp:
    """The pipeline's Celery app with every task registered; raises `SettingsError` when a
    URL it needs is missing. Connects nothing process-wide except the after-fork reset of
    this app's connections (see `connect_process_signals` for the rest)."""
    app = PipelineApp(settings)
    app.conf.update(celery_config(settings))
    # redbeat uses this client when it is set (`redbeat.schedulers.get_redis`); built lazily,
    # it connects only in a beat process.
    # A Cluster or Sentinel REDIS_URL gives a client of that kind (`pipeline.redis_client`):
    # redbeat's keys share one hash tag (`keys.REDBEAT_PREFIX`), so they sit in one slot.
    app.redbeat_redis = connect(
        settings.require_redis_url(), decode_responses=True, **REDBEAT_REDIS_OPTIONS
    )
    jobs.register(app)
    app.steps["worker"].add(Sweeper)

    def fresh_connections(**_: Any) -> None:
        app.runtime.reset_after_fork()

    # weak=False: nothing else holds this closure; a worker keeps its app for its lifetime.
    worker_process_init.connect(fresh_connections, weak=False)
    return app


def connect_process_signals(app: PipelineApp) -> None:
    """What a `celery worker|beat|flower` process does besides running tasks: logging,
    and a worker's metrics endpoint. Connected once, by the edge that owns the process."""
    settings = app.settings

    def configure(**_: Any) -> None:
        role = next((arg for arg in sys.argv if arg in {"worker", "beat", "flower"}), "celery")
        configure_logging(settings, process=role)

    def serve_metrics(**_: Any) -> None:
        if settings.worker_metrics_port and worker_metrics.IS_WORKER:
            try:
                worker_metrics.serve(settings.worker_metrics_port, settings.metrics_host)
            except OSError as error:  # another worker on this host has the port
                structlog.get_logger("tasks").warning(
                    "metrics_port_taken", port=settings.worker_metrics_port, error=str(error)
                )

    def forget_child(pid: int | None = None, **_: Any) -> None:
        if worker_metrics.IS_WORKER:
            worker_metrics.child_exited(pid or os.getpid())

    def drop_metric_files(**_: Any) -> None:
        worker_metrics.remove_files()

    # Strong references: the handlers are closures that nothing else keeps alive.
    setup_logging.connect(configure, weak=False)
    worker_ready.connect(serve_metrics, weak=False)
    worker_process_shutdown.connect(forget_child, weak=False)
    worker_shutdown.connect(drop_metric_files, weak=False)


def app_from_environment() -> PipelineApp:
    """The edge of `celery -A tasks …`: settings from the environment, the app, the process's
    signals. A missing or invalid setting ends the process with one line, not a traceback."""
    try:
        settings = load_settings()
        if "flower" in sys.argv:
            guard_flower(settings, os.environ, sys.argv)
        app = create_app(settings)
    except SettingsError as error:
        sys.stderr.write(f"coachpipe: {error}\n")
        sys.exit(2)  # as every `coachpipe` command does for a setting
    connect_process_signals(app)
    return app


def guard_flower(
    settings: Settings, environ: MutableMapping[str, str], argv: Sequence[str] = ()
) -> None:
    """Flower shows every task's arguments and can revoke tasks and stop workers: it runs
    behind FLOWER_BASIC_AUTH (or its own `--basic-auth` / `--auth` options), or open only when
    FLOWER_INSECURE says so. Flower reads its options from the environment and its command
    line; the setting may come from `.env`, so it is put in the environment.
    """
    if any(arg.startswith(("--basic-auth", "--basic_auth", "--auth")) for arg in argv):
        return
    if settings.flower_basic_auth is not None:
        environ.setdefault("FLOWER_BASIC_AUTH", settings.flower_basic_auth.get_secret_value())
        return
    if not settings.flower_insecure:
        raise SettingsError(
            "FLOWER_BASIC_AUTH is not set: Flower would be open to anyone who reaches its port. "
            "Set it to user:password, or FLOWER_INSECURE=1 to run it without authentication."
        )
    structlog.get_logger("tasks").warning("flower_without_authentication")
