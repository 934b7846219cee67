"""The clock tick finds every coach whose aggregate changes with time alone, also after a\nfresh start with no marker of the last tick."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from config import Settings
from devtools.processes import Proc, wait_for
from pipeline import keys, seed
from pipeline.aggregates import CRITICAL, REGISTRY
from pipeline.clock import LONGEST_BOUNDARY, Marker, TickWindow, behind_the_clock, tick_window
from pipeline.coaches import coaches_crossing
from pipeline.db import make_engine
from pipeline.read import read_aggregate, settled_as_of
from tasks import names
from tasks.pipeline_app import PipelineApp
from tests.datasets import datasets
from tests.pipeline_checks import coach_ids, mismatches, settle
from tests.test_aggregates_oracle import load

# Sparse datasets on the window edges and mostly short steps, as between two ticks, so that
# unrelated crossings rarely hide a missed one.
STEPS = st.one_of(
    st.integers(1, 600_000_000).map(lambda us: timedelta(microseconds=us)),
    st.integers(1, 45).map(lambda d: timedelta(days=d)),
)


@pytest.fixture
def engine(database_url: str) -> Any:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=datasets(max_rows=4, edge_bias=0.9), step=STEPS)
def test_coaches_outside_the_crossing_set_keep_their_value(
    database_url: str, engine: Engine, drawn: Any, step: timedelta
) -> None:
    as_of, data, mutations = drawn
    stored = load(database_url, data, mutations)
    coach_ids = [u["id"] for u in stored.users if u["role"] == "coach"]
    later = as_of + step
    with engine.connect() as conn:
        for aggregate in CRITICAL:
            before = aggregate.compute(conn, coach_ids, as_of)
            after = aggregate.compute(conn, coach_ids, later)
            crossing = coaches_crossing(conn, aggregate, as_of, later)
            changed = {c for c in coach_ids if before[c] != after[c]}
            assert changed <= crossing.keys(), aggregate.name


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=datasets(max_rows=4, edge_bias=0.9), before=STEPS, step=STEPS)
def test_a_value_computed_past_its_crossings_is_left_alone_by_the_tick(
    database_url: str, engine: Engine, drawn: Any, before: timedelta, step: timedelta
) -> None:
    """Values stored at `as_of`, inside the tick's window (since, later]: every coach whose
    value at `later` differs from the stored one is among those the tick recomputes, though
    it leaves out the coaches whose latest crossing the stored value's clock has passed."""
    as_of, data, mutations = drawn
    stored = load(database_url, data, mutations)
    coach_ids = [u["id"] for u in stored.users if u["role"] == "coach"]
    since, later = as_of - before, as_of + step
    with engine.connect() as conn:
        for aggregate in CRITICAL:
            at_store = aggregate.compute(conn, coach_ids, as_of)
            at_tick = aggregate.compute(conn, coach_ids, later)
            crossing = coaches_crossing(conn, aggregate, since, later)
            behind = behind_the_clock(crossing, dict.fromkeys(coach_ids, as_of))
            changed = {c for c in coach_ids if at_store[c] != at_tick[c]}
            assert changed <= set(behind), aggregate.name


def test_behind_the_clock_keeps_crossings_past_the_stored_clock_and_unstored_coaches() -> None:
    first, second, third, fourth = sorted(UUID(int=n) for n in range(1, 5))
    crossings = {first: UNTIL, second: UNTIL, third: UNTIL, fourth: UNTIL}
    stored = {first: UNTIL, second: UNTIL - SECOND, third: None}  # fourth: never stored
    assert behind_the_clock(crossings, stored) == [second, third, fourth]


