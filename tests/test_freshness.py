"""Freshness per change (pipeline.freshness): tickets against a real Redis, and end to end with a
real listener and a real worker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis

from coachpipe.embedded import free_port
from devtools.processes import (
    listener_connected,
    running,
    start_listener,
    start_worker,
    wait_for,
)
from devtools.scrape import scrape
from pipeline import seed
from pipeline.events import ChangeEvent, ChangeType
from pipeline.freshness import Freshness, summary, tickets
from pipeline.routing import TABLE_AGGREGATES
from pipeline.store import AggregateStore
from tests.pipeline_checks import settle

COMMIT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
COMMIT_MS = int(COMMIT.timestamp() * 1000)


def change(table: str, coach: uuid.UUID | None, old_coach: uuid.UUID | None = None,
           commit: datetime | None = COMMIT) -> ChangeEvent:  # fmt: skip
    new = {"coach_id": str(coach)} if coach else None
    old = {"coach_id": str(old_coach)} if old_coach else None
    kind = ChangeType.UPDATE if new and old else ChangeType.INSERT if new else ChangeType.DELETE
    return ChangeEvent(table, kind, new, old, commit)


A, B = uuid.uuid4(), uuid.uuid4()


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([change("goals", A)], {(A, COMMIT_MS): set(TABLE_AGGREGATES["goals"])}),
        (  # one transaction, two tables, one coach: one ticket waiting for the union
            [change("goals", A), change("session_ratings", A)],
            {(A, COMMIT_MS): {*TABLE_AGGREGATES["goals"], *TABLE_AGGREGATES["session_ratings"]}},
        ),
        (  # a session moved between coaches: each dashboard waits for its own aggregates
            [change("sessions", B, old_coach=A)],
            {(c, COMMIT_MS): set(TABLE_AGGREGATES["sessions"]) for c in (A, B)},
        ),
        ([change("sessions", A, commit=None)], {}),  # no commit time, nothing to measure
        ([change("sessions", None, old_coach=None)], {}),  # no coach: a wide refresh, no ticket
    ],
)
def test_tickets_group_routed_aggregates_per_coach_and_commit(
    events: list[ChangeEvent], expected: dict[tuple[uuid.UUID, int], set[str]]
) -> None:
    assert tickets(events) == expected


def store_at(store: AggregateStore, name: str, coach: uuid.UUID, version: int) -> None:
    store.write(name, 1, version, {coach: {}}, snapshot_at=COMMIT, computed_at=COMMIT)


def stored_after(ms: int) -> datetime:
    return COMMIT + timedelta(milliseconds=ms)


def test_a_ticket_completes_when_its_last_aggregate_is_stored_by_a_later_version(
    redis_client: redis.Redis,
) -> None:
    store, freshness = AggregateStore(redis_client), Freshness(redis_client)
    coach = uuid.uuid4()
    early = store.next_version(coach)  # a recompute already running when the change arrived
    assert freshness.register([change("goals", coach)]) == 1
    names = sorted(TABLE_AGGREGATES["goals"])
    store_at(store, names[0], coach, early)
    assert freshness.stored({names[0]: [coach]}, early, stored_after(5)) == []
    versions = {name: store.next_version(coach) for name in names}
    for name in names:
        store_at(store, name, coach, versions[name])
    # Workers mark out of order: the last mark stored earlier than another one did.
    assert freshness.stored({names[0]: [coach]}, versions[names[0]], stored_after(40)) == []
    assert freshness.stored({names[1]: [coach]}, versions[names[1]], stored_after(90)) == []
    assert freshness.stored({names[2]: [coach]}, versions[names[2]], stored_after(60)) == [0.09]
    assert freshness.stored({names[2]: [coach]}, versions[names[2]], stored_after(70)) == []
    assert summary(redis_client, now=stored_after(60).timestamp())["changes"] == 1


def test_a_write_that_lost_to_a_newer_version_marks_nothing(redis_client: redis.Redis) -> None:
    store, freshness = AggregateStore(redis_client), Freshness(redis_client)
    coach = uuid.uuid4()
    freshness.register([change("session_ratings", coach)])
    names = TABLE_AGGREGATES["session_ratings"]
    loser, winner = store.next_version(coach), store.next_version(coach)
    for name in names:
        store_at(store, name, coach, winner)
        store_at(store, name, coach, loser)  # rejected: a newer version is stored
    assert freshness.stored({name: [coach] for name in names}, loser, stored_after(20)) == []
    assert freshness.stored({name: [coach] for name in names}, winner, stored_after(30)) == [0.03]


def test_the_status_summary_reads_percentiles_from_the_minute_buckets(
    redis_client: redis.Redis,
) -> None:
    store, freshness = AggregateStore(redis_client), Freshness(redis_client)
    coaches = [uuid.uuid4() for _ in range(100)]
    freshness.register([change("goals", coach) for coach in coaches])
    latencies = {coach: 10 if index < 90 else 500 for index, coach in enumerate(coaches)}
    for coach, latency in latencies.items():
        version = store.next_version(coach)
        for name in TABLE_AGGREGATES["goals"]:
            store_at(store, name, coach, version)
        names = TABLE_AGGREGATES["goals"]
        freshness.stored({name: [coach] for name in names}, version, stored_after(latency))
    found = summary(redis_client, now=stored_after(600).timestamp())
    assert found["changes"] == 100
    assert 10 <= found["p50_ms"] < 11  # bucket upper bounds: at most 10 % above
    assert 500 <= found["p99_ms"] < 550
    assert summary(redis_client, now=stored_after(3600 * 1000).timestamp())["changes"] == 0


@pytest.mark.slow
def test_every_change_is_observed_once_when_all_its_aggregates_are_stored(
    database_url: str,
    redis_client: redis.Redis,
    service_env: dict[str, str],
    tmp_path: Path,
    broker_url: str,
) -> None:
    """Listener and worker processes: the histogram counts one observation per coach and
    transaction, after the worker stored every aggregate routed from it."""

    seed.load(database_url, seed.SeedPlan(coaches=10, clients_per_coach=2, sessions_per_client=2))
    port = free_port()
    worker = start_worker(
        {**service_env, "WORKER_METRICS_PORT": str(port)}, tmp_path, broker_url=broker_url
    )
    listener = start_listener(service_env, tmp_path)
    with running(listener, worker):
        wait_for(
            lambda: listener_connected(redis_client, listener), 20, message="listener to connect"
        )
        settle(database_url, redis_client)  # a new slot: the first catch-up refreshes everything
        with psycopg.connect(database_url, autocommit=True) as conn:
            pairs = conn.execute(
                "SELECT coach_id, min(id::text)::uuid FROM users WHERE role = 'client'"
                " GROUP BY coach_id ORDER BY coach_id"
            ).fetchall()
            for coach, client in pairs[:6]:  # one coach each: no two share a commit ms
                conn.execute(
                    "INSERT INTO goals (coach_id, client_id, title, progress)"
                    " VALUES (%s, %s, 'g', 10)",
                    (coach, client),
                )
            coach, client = pairs[6]
            with conn.transaction():  # two tables, one coach, one commit: one observation
                conn.execute(
                    "INSERT INTO goals (coach_id, client_id, title, progress)"
                    " VALUES (%s, %s, 'g', 20)",
                    (coach, client),
                )
                conn.execute("UPDATE users SET full_name = 'Renamed' WHERE id = %s", (client,))
            (old, _), (new, _) = pairs[7], pairs[8]
            conn.execute(  # a session moved: both coaches' dashboards, two observations
                "UPDATE sessions SET coach_id = %s WHERE id ="
                " (SELECT id FROM sessions WHERE coach_id = %s LIMIT 1)",
                (new, old),
            )
        expected = 6 + 1 + 2

        def observed() -> float:
            return scrape(port, "coachpipe_change_freshness_seconds_count")

        wait_for(lambda: observed() >= expected, 60, message=f"{expected} changes observed")
        settle(database_url, redis_client)
        assert observed() == expected
        assert summary(redis_client)["changes"] == expected
        assert 0 < scrape(port, "coachpipe_change_freshness_seconds_sum") / expected < 30
