"""Names shared by the Celery app, its producers and the tooling: queues and task names.

Producers (listeners, beat tasks, the CLI) send tasks by these names instead of importing the
task functions, so nothing outside `tasks.jobs` needs the worker's code or its settings.
"""

from __future__ import annotations

REALTIME_QUEUE = "realtime"
"""Event-driven drains: latency first."""
REFRESH_QUEUE = "refresh"
"""Beat's and the CLI's bulk work."""
QUEUES = (REALTIME_QUEUE, REFRESH_QUEUE)
"""Every queue a worker serves by default (`celery -A tasks worker -Q realtime,refresh`)."""

DRAIN = "tasks.jobs.drain"
REFRESH_BATCH = "tasks.jobs.refresh_batch"
REFRESH_ALL = "tasks.jobs.refresh_all"
TICK_CLOCK = "tasks.jobs.tick_clock"
CHECK_REALTIME = "tasks.jobs.check_realtime"
FALLBACK_POLL = "tasks.jobs.fallback_poll"
SWEEP = "tasks.jobs.sweep"
RECONCILE = "tasks.jobs.reconcile"
AUDIT_SAMPLE = "tasks.jobs.audit_sample"
AUDIT_CONFIRM = "tasks.jobs.audit_confirm"
ADVANCE_SUMMARIES = "tasks.jobs.advance_summaries"

REALTIME_TASKS = (DRAIN,)
"""Tasks routed to `REALTIME_QUEUE`; every other task goes to `REFRESH_QUEUE`."""


AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
"""Broker URLs of RabbitMQ; anything else is Redis."""


def is_amqp(broker_url: str) -> bool:
    """Whether a BROKER_URL names RabbitMQ (quorum queues, native delayed delivery)."""
    return broker_url.startswith(AMQP_SCHEMES)


def queue_of(task_name: str) -> str:
    """The queue a task is routed to."""
    return REALTIME_QUEUE if task_name in REALTIME_TASKS else REFRESH_QUEUE
