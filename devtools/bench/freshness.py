"""Freshness per change, as a user sees it: commit → every aggregate routed from it stored.

A change is seen once, for each aggregate routed from it (`TABLE_AGGREGATES[table]` x its
coaches), a stored write's snapshot includes it; its latency is the latest of those first
writes minus its commit time (`Change.commit_ms`: by when the commit was visible).

Whether a snapshot includes a change is decided from the writer's bracket: the commit became visible
somewhere between `sent_ms` and `commit_ms` (see `Change`), and a write's `snapshot_at` is the
database clock as its snapshot began (same host, same clock). The rule:

- snapshot at or after `commit_ms`: includes the change (certain);
- snapshot before `sent_ms`: does not (certain);
- snapshot inside the bracket: unknown. It is used only when no write is certain, and then
  the key's latest snapshot is taken: the recompute the change asked for has a snapshot
  after the commit became visible, so the latest one includes it.

So a latency is never shorter than the truth; it is longer only when a snapshot fell inside a
bracket and included the change. The bench's Postgres runs with `track_commit_timestamp` on, so a
bracket is the server's commit timestamp to its clock in a SELECT sent in the COMMIT's message (the
COMMIT's own time on the server; `coachpipe.traffic.Change`). Taken by the writer thread's wall
clock, brackets were 20-360 ms wide beside the whale (the bench process busy parsing notices), a
change's own drain often snapshotted inside one, and the change counted as answered only by its
coach's next write, 30-54 s later: most of the whale-fairness tail was that.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from coachpipe.traffic import Change
from devtools.bench.measure import Observed, nearest_rank, percentiles
from pipeline.routing import TABLE_AGGREGATES

Key = tuple[str, str]
"""(aggregate, coach id)"""


class KeyWrites:
    """The stored writes of one key, ordered by snapshot time."""

    def __init__(self, writes: Iterable[tuple[float, float]]) -> None:
        ordered = sorted(writes)  # (snapshot ms, stored ms)
        self.snapshots = [snapshot for snapshot, _ in ordered]
        self.stored = [stored for _, stored in ordered]
        self.earliest_from = self.stored[:]  # earliest store among writes from index i on
        for i in range(len(ordered) - 2, -1, -1):
            self.earliest_from[i] = min(self.earliest_from[i], self.earliest_from[i + 1])

    def first_including(self, change: Change) -> float | None:
        """When (ms) a write whose snapshot includes `change` was first stored (see the rule)."""
        certain = bisect_left(self.snapshots, change.commit_ms)
        if certain < len(self.snapshots):
            return self.earliest_from[certain]
        if bisect_left(self.snapshots, change.sent_ms) < len(self.snapshots):
            return self.stored[-1]
        return None


def _ms(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp() * 1000


def key_writes(notices: Iterable[Observed]) -> dict[Key, KeyWrites]:
    writes: dict[Key, list[tuple[float, float]]] = defaultdict(list)
    for observed in notices:
        notice = observed.notice
        writes[(notice.aggregate, notice.coach_id)].append((_ms(notice.snapshot_at),
                                                            observed.stored_ms))  # fmt: skip
    return {key: KeyWrites(found) for key, found in writes.items()}


def routed_keys(change: Change) -> list[Key]:
    return [
        (name, str(coach)) for coach in change.coaches for name in TABLE_AGGREGATES[change.table]
    ]


def all_stored_at(change: Change, writes: dict[Key, KeyWrites]) -> float | None:
    """When (ms) every aggregate routed from `change` had been stored including it."""
    latest = None
    for key in routed_keys(change):
        found = writes.get(key)
        stored = found.first_including(change) if found else None
        if stored is None:
            return None
        latest = stored if latest is None else max(latest, stored)
    return latest


SLOWEST = 10
"""How many of the slowest (or missing) changes `per_change` details."""


def tail_seconds(
    timed: Sequence[tuple[float, float]], origin_ms: float | None = None
) -> dict[str, Any]:
    """When the tail happened: of `timed` (commit ms, latency ms) pairs, the 1 % ranked above
    the p99 (nearest rank, as `percentiles`: 120 of 12,000), by the whole second of the run
    they committed in, counted from `origin_ms` (wall clock ms: the run's start, so that every
    figure of a run counts the same seconds; the first commit when None). A few seconds
    holding them all is a stall that held every coach at once (a pause of a process, a burst
    of other work); many seconds with one or two each is a tail spread over the run. Shape:
    `{"above_ms": p99, "changes", "seconds": {second: {"changes", "max_ms"}}}`, seconds in
    order; `above_ms` None when `timed` is empty."""
    if not timed:
        return {"above_ms": None, "changes": 0, "seconds": {}}
    first = min(commit for commit, _ in timed) if origin_ms is None else origin_ms
    ordered = sorted(timed, key=lambda pair: pair[1])
    at = nearest_rank(len(ordered), 0.99)
    seconds: dict[int, list[float]] = defaultdict(list)
    for commit, latency in ordered[at + 1 :]:
        seconds[int((commit - first) // 1000)].append(latency)
    return {
        "above_ms": round(ordered[at][1], 2),
        "changes": len(ordered) - at - 1,
        "seconds": {
            str(second): {"changes": len(seconds[second]), "max_ms": round(max(seconds[second]), 2)}
            for second in sorted(seconds)
        },
    }


def per_change(
    changes: Sequence[Change], notices: Sequence[Observed], origin_ms: float | None = None
) -> dict[str, Any]:
    """p50/p95/p99/max and count of commit → every routed aggregate stored (ms), how many
    changes had an aggregate never stored including them (`missing`), when the changes
    slower than the p99 committed (`tail`, see `tail_seconds`; seconds from `origin_ms`),
    and the `SLOWEST` slowest or missing changes (`slowest`) with the writes of their late
    keys."""
    writes = key_writes(notices)
    timed: list[tuple[float, float]] = []  # (commit ms, latency ms)
    missing = 0
    ranked: list[tuple[float, Change]] = []
    for change in changes:
        stored = all_stored_at(change, writes)
        if stored is None:
            missing += 1
            ranked.append((math.inf, change))
        else:
            timed.append((change.commit_ms, stored - change.commit_ms))
            ranked.append((stored - change.commit_ms, change))
    ranked.sort(key=lambda item: item[0], reverse=True)
    return {
        **percentiles([latency for _, latency in timed]),
        "missing": missing,
        "tail": tail_seconds(timed, origin_ms),
        "slowest": [_detail(change, writes) for _, change in ranked[:SLOWEST]],
    }


def _detail(change: Change, writes: dict[Key, KeyWrites]) -> dict[str, Any]:
    """A late change: its commit bracket and, per routed key, when a write including it was
    stored (ms after commit; None: never) and the writes around its commit (snapshot and
    stored, ms relative to the commit)."""
    keys_found: dict[str, Any] = {}
    for key in routed_keys(change):
        found = writes.get(key)
        stored = found.first_including(change) if found else None
        around = []
        if found is not None:
            at = bisect_left(found.snapshots, change.sent_ms)
            for i in range(max(0, at - 2), min(len(found.snapshots), at + 3)):
                around.append(
                    (
                        round(found.snapshots[i] - change.commit_ms, 1),
                        round(found.stored[i] - change.commit_ms, 1),
                    )
                )
        keys_found["|".join(key)] = {
            "stored_after_ms": None if stored is None else round(stored - change.commit_ms, 1),
            "writes": around,
        }
    return {
        "kind": change.kind,
        "table": change.table,
        "commit_ms": change.commit_ms,
        "bracket_ms": round(change.commit_ms - change.sent_ms, 1),
        "keys": keys_found,
    }


def every_change_stored_after_last_commit(
    changes: Sequence[Change], notices: Sequence[Observed]
) -> float | None:
    """Seconds from the last commit until every aggregate routed from every change was stored
    including it (the same rule); None if one never was."""
    if not changes:
        return None
    writes = key_writes(notices)
    done = [all_stored_at(change, writes) for change in changes]
    if any(stored is None for stored in done):
        return None
    last_commit = max(change.commit_ms for change in changes)
    return round((max(s for s in done if s is not None) - last_commit) / 1000, 3)
