"""Freshness as a user sees it: commit → every aggregate the change affects stored.

The per-write latency (`coachpipe_commit_to_stored_seconds`) says when *some* aggregate of a
coach was stored; a dashboard shows a change only once *every* aggregate routed from it is. So
the listener registers a *ticket* per coach and commit: the aggregates routed from the
transaction's changes for that coach (one observation per coach a transaction touches; a
session moved between coaches is two, one per dashboard). Each worker, after its store,
marks the aggregate done on the coach's tickets its snapshot covers; the write that completes
a ticket observes `coachpipe_change_freshness_seconds` (latest store of the ticket's
aggregates minus the commit time) and counts it in Redis per minute for `coachpipe status`.

Which snapshot covers a change is decided without comparing clocks (see `freshness.lua`): a
ticket is registered after its commit is visible and before its recomputes are requested, so a
recompute whose version was taken after the registration reads a snapshot that sees it. A
recompute already running when the change arrived does not count even if its snapshot happened
to see the change: the figure errs on the slow side, by at most the recompute the change asked
for. Both steps are single atomic scripts, so any number of listeners and workers agree.

Cost: one round trip per listener batch (before the recompute requests: the order is what
makes the rule hold) and at most one per recompute batch: the marks ride in the recompute's own
write pipeline, right after the writes they mark (so they delay no change they measure), and the
minute's summary takes a round trip only when a ticket completed. Every script call
touches one coach's keys, so on a Redis Cluster each runs in that coach's slot. Tickets expire
`TICKET_TTL_MS` after their coach's last change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from importlib.resources import files
from typing import Any
from uuid import UUID

from pipeline import keys, metrics
from pipeline.events import ChangeEvent
from pipeline.lua import Lua, run_pipeline
from pipeline.redis_client import RedisClient
from pipeline.redis_values import as_text
from pipeline.routing import TABLE_AGGREGATES, route

SCRIPT = files("pipeline").joinpath("freshness.lua").read_text()
TICKET_TTL_MS = 10 * 60 * 1000
"""A ticket not complete this long after its coach's last change is dropped unobserved: its
key was never stored again (Redis lost it, or the coach's data went away)."""
SUMMARY_MINUTES = 15
"""`coachpipe status` summarizes the changes completed over this many minutes."""
BUCKET_BASE = 1.1
"""Redis summary buckets grow by 10 %: a percentile read from them is within 10 % above."""
TRACKED = frozenset(name for names in TABLE_AGGREGATES.values() for name in names)
"""Aggregates a change can be routed to (critical ones): only they carry tickets."""

Ticket = tuple[UUID, int]
"""(coach id, commit ms)"""


def tickets(events: Iterable[ChangeEvent]) -> dict[Ticket, set[str]]:
    """The aggregates each (coach, commit) waits for; events without a commit time have none."""
    found: dict[Ticket, set[str]] = {}
    for event in events:
        commit = event.commit_ms()
        if commit is None:
            continue
        for aggregate, coach in route(event).keys:
            found.setdefault((coach, commit), set()).add(aggregate)
    return found


class Freshness:
    def __init__(self, client: RedisClient) -> None:
        self._redis = client
        self.script = Lua(client, SCRIPT)

    def register(self, events: Iterable[ChangeEvent]) -> int:
        """Open a ticket per coach and commit of `events`, in one round trip (none if no
        event routes to a coach). Call it before requesting their recomputes."""
        found = tickets(events)
        if not found:
            return 0

        def build(pipe: Any) -> None:
            for (coach, commit), aggregates in found.items():
                self.script.queue(
                    pipe,
                    [
                        keys.version(coach),
                        keys.freshness_open(coach),
                        *(keys.freshness_pending(coach, name) for name in sorted(aggregates)),
                    ],
                    ["register", commit, TICKET_TTL_MS],
                )

        run_pipeline(self._redis, [self.script], build)
        return len(found)

    def stored(
        self,
        stored: Mapping[str, Iterable[UUID]],
        version: int | Mapping[UUID, int],
        stored_at: datetime,
    ) -> list[float]:
        """Mark the coaches' aggregates stored at `version` (one for all, or each coach's; each
        aggregate still stored) on the tickets they cover; observe and return the latencies (s)
        of the tickets completed.

        One script call per coach (its keys share a slot), all in one pipeline; then, if a
        ticket completed, one more round trip counts them in the minute's summary buckets. A
        recompute saves the first round trip by queueing `marks` behind its own writes."""
        stored_ms = int(stored_at.timestamp() * 1000)
        calls = self.marks(stored, version, stored_ms)
        if not calls:
            return []

        def build(pipe: Any) -> None:
            for call_keys, args in calls:
                self.script.queue(pipe, call_keys, args)

        return self.completed(stored_ms, run_pipeline(self._redis, [self.script], build))

    def marks(
        self,
        stored: Mapping[str, Iterable[UUID]],
        version: int | Mapping[UUID, int],
        stored_ms: int,
    ) -> list[tuple[list[str], list[Any]]]:
        """The (keys, args) of the `script` calls that mark what `stored` names (see `stored`),
        one per coach: run them after the writes they mark (in the same pipeline is enough, a
        coach's keys sharing one slot), then give their results to `completed`."""
        by_coach: dict[UUID, list[str]] = {}
        for name, coaches in stored.items():
            if name not in TRACKED:
                continue
            for coach in coaches:
                by_coach.setdefault(coach, []).extend(
                    (
                        keys.aggregate(name, coach),
                        keys.freshness_pending(coach, name),
                        keys.freshness_open(coach),
                    )
                )
        return [
            (coach_keys, ["mark", version if isinstance(version, int) else version[coach],
                          stored_ms])
            for coach, coach_keys in by_coach.items()
        ]  # fmt: skip

    def completed(self, stored_ms: int, results: Iterable[Any]) -> list[float]:
        """From the results of the `marks` calls: count and observe the tickets they completed
        (one round trip if any did) and return their latencies (s)."""
        latencies_ms = [int(ms) for found in results for ms in found]
        if latencies_ms:
            self._count(stored_ms, latencies_ms)
        latencies = [ms / 1000 for ms in latencies_ms]
        for seconds in latencies:
            metrics.CHANGE_FRESHNESS_SECONDS.observe(seconds)
        return latencies

    def _count(self, stored_ms: int, latencies_ms: Sequence[int]) -> None:
        """Count completed tickets in the minute's log-scale buckets (`summary` reads them)."""
        minute = keys.freshness_minute(stored_ms // 60_000)
        buckets: dict[int, int] = {}
        for ms in latencies_ms:
            bucket = bucket_of(ms)
            buckets[bucket] = buckets.get(bucket, 0) + 1
        pipe = self._redis.pipeline(transaction=False)
        for bucket, count in buckets.items():
            pipe.hincrby(minute, str(bucket), count)
        pipe.pexpire(minute, (SUMMARY_MINUTES + 1) * 60_000)
        pipe.execute()


def bucket_of(ms: int) -> int:
    """The summary bucket of a latency (ms): the smallest `b` with `BUCKET_BASE**b >= ms`."""
    return math.ceil(math.log(ms) / math.log(BUCKET_BASE)) if ms > 1 else 0


def bucket_upper_ms(bucket: int) -> float:
    """Upper bound (ms) of a summary bucket (bucket 0 holds everything up to 1 ms)."""
    return float(BUCKET_BASE**bucket) if bucket > 0 else 1.0


def summary(
    client: RedisClient, minutes: int = SUMMARY_MINUTES, now: float | None = None
) -> dict[str, Any]:
    """Changes completed in the last `minutes` and their p50/p99 (ms, bucket upper bounds)."""
    current = int((time.time() if now is None else now) // 60)
    pipe = client.pipeline(transaction=False)
    for minute in range(current - minutes + 1, current + 1):
        pipe.hgetall(keys.freshness_minute(minute))
    counts: dict[int, int] = {}
    for found in pipe.execute():
        for bucket, count in found.items():
            counts[int(as_text(bucket))] = counts.get(int(as_text(bucket)), 0) + int(count)
    total = sum(counts.values())
    return {
        "minutes": minutes,
        "changes": total,
        "p50_ms": _percentile(counts, total, 0.50),
        "p99_ms": _percentile(counts, total, 0.99),
    }


def _percentile(counts: Mapping[int, int], total: int, q: float) -> float | None:
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return round(bucket_upper_ms(bucket), 1)
    raise AssertionError("unreachable: the ranks add up to the total")
