"""Where the clock tick starts looking for boundary crossings. Pure.

A tick recomputes the coaches with a crossing in (since, until], `since` being the last tick.
When that marker is missing (first start, Redis restarted without persistence) the tick must
not start from "now": crossings while no beat ticked would never be recomputed. It looks back
over the longest time boundary any aggregate declares instead; older crossings are the
hourly reconcile's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

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
