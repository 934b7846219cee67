"""The bench's per-change freshness rule (devtools.bench.freshness), on hand-made notices."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from coachpipe.traffic import Change
from devtools.bench.freshness import (
    every_change_stored_after_last_commit,
    per_change,
    tail_seconds,
)
from devtools.bench.measure import Observed
from pipeline.routing import TABLE_AGGREGATES
from pipeline.store import Notice

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
MS0 = T0.timestamp() * 1000
COACH = uuid.uuid4()


def at(ms: float) -> str:
    return (T0 + timedelta(milliseconds=ms)).isoformat()


def write(
    aggregate: str, snapshot_ms: float, stored_ms: float, coach: uuid.UUID = COACH
) -> Observed:
    notice = Notice(
        str(coach), aggregate, 1, computed_at=at(stored_ms), snapshot_at=at(snapshot_ms)
    )
    return Observed(notice, received=0.0)


def ratings(sent_ms: float, commit_ms: float) -> Change:
    return Change("rate", "session_ratings", (COACH,), MS0 + commit_ms, MS0 + sent_ms)


RATED = TABLE_AGGREGATES["session_ratings"]


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        ([(12, 40)], 30),  # snapshot after COMMIT returned: certain
        ([(15, 40), (12, 25)], 15),  # the earliest stored of the certain writes
        ([(1, 5)], None),  # snapshot before the statement was sent: never holds it
        ([(9, 12)], 5),  # inside the bracket, nothing certain: the latest snapshot counts
        ([(8.5, 11), (9.5, 16)], 6),  # ... the latest snapshot, not the first stored
        ([(9, 12), (11, 30)], 20),  # a certain write exists: it counts, not the bracket one
    ],
)
def test_a_change_counts_once_every_routed_aggregate_holds_it(
    first: list[tuple[float, float]], expected: float | None
) -> None:
    """The change's statement was sent at +8 ms and its COMMIT returned at +10 ms; the other
    routed aggregates were stored at +12 and +15 ms from certain snapshots."""
    change = ratings(sent_ms=8, commit_ms=10)
    notices = [write(RATED[0], s, t) for s, t in first]
    notices += [write(RATED[1], 11, 12), write(RATED[2], 12, 15)]
    found = per_change([change], notices)
    if expected is None:
        assert (found["count"], found["missing"]) == (0, 1)
    else:
        assert (found["count"], found["missing"]) == (1, 0)
        assert found["max"] == pytest.approx(expected)


def test_a_change_with_an_aggregate_never_stored_is_missing() -> None:
    change = ratings(sent_ms=8, commit_ms=10)
    found = per_change([change], [write(name, 20, 25) for name in RATED[:-1]])
    assert found == {**found, "count": 0, "missing": 1}


def test_the_burst_figure_is_the_last_change_stored_after_the_last_commit() -> None:
    changes = [ratings(8, 10), ratings(48, 50)]
    notices = [write(name, 12, 30) for name in RATED] + [write(name, 55, 90) for name in RATED]
    assert every_change_stored_after_last_commit(changes, notices) == 0.04
    assert every_change_stored_after_last_commit(changes, notices[:-1]) is None


def test_the_slowest_changes_come_with_their_late_keys_writes() -> None:
    """`slowest` lists missing changes first, then the slowest, each routed key with when a
    write including the change was stored and the writes around its commit (ms after it)."""
    slow, missing = ratings(sent_ms=8, commit_ms=10), ratings(sent_ms=48, commit_ms=50)
    notices = [write(name, 12, 30) for name in RATED] + [write(RATED[0], 60, 70)]
    found = per_change([slow, missing], notices)
    first, second = found["slowest"]
    assert first["commit_ms"] == missing.commit_ms and second["commit_ms"] == slow.commit_ms
    assert first["keys"][f"{RATED[1]}|{COACH}"] == {
        "stored_after_ms": None,
        "writes": [(-38.0, -20.0)],
    }
    assert second["keys"][f"{RATED[0]}|{COACH}"]["stored_after_ms"] == 20.0
    assert second["bracket_ms"] == 2.0


def test_the_tail_is_counted_by_the_second_of_the_run_it_committed_in() -> None:
    """A stall holds every coach at once: the changes slower than the p99 committed in a few
    seconds of the run. 200 changes 10 ms apart (2 s), each stored 5 ms after its commit,
    except the last two (1.98 and 1.99 s) stored 300 ms after: the p99 (nearest rank) is 5 ms, so both are
    above it, and both committed in second 1."""
    changes = [ratings(10 * i - 1, 10 * i) for i in range(200)]
    late = {198, 199}
    notices = [
        write(name, 10 * i + 1, 10 * i + (300 if i in late else 5))
        for i in range(200)
        for name in RATED
    ]
    found = per_change(changes, notices)
    assert (found["count"], found["p99"], found["max"]) == (200, 5.0, 300.0)
    assert found["tail"] == {"above_ms": 5.0, "changes": 2, "seconds": {"1": 2}}
    assert per_change([], notices)["tail"] is None


def test_tail_seconds_of_nothing_counts_nothing() -> None:
    assert tail_seconds([], 10.0) == {"above_ms": 10.0, "changes": 0, "seconds": {}}
