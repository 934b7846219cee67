"""How a batch of change events becomes recompute work: the listener's one strategy.

The listener does the bookkeeping every strategy shares (event metrics, the newest commit seen
for catch-up) and hands the batch to its `Invalidation`. The product uses
`ScheduledInvalidation`;
the benchmark's naive baseline (`devtools.bench.naive_listener`) injects its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import structlog

from pipeline import metrics
from pipeline.events import ChangeEvent
from pipeline.freshness import Freshness
from pipeline.routing import Key, route
from pipeline.scheduler import RecomputeScheduler

log = structlog.get_logger("listeners.invalidation")


class Invalidation(Protocol):
    def invalidate(self, events: Sequence[ChangeEvent]) -> None:
        """Turn `events` into recompute requests; raise if they could not all be sent (the
        listener retries transient errors and does not confirm the batch until this returns)."""


class ScheduledInvalidation:
    """Route each event to its keys, merge the batch's keys (oldest commit wins), and ask the
    recompute scheduler for them: one drain per aggregate however many events name a coach.
    Each change's freshness ticket is registered first (see `pipeline.freshness`)."""

    def __init__(self, scheduler: RecomputeScheduler, freshness: Freshness) -> None:
        self.scheduler = scheduler
        self.freshness = freshness

    def invalidate(self, events: Sequence[ChangeEvent]) -> None:
        keys_due: dict[Key, int | None] = {}
        wide: dict[str, str] = {}
        for event in events:
            result = route(event)
            if result.problem:
                metrics.WIDE_REFRESHES.labels(event.table, result.problem).inc()
                log.warning(
                    "change_without_coach",
                    table=event.table,
                    error_type=result.problem,
                    detail=result.detail,
                    commit_ts=event.commit_ts and event.commit_ts.isoformat(),
                    position=event.position,
                )
                for aggregate in result.wide:
                    wide[aggregate] = result.problem
            commit = event.commit_ms()
            for key in result.keys:
                known = keys_due.get(key)
                keys_due[key] = commit if known is None else min(known, commit or known)
        if keys_due:
            self.freshness.register(events)  # before the requests: see pipeline.freshness
            self.scheduler.request(keys_due, keys_due)
        for aggregate, reason in wide.items():
            self.scheduler.request_wide([aggregate], reason)