UNTIL = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("last_tick", "since", "marker"),
    [
        (None, UNTIL - LONGEST_BOUNDARY, Marker.MISSING),
        ("", UNTIL - LONGEST_BOUNDARY, Marker.UNREADABLE),
        ("yesterday", UNTIL - LONGEST_BOUNDARY, Marker.UNREADABLE),
        ("2026-03-01T11:59:58", UNTIL - LONGEST_BOUNDARY, Marker.UNREADABLE),  # no zone
        ((UNTIL - 2 * SECOND).isoformat(), UNTIL - 2 * SECOND, Marker.FOUND),
        ((UNTIL - 2 * SECOND).astimezone(timezone(timedelta(hours=-5))).isoformat(),
         UNTIL - 2 * SECOND, Marker.FOUND),
        (UNTIL.isoformat(), UNTIL, Marker.FOUND),  # an empty window
        ((UNTIL - timedelta(days=90)).isoformat(), UNTIL - timedelta(days=90), Marker.FOUND),
        ((UNTIL + SECOND).isoformat(), UNTIL, Marker.AHEAD),
    ],
)  # fmt: skip
def test_the_tick_window_never_starts_at_now_without_a_marker(
    last_tick: str | None, since: datetime, marker: Marker
) -> None:
    assert tick_window(last_tick, UNTIL) == TickWindow(since, marker)


def test_the_safe_window_is_the_longest_declared_boundary() -> None:
    offsets = [o for a in REGISTRY for b in a.time_boundaries for o in b.offsets]
    assert LONGEST_BOUNDARY == max(offsets) == timedelta(days=60)


THIRTY_DAY_AGGREGATES = ("coach-stats", "coach-insights")


def stored_as_of(client: redis.Redis, coach: UUID, name: str) -> datetime:
    stored = read_aggregate(client, coach, name)
    assert stored is not None
    return stored.as_of


def test_a_session_crossing_30_days_while_no_tick_marker_existed_ends_correct(
    database_url: str, redis_client: redis.Redis, worker: Proc, pipeline_app: PipelineApp
) -> None:
    """Values are stored, a session completed just under 30 days before them leaves the
    30-day window, then the first tick runs with no marker (a fresh start): it must
    recompute that coach."""
    runtime = pipeline_app.runtime
    tick_clock = pipeline_app.tasks[names.TICK_CLOCK]

    seed.load(database_url, seed.SeedPlan(coaches=2, clients_per_coach=2, sessions_per_client=2))
    coaches = coach_ids(database_url)
    runtime.scheduler.request([(a.name, c) for c in coaches for a in CRITICAL])
    settle(database_url, redis_client, coaches)
    coach = coaches[0]
    stored_at = min(stored_as_of(redis_client, coach, name) for name in THIRTY_DAY_AGGREGATES)
    with psycopg.connect(database_url) as conn:
        # No change event follows: only the clock moves this session out of "the last 30 days".
        conn.execute(
            "UPDATE sessions SET status = 'completed', completed_at = %s WHERE id = "
            "(SELECT id FROM sessions WHERE coach_id = %s LIMIT 1)",
            (stored_at - timedelta(days=30) + timedelta(milliseconds=1), coach),
        )
    assert not redis_client.keys(keys.clock_last_tick("*")), "no tick has run yet"
    for name in THIRTY_DAY_AGGREGATES:
        tick_clock(name)

    def recomputed_and_right() -> bool:
        later = all(
            stored_as_of(redis_client, coach, name) > stored_at for name in THIRTY_DAY_AGGREGATES
        )
        return later and not mismatches(database_url, redis_client, [coach], THIRTY_DAY_AGGREGATES)

    wait_for(recomputed_and_right, 30, interval=0.2, message="the crossing coach recomputed")


