"""The listener's last-event marker (`keys.source_last_event`): where a catch-up starts.

The marker is written by the listener itself, but it lives in Redis, where a restart without
persistence loses it and anything else may overwrite it. A catch-up must neither skip changes
(a marker later than the truth) nor stop the listener (a marker it cannot parse): whatever is
not a usable marker falls back to the safe bound, a refresh of every active coach.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

from pipeline.redis_values import as_text

FUTURE_TOLERANCE = timedelta(seconds=60)
"""A marker later than now by more than this (clock skew between hosts) cannot be true: a
catch-up from it would skip every change made since the real last event."""


class Unusable(enum.StrEnum):
    """Why a stored marker cannot bound a catch-up (the `reason` label of
    `coachpipe_catch_up_fallbacks_total`)."""

    MISSING = "missing"
    UNREADABLE = "unreadable"
    """Not text, or not an ISO 8601 time."""
    NO_TIMEZONE = "no_timezone"
    """A time without an offset: which instant it names is unknown."""
    IN_FUTURE = "in_future"


def encode(commit_ts: float) -> str:
    """The marker for the newest commit a source delivered (POSIX seconds → ISO 8601, UTC)."""
    return datetime.fromtimestamp(commit_ts, UTC).isoformat()


def decode(raw: object, now: datetime) -> datetime | Unusable:
    """The stored marker `raw` (bytes, text or None, as Redis returns it) as an aware time, or
    why it cannot be used. `now` is aware; the marker may not lie beyond `FUTURE_TOLERANCE`."""
    if raw is None:
        return Unusable.MISSING
    try:
        moment = datetime.fromisoformat(as_text(raw).strip())
    except (UnicodeDecodeError, ValueError):
        return Unusable.UNREADABLE
    if moment.tzinfo is None or moment.utcoffset() is None:
        return Unusable.NO_TIMEZONE
    if moment > now + FUTURE_TOLERANCE:
        return Unusable.IN_FUTURE
    return moment
