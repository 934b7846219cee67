"""Where the clock tick starts looking for boundary crossings. Pure.

A tick recomputes the coaches with a crossing in (since, until], `since` being the last tick,
unless their stored value was computed at a clock past their latest crossing
(`behind_the_clock`).
When that marker is missing (first start, Redis restarted without persistence) the tick must
not start from "now": crossings while no beat ticked would never be recomputed. It looks back
over the longest time boundary any aggregate declares instead; older crossings are the
hourly reconcile's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from pipeline.aggregates import REGISTRY

LONGEST_BOUNDARY = max(
    offset
    for aggregate in REGISTRY
    for boundary in aggregate.time_boundaries
    for offset in boundary.offsets
)


class Marker(StrEnum):
    FOUND = "found"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    AHEAD = "ahead"
    """Later than `until`: the database clock went back. Nothing to look at until it passes."""


@dataclass(frozen=True)
class TickWindow:
    since: datetime
    marker: Marker


def tick_window(
    last_tick: str | None, until: datetime, safe_window: timedelta = LONGEST_BOUNDARY
) -> TickWindow:
    """The start of the tick ending at `until` (timezone-aware), from the stored last tick."""
    if last_tick is None:
        return TickWindow(until - safe_window, Marker.MISSING)
    try:
        since = datetime.fromisoformat(last_tick)
    except ValueError:
        return TickWindow(until - safe_window, Marker.UNREADABLE)
    if since.tzinfo is None:  # not comparable with the database clock
        return TickWindow(until - safe_window, Marker.UNREADABLE)
    if since > until:
        return TickWindow(until, Marker.AHEAD)
    return TickWindow(since, Marker.FOUND)


def behind_the_clock(
    crossings: Mapping[UUID, datetime], stored_as_of: Mapping[UUID, datetime | None]
) -> list[UUID]:
    """The coaches of `crossings` (coach → its latest crossing) whose stored value was computed
    at a clock before that crossing, or who have none stored (None in `stored_as_of`: also a
    coach with a recompute in flight, `pipeline.read.settled_as_of`); sorted.

    A value computed from a snapshot whose clock (`as_of`) is at or past a crossing already
    counts the row on the far side of it, so recomputing it changes nothing. Most crossings
    are of that kind: a boundary at offset 0 (a rating counted from its `created_at`, a session
    from its `completed_at`) is crossed by every row written with `now()`, and the change's
    own recompute, after its commit, already ran at a later clock. Only a row whose timestamp
    was ahead of the clock when it was last computed (a session scheduled for later, a
    completion 30 days ago) needs the tick. What a snapshot could not see (a row committed
    after it) is the change's own recompute's to answer, not the clock's.
    """
    return sorted(
        coach
        for coach, crossed_at in crossings.items()
        if (as_of := stored_as_of.get(coach)) is None or as_of < crossed_at
    )
