"""The fallback policy as tables: every status transition, and when a poll is due."""

from __future__ import annotations

import pytest

from pipeline.fallback import Announcement, TransitionAction, on_transition, poll_due
from pipeline.health import Color

GREEN, YELLOW, RED = Color.GREEN, Color.YELLOW, Color.RED


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        # No transition seen (the first green, or the same color again): nothing to do.
        (None, GREEN, TransitionAction(None)),
        (None, YELLOW, TransitionAction(None)),
        (None, RED, TransitionAction(None)),
        (GREEN, GREEN, TransitionAction(None)),
        (YELLOW, YELLOW, TransitionAction(None)),
        (RED, RED, TransitionAction(None)),
        # Out of green: announce the loss, refresh at once (polling starts).
        (GREEN, YELLOW, TransitionAction("status yellow", Announcement.LOST)),
        (GREEN, RED, TransitionAction("status red", Announcement.LOST)),
        # Between degraded colors: refresh, nothing new to announce.
        (YELLOW, RED, TransitionAction("status red")),
        (RED, YELLOW, TransitionAction("status yellow")),
        # Back to green: one last refresh for what the outage missed, announced.
        (YELLOW, GREEN, TransitionAction("recovered", Announcement.RESTORED)),
        (RED, GREEN, TransitionAction("recovered", Announcement.RESTORED)),
    ],
)
def test_what_a_status_transition_does(
    previous: Color | None, current: Color, expected: TransitionAction
) -> None:
    assert on_transition(previous, current) == expected


POLL_S = 10.0
NOW = 1_000.0


@pytest.mark.parametrize(
    ("current", "last_poll_at", "due"),
    [
        (GREEN, None, False),  # green: never, not even the first time
        (GREEN, NOW - 100 * POLL_S, False),
        (YELLOW, None, True),  # never polled: at once
        (RED, None, True),
        (RED, NOW, False),  # just polled
        (RED, NOW - 0.5 * POLL_S, False),
        (RED, NOW - 0.89 * POLL_S, False),
        (RED, NOW - 0.9 * POLL_S, True),  # a slightly early beat tick still polls
        (YELLOW, NOW - POLL_S, True),
        (RED, NOW - 10 * POLL_S, True),
        (RED, NOW + 5, False),  # a stamp from a clock ahead of ours: not due yet
    ],
)
def test_when_a_fallback_poll_is_due(current: Color, last_poll_at: float | None, due: bool) -> None:
    assert poll_due(current, last_poll_at, NOW, POLL_S) is due
