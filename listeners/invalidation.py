"""How a batch of change events becomes recompute work: the listener's one strategy.

The listener does the bookkeeping every strategy shares (event metrics, the newest commit seen
for catch-up) and hands the batch to its `Invalidation`. The product uses `DedupInvalidation`;
the benchmark's naive baseline (`devtools.bench.naive_listener`) injects its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import structlog

from pipeline import metrics
from pipeline.dedup import Dedup
from pipeline.events import ChangeEvent
from pipeline.routing import Key, route
from tasks.enqueue import request_recomputes, request_wide_refresh
from tasks.producer import TaskSender

log = structlog.get_logger("listeners.invalidation")


class Invalidation(Protocol):
    def invalidate(self, events: Sequence[ChangeEvent]) -> None:
        """Turn `events` into recompute requests; raise if they could not all be sent (the
        listener retries transient errors and does not confirm the batch until this returns)."""


class DedupInvalidation:
    """Route each event to its keys, merge the batch's keys (oldest commit wins), and ask for
    recomputes through dedup: one drain per aggregate however many events name a coach."""

    def __init__(self, dedup: Dedup, sender: TaskSender) -> None:
        self.dedup = dedup
        self.sender = sender

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
            request_recomputes(self.dedup, self.sender, keys_due, keys_due)
        for aggregate, reason in wide.items():
            request_wide_refresh(self.dedup, self.sender, [aggregate], reason)
