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
from devtools.bench.scenarios import FloorProbe
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
    except the last two (1.98 and 1.99 s), stored 300 ms after: the p99 (nearest rank) is
    5 ms, so both are above it, both committed in second 1 of the run counted from its first
    commit, and in second 3 of a run that started 2 s before it (`origin_ms`)."""
    changes = [ratings(10 * i - 1, 10 * i) for i in range(200)]
    late = {198, 199}
    notices = [
        write(name, 10 * i + 1, 10 * i + (300 if i in late else 5))
        for i in range(200)
        for name in RATED
    ]
    found = per_change(changes, notices)
    assert (found["count"], found["p99"], found["max"]) == (200, 5.0, 300.0)
    stall = {"changes": 2, "max_ms": 300.0}
    assert found["tail"] == {"above_ms": 5.0, "changes": 2, "seconds": {"1": stall}}
    started = per_change(changes, notices, origin_ms=MS0 - 2000)
    assert started["tail"]["seconds"] == {"3": stall}


def test_the_tail_is_the_one_percent_ranked_above_the_p99_ties_and_rounding_aside() -> None:
    """1 % of the changes, whatever their rounding or ties: 100 changes of 5.0004 to 5.0994 ms
    (p99 5.0984, 5.1 rounded) have one above it; 200 changes of 5 ms have two."""
    timed = [(MS0 + i, 5.0 + i / 1000 + 0.0004) for i in range(100)]
    assert tail_seconds(timed)["above_ms"] == 5.1
    assert tail_seconds(timed)["changes"] == 1
    assert tail_seconds([(MS0 + i, 5.0) for i in range(200)])["changes"] == 2


def test_tail_seconds_of_nothing_counts_nothing() -> None:
    assert tail_seconds([]) == {"above_ms": None, "changes": 0, "seconds": {}}
    assert per_change([], [])["tail"]["changes"] == 0


def test_the_floor_counts_its_tail_on_the_runs_seconds() -> None:
    """The floor probe keeps (received, wall s; commit → received, ms): its commit is the one
    and the other apart, counted from the run's start as the per-change figures are."""
    floor = FloorProbe.__new__(FloorProbe)
    start = MS0 / 1000
    floor.latencies = [(start + 0.5 + i / 100, 2.0) for i in range(99)]
    floor.latencies.append((start + 3.2, 400.0))  # committed at 2.8 s: second 2
    floor.latencies.append((start - 1, 900.0))  # before the run: not counted
    found = floor.figures(start)
    assert (found["count"], found["p50"], found["max"]) == (100, 2.0, 400.0)
    assert found["tail"] == {
        "above_ms": 2.0,  # the 99th of 100 latencies, 2.0; the 100th, 400 ms, is above it
        "changes": 1,
        "seconds": {"2": {"changes": 1, "max_ms": 400.0}},
    }