def test_the_tick_leaves_alone_a_change_its_own_recompute_answered(
    database_url: str, redis_client: redis.Redis, worker: Proc, pipeline_app: PipelineApp
) -> None:
    """A rating written with `now()` crosses coach-insights' boundary at offset 0 (it counts
    from its `created_at`) in the next tick's window. Its change's recompute, after the commit,
    ran at a later clock: the tick finds the crossing and recomputes nothing. (Before, every
    tick recomputed every coach with a write since the last one: at 200 changes/s, all of
    them, every 30 s, queued in front of the realtime drains.)"""
    runtime = pipeline_app.runtime
    tick_clock = pipeline_app.tasks[names.TICK_CLOCK]
    seed.load(database_url, seed.SeedPlan(coaches=2, clients_per_coach=2, sessions_per_client=2))
    coaches = coach_ids(database_url)
    name = "coach-insights"
    tick_clock(name)  # the marker: the next tick looks only from here
    with psycopg.connect(database_url) as conn:
        for coach in coaches:
            conn.execute(
                "INSERT INTO session_ratings (session_id, coach_id, client_id, rating)"
                " SELECT id, coach_id, client_id, 5 FROM sessions WHERE coach_id = %s LIMIT 1",
                (coach,),
            )
    # What the listener does for those changes, then the values settle.
    runtime.scheduler.request([(a.name, c) for c in coaches for a in CRITICAL])
    settle(database_url, redis_client, coaches)
    # One stored value lost (Redis flushed, say): that coach is recomputed all the same.
    redis_client.delete(keys.aggregate(name, coaches[1]))
    assert tick_clock(name) == {"aggregate": name, "coaches": 1, "crossing": 2}
    wait_for(
        lambda: read_aggregate(redis_client, coaches[1], name) is not None,
        30,
        interval=0.1,
        message="the coach without a stored value recomputed",
    )


def test_a_stored_clock_counts_only_while_no_recompute_is_in_flight(
    redis_client: redis.Redis,
) -> None:
    """A recompute takes its version before its snapshot, and the newer version wins whatever
    its clock: while one is in flight (the coach's counter past the stored version), the
    stored clock says nothing of what will be stored, and the tick must recompute."""
    coach, name = UUID(int=7), "coach-insights"
    redis_client.hset(
        keys.aggregate(name, coach), mapping={"version": 6, "as_of": UNTIL.isoformat()}
    )
    redis_client.set(keys.version(coach), 7)
    assert settled_as_of(redis_client, name, [coach]) == {coach: None}
    assert behind_the_clock({coach: UNTIL - SECOND}, {coach: None}) == [coach]
    redis_client.set(keys.version(coach), 6)
    assert settled_as_of(redis_client, name, [coach, UUID(int=8)]) == {
        coach: UNTIL,
        UUID(int=8): None,
    }


def test_a_tick_sends_its_coaches_to_the_bulk_queue_never_in_front_of_the_drains(
    database_url: str, redis_client: redis.Redis, broker_url: str, settings: Settings
) -> None:
    """The first tick on a fresh stack (no marker: 60 days back) finds every coach behind.
    Requested through the realtime scheduler they were due before any change that came after
    them, and every coach's commit → stored waited for the lot (whale-fairness, 2026-12-03:
    48 changes of the others up to 407 ms in the two seconds after the first tick). They go
    to the refresh queue instead, `REFRESH_BATCH_SIZE` coaches a task."""
    from tasks.celery import create_app

    seed.load(database_url, seed.SeedPlan(coaches=5, clients_per_coach=2, sessions_per_client=3))
    app = create_app(settings.model_copy(update={"refresh_batch_size": 2}))
    try:
        result = app.tasks[names.TICK_CLOCK]("coach-stats")
        behind = result["coaches"]
        assert behind == 5, result
        assert app.runtime.scheduler.due_pairs() == set()
    finally:
        app.close()
    broker = redis.Redis.from_url(broker_url)
    assert broker.llen(names.REALTIME_QUEUE) == 0
    batches: list[list[str]] = []
    for raw in broker.lrange(names.REFRESH_QUEUE, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == names.REFRESH_BATCH
        (aggregates, coaches, _commit), _kwargs, _embed = json.loads(
            base64.b64decode(message["body"])
        )
        assert aggregates == ["coach-stats"]
        batches.append(coaches)
    assert sorted(len(batch) for batch in batches) == [1, 2, 2]
