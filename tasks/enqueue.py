"""Turning recompute requests into Celery tasks: dedup first, then as few drains as needed.

Used by the listeners (after routing a batch of events) and by beat's clock tick and sweep,
each with the `TaskSender` it was handed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import structlog

from pipeline import metrics
from pipeline.dedup import Dedup, RequestOutcome
from pipeline.routing import Key
from tasks.producer import TaskSender

log = structlog.get_logger("tasks.enqueue")


def enqueue_drain(sender: TaskSender, aggregate: str, countdown_s: float) -> None:
    sender.send_drain(aggregate, countdown_s)
    metrics.DRAINS_ENQUEUED.labels(aggregate).inc()


def request_recomputes(
    dedup: Dedup,
    sender: TaskSender,
    items: Iterable[Key],
    commit_ms: Mapping[Key, int | None] | None = None,
) -> RequestOutcome:
    outcome = dedup.request(items, commit_ms)
    for aggregate, countdown in outcome.drains.items():
        enqueue_drain(sender, aggregate, countdown)
    metrics.RECOMPUTE_REQUESTS.labels("enqueued").inc(outcome.enqueued)
    metrics.RECOMPUTE_REQUESTS.labels("suppressed").inc(outcome.suppressed)
    return outcome


def request_wide_refresh(
    dedup: Dedup, sender: TaskSender, aggregates: Iterable[str], reason: str
) -> list[str]:
    """Refresh every coach's `aggregates`, at most one pending refresh per aggregate."""
    started = []
    for aggregate in sorted(set(aggregates)):
        if dedup.request_wide(aggregate):
            sender.send_wide_refresh(aggregate, reason)
            started.append(aggregate)
    if started:
        log.info("wide_refresh_requested", aggregates=started, reason=reason)
    return started
