"""When beat polls instead of trusting realtime: pure decisions over the realtime status.

`check_realtime` follows the status and acts on its transitions; `fallback_poll` refreshes
critical aggregates every FALLBACK_POLL_S while the status is not green. Both tasks only read
Redis and apply these functions, so the policy is tested here, table by table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pipeline.health import Color

POLL_EARLY_FRACTION = 0.9
"""A poll that comes a little early (beat's jitter) still runs: only one within 90 % of the
interval after the last is skipped, so a slightly early tick does not skip a whole period."""


class Announcement(StrEnum):
    LOST = "lost"
    """Realtime went from green to something else: operators are told polling started."""
    RESTORED = "restored"
    """Realtime is green again: one last refresh, then polling stops."""


@dataclass(frozen=True)
class TransitionAction:
    refresh_reason: str | None
    """Refresh critical aggregates now with this reason, or not at all (None)."""
    announce: Announcement | None = None


NOTHING = TransitionAction(None)


def on_transition(previous: Color | None, current: Color) -> TransitionAction:
    """What to do when the status changed from `previous` (None: no change seen) to `current`.

    Any change refreshes at once, so the dashboards do not wait for the next poll: into green
    to pick up what the outage missed, out of green (or between yellow and red) because polling
    starts now. Only the edges of green are announced.
    """
    if previous is None or previous is current:
        return NOTHING
    if current is Color.GREEN:
        return TransitionAction("recovered", Announcement.RESTORED)
    announce = Announcement.LOST if previous is Color.GREEN else None
    return TransitionAction(f"status {current.value}", announce)


def poll_due(current: Color, last_poll_at: float | None, now: float, poll_s: float) -> bool:
    """Whether a fallback poll runs now: never while green, else once per `poll_s`."""
    if current is Color.GREEN:
        return False
    return last_poll_at is None or now - last_poll_at >= poll_s * POLL_EARLY_FRACTION
