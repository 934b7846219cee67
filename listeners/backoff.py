"""Reconnect delays: exponential from `initial` to `maximum`, with jitter. Pure."""

from __future__ import annotations

import random


def reconnect_delay(
    attempt: int, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Delay before reconnect attempt `attempt` (1-based).

    The base doubles each attempt up to `maximum`; the delay is drawn from [base/2, base]
    ("equal jitter"), so a fleet of listeners does not reconnect in lockstep yet never waits
    less than half the base.
    """
    if attempt < 1:
        return 0.0
    base = min(maximum, initial * 2 ** min(attempt - 1, 32))
    return (rng or random).uniform(base / 2, base)
