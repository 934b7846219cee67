"""`reconnect_delay`: exponential from `initial` to `maximum`, equal jitter. A table of cases."""

from __future__ import annotations

import random

import pytest

from listeners.backoff import reconnect_delay

# (attempt, initial, maximum, base): the delay is drawn from [base / 2, base].
BASES = [
    # The defaults (RECONNECT_INITIAL_S=0.5, RECONNECT_MAX_S=8): doubling, then the cap.
    (1, 0.5, 8.0, 0.5),
    (2, 0.5, 8.0, 1.0),
    (3, 0.5, 8.0, 2.0),
    (4, 0.5, 8.0, 4.0),
    (5, 0.5, 8.0, 8.0),
    (6, 0.5, 8.0, 8.0),
    (7, 0.5, 8.0, 8.0),
    (100, 0.5, 8.0, 8.0),
    (10**9, 0.5, 8.0, 8.0),  # the exponent is capped: no overflow after days of outage
    # A cap that is not a power-of-two multiple of `initial`: the base stops at the cap.
    (1, 0.02, 0.05, 0.02),
    (2, 0.02, 0.05, 0.04),
    (3, 0.02, 0.05, 0.05),
    (50, 0.02, 0.05, 0.05),
    # initial == maximum: constant base from the first attempt.
    (1, 1.0, 1.0, 1.0),
    (2, 1.0, 1.0, 1.0),
    (1_000, 1.0, 1.0, 1.0),
    # The largest maximum the settings allow is reached, never passed.
    (10, 0.5, 600.0, 256.0),
    (11, 0.5, 600.0, 512.0),
    (12, 0.5, 600.0, 600.0),
    (33, 0.5, 600.0, 600.0),
    (34, 0.5, 600.0, 600.0),
    # The smallest initial: many doublings before the cap.
    (1, 0.001, 60.0, 0.001),
    (10, 0.001, 60.0, 0.512),
    (16, 0.001, 60.0, 32.768),
    (17, 0.001, 60.0, 60.0),
]


@pytest.mark.parametrize(("attempt", "initial", "maximum", "base"), BASES)
@pytest.mark.parametrize("seed", [0, 1, 42, 2**31])
def test_the_delay_is_the_seeded_draw_from_half_the_base_to_the_base(
    attempt: int, initial: float, maximum: float, base: float, seed: int
) -> None:
    delay = reconnect_delay(attempt, initial, maximum, random.Random(seed))
    assert delay == random.Random(seed).uniform(base / 2, base)
    assert base / 2 <= delay <= base <= maximum


@pytest.mark.parametrize("attempt", [0, -1, -100])
@pytest.mark.parametrize(("initial", "maximum"), [(0.5, 8.0), (0.02, 0.05), (1.0, 1.0)])
def test_no_delay_before_the_first_attempt(attempt: int, initial: float, maximum: float) -> None:
    rng = random.Random(7)
    assert reconnect_delay(attempt, initial, maximum, rng) == 0.0
    assert rng.random() == random.Random(7).random()  # and no draw is consumed


@pytest.mark.parametrize(("attempt", "initial", "maximum", "base"), BASES)
def test_the_jitter_spreads_over_the_whole_interval(
    attempt: int, initial: float, maximum: float, base: float
) -> None:
    """A fleet of listeners does not reconnect in lockstep: 500 seeded draws cover the lower
    and the upper tenth of [base / 2, base] and never leave it."""
    rng = random.Random(2026)
    delays = [reconnect_delay(attempt, initial, maximum, rng) for _ in range(500)]
    assert all(base / 2 <= delay <= base for delay in delays)
    assert min(delays) < base * 0.55
    assert max(delays) > base * 0.95


def test_without_an_rng_the_module_random_is_used_within_the_same_bounds() -> None:
    delays = {reconnect_delay(4, 0.5, 8.0) for _ in range(200)}
    assert all(2.0 <= delay <= 4.0 for delay in delays)
    assert len(delays) > 100  # jittered, not a constant
