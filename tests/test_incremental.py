"""Incremental recomputes (issue 18, `pipeline.aggregates.delta`): coach-clients brought from
its stored value to a later snapshot by reading again only the lines written since, equal to
the oracle after any change sequence, read in full whenever the stamps cannot tell."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY as METRICS
from sqlalchemy import Engine

from pipeline import backfill, keys
from pipeline.aggregates import get
from pipeline.aggregates.delta import MIN_LINES, Base, SnapshotId
from pipeline.db import make_engine
from pipeline.migrate import VERSION_TABLE, upgrade
from pipeline.recompute import Snapshot, compute_snapshot, recompute_due
from pipeline.redis_client import RedisClient
from pipeline.store import AggregateStore
from pipeline.summaries import SCHEMA
from pipeline.summaries import metadata as summary_metadata
from pipeline.summary_sql import rebuild_statements
from tests import oracle
from tests.conftest import reset_database
from tests.datasets import datasets, insert, read_back
from tests.test_summaries import CHANGES, apply

CLIENTS = get("coach-clients")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def readers(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, snapshots=True)
    yield engine
    engine.dispose()


def bases_of(snapshot: Snapshot) -> dict[str, dict[UUID, Base]]:
    return snapshot.as_bases()


def readings(way: str) -> float:
    """How many coach-clients values a base served (`incremental`) or did not (`full`)."""
    labels = {"aggregate": CLIENTS.name, "way": way}
    return METRICS.get_sample_value("coachpipe_incremental_recomputes_total", labels) or 0.0


def lines_read() -> float:
    labels = {"aggregate": CLIENTS.name}
    return METRICS.get_sample_value("coachpipe_incremental_lines_sum", labels) or 0.0


def assert_oracle(conn: psycopg.Connection[Any], snapshot: Snapshot, coaches: list[UUID]) -> None:
    data = read_back(conn)
    for coach in coaches:
        expected = oracle.expected(data, CLIENTS.name, coach, snapshot.at)
        assert snapshot.values[CLIENTS.name][coach] == expected, coach


# Besides the row changes: a rebuild of every coach's summaries, a TRUNCATE of the goals (their
# per-client summary is one coach-clients reads).
STEPS = st.one_of(CHANGES, st.sampled_from([("rebuild", 0, 0, 0), ("truncate", 0, 0, 0)]))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=datasets(max_rows=12), steps=st.lists(STEPS, min_size=1, max_size=10))
def test_incremental_values_equal_the_oracle_through_any_change_sequence(
    database_url: str,
    engine: Engine,
    readers: Engine,
    drawn: Any,
    steps: list[tuple[str, int, int, int]],
) -> None:
    """Each step's value starts from the one before (every base used: `min_lines=0`), through
    reassignments, deletes, status flips, clock moves, rebuilds and truncates: always the
    oracle's."""
    as_of, data, _ = drawn
    reset_database(database_url)
    with psycopg.connect(database_url) as conn:
        insert(conn, data)
        conn.commit()
        coaches = [row[0] for row in conn.execute("SELECT id FROM users WHERE role = 'coach'")]
        snapshot = compute_snapshot(readers, [CLIENTS], coaches, as_of=as_of)
        for step in steps:
            if step[0] == "rebuild":
                backfill.rebuild(engine, backfill.every_coach(engine))
            elif step[0] == "truncate":
                conn.execute("TRUNCATE goals")
                conn.commit()
            else:
                as_of = apply(conn, step, as_of)
            snapshot = compute_snapshot(
                readers, [CLIENTS], coaches, bases_of(snapshot), as_of=as_of, min_lines=0
            )
            assert_oracle(conn, snapshot, coaches)


def seed_coach(conn: psycopg.Connection[Any], clients: int = MIN_LINES + 20) -> UUID:
    """A coach with `clients` clients (enough for a base to serve), 5 sessions each (one
    ahead), a goal each."""
    coach = uuid.uuid4()
    conn.execute("INSERT INTO users (id, role, full_name) VALUES (%s, 'coach', 'Coach')", (coach,))
    conn.execute(
        "INSERT INTO users (id, role, coach_id, full_name, status)"
        " SELECT gen_random_uuid(), 'client', %s, 'Client ' || lpad(i::text, 4, '0'), 'active'"
        " FROM generate_series(1, %s) AS i",
        (coach, clients),
    )
    conn.execute(
        "INSERT INTO sessions (coach_id, client_id, status, scheduled_at, completed_at)"
        " SELECT coach_id, id, s.status, now() + s.days * interval '1 day',"
        "        CASE WHEN s.status = 'completed' THEN now() + s.days * interval '1 day' END"
        " FROM users CROSS JOIN (VALUES ('completed', -20), ('completed', -10), ('cancelled', -5),"
        "                               ('completed', -1), ('scheduled', 3)) AS s(status, days)"
        " WHERE coach_id = %s",
        (coach,),
    )
    conn.execute(
        "INSERT INTO goals (coach_id, client_id, title, status, progress)"
        " SELECT coach_id, id, 'Goal', 'active', 40 FROM users WHERE coach_id = %s",
        (coach,),
    )
    conn.commit()
    return coach


def first_client(conn: psycopg.Connection[Any], coach: UUID) -> UUID:
    row = conn.execute(
        'SELECT id FROM users WHERE coach_id = %s ORDER BY full_name COLLATE "C", id LIMIT 1',
        (coach,),
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


@pytest.fixture
def coach(database_url: str) -> UUID:
    with psycopg.connect(database_url) as conn:
        return seed_coach(conn)


def test_one_change_reads_one_line_again(database_url: str, readers: Engine, coach: UUID) -> None:
    before = compute_snapshot(readers, [CLIENTS], [coach])
    with psycopg.connect(database_url) as conn:
        client = first_client(conn, coach)
        conn.execute(
            "INSERT INTO sessions (coach_id, client_id, status, scheduled_at, completed_at)"
            " VALUES (%s, %s, 'completed', now(), now())",
            (coach, client),
        )
        conn.commit()
        served, lines = readings("incremental"), lines_read()
        after = compute_snapshot(readers, [CLIENTS], [coach], bases_of(before))
        assert (readings("incremental") - served, lines_read() - lines) == (1, 1)
        assert_oracle(conn, after, [coach])
        assert after.values[CLIENTS.name][coach]["clients"][0]["completed_sessions"] == 4


def test_a_base_serves_only_from_enough_lines(
    database_url: str, readers: Engine, coach: UUID
) -> None:
    with psycopg.connect(database_url) as conn:
        small = seed_coach(conn, clients=MIN_LINES - 1)
    before = compute_snapshot(readers, [CLIENTS], [coach, small])
    checked = readings("incremental") + readings("full")
    compute_snapshot(readers, [CLIENTS], [coach, small], bases_of(before))
    assert readings("incremental") + readings("full") - checked == 1  # the small coach's: none


@pytest.mark.parametrize(
    "roster_change",
    [
        "UPDATE users SET full_name = 'Aaron' WHERE id = %(client)s",
        "UPDATE users SET status = 'paused' WHERE id = %(client)s",
        "UPDATE users SET coach_id = NULL WHERE id = %(client)s",
        "DELETE FROM users WHERE id = %(client)s",
        "INSERT INTO users (role, coach_id, full_name) VALUES ('client', %(coach)s, 'A')",
    ],
)
def test_a_roster_change_reads_the_value_in_full(
    database_url: str, readers: Engine, coach: UUID, roster_change: str
) -> None:
    before = compute_snapshot(readers, [CLIENTS], [coach])
    with psycopg.connect(database_url) as conn:
        conn.execute(roster_change, {"client": first_client(conn, coach), "coach": coach})
        conn.commit()
        full = readings("full")
        after = compute_snapshot(readers, [CLIENTS], [coach], bases_of(before))
        assert readings("full") - full == 1
        assert_oracle(conn, after, [coach])


def test_a_truncate_forgets_every_base(database_url: str, readers: Engine, coach: UUID) -> None:
    before = compute_snapshot(readers, [CLIENTS], [coach])
    with psycopg.connect(database_url) as conn:
        conn.execute("TRUNCATE goals")
        conn.commit()
        full = readings("full")
        after = compute_snapshot(readers, [CLIENTS], [coach], bases_of(before))
        assert readings("full") - full == 1
        assert_oracle(conn, after, [coach])
        assert after.values[CLIENTS.name][coach]["clients"][0]["active_goals"] == 0


def test_a_rebuild_repairs_a_line_through_its_base(
    database_url: str, engine: Engine, readers: Engine, coach: UUID
) -> None:
    """A summary row made wrong behind the triggers' back (no stamp): the value read from it is
    wrong. A rebuild of the coach's sessions alone (one source, one transaction of
    `backfill.rebuild`) stamps every client row it clears, so the next incremental read takes
    every line again and repairs it; a full rebuild also rebuilds the roster: read in full."""
    with psycopg.connect(database_url) as conn:
        client = first_client(conn, coach)
        conn.execute(
            f"UPDATE {SCHEMA}.session_client_counts SET completed = 99"
            " WHERE coach_id = %s AND client_id = %s",
            (coach, client),
        )
        conn.commit()
        wrong = compute_snapshot(readers, [CLIENTS], [coach])
        assert wrong.values[CLIENTS.name][coach]["clients"][0]["completed_sessions"] == 99
        for statement in rebuild_statements("sessions"):  # what `backfill.rebuild` runs
            conn.execute(statement, {"coach_ids": [coach]})
        conn.commit()
        served, lines = readings("incremental"), lines_read()
        repaired = compute_snapshot(readers, [CLIENTS], [coach], bases_of(wrong))
        assert readings("incremental") - served == 1
        assert lines_read() - lines == MIN_LINES + 20  # every line read again
        assert_oracle(conn, repaired, [coach])
        backfill.rebuild(engine, [coach])
        full = readings("full")
        rebuilt = compute_snapshot(readers, [CLIENTS], [coach], bases_of(wrong))
        assert readings("full") - full == 1
        assert_oracle(conn, rebuilt, [coach])


@pytest.mark.parametrize(
    "foreign",
    [
        lambda taken: SnapshotId("4000000000:4000000000:", taken.server),
        lambda taken: SnapshotId(taken.snapshot, "2000-01-01 00:00:00+00"),
    ],
    ids=["a later snapshot", "another server run"],
)
def test_a_base_from_another_database_or_run_is_not_used(
    readers: Engine, coach: UUID, foreign: Callable[[SnapshotId], SnapshotId]
) -> None:
    """Another database's snapshot (a restore, say) ahead of this one's; a snapshot of another
    run of the server (transaction IDs handed out again after a failover, a point-in-time
    recovery or a crash that lost commits): never compared with, read in full."""
    before = compute_snapshot(readers, [CLIENTS], [coach])
    value = before.values[CLIENTS.name][coach]
    bases = {CLIENTS.name: {coach: Base(value, before.at, foreign(before.taken))}}
    full = readings("full")
    compute_snapshot(readers, [CLIENTS], [coach], bases)
    assert readings("full") - full == 1


def test_the_clock_reads_a_begun_next_session_again(
    database_url: str, readers: Engine, coach: UUID
) -> None:
    """Every next session is 3 days ahead; at a clock 4 days on, every line's has begun: read
    again (none left), though no row changed."""
    before = compute_snapshot(readers, [CLIENTS], [coach])
    later = before.at + timedelta(days=4)
    lines = lines_read()
    after = compute_snapshot(readers, [CLIENTS], [coach], bases_of(before), as_of=later)
    assert lines_read() - lines == MIN_LINES + 20
    with psycopg.connect(database_url) as conn:
        assert_oracle(conn, after, [coach])
    assert {line["next_session_at"] for line in after.values[CLIENTS.name][coach]["clients"]} == {
        None
    }


def test_a_drain_starts_from_the_stored_value(
    database_url: str, readers: Engine, redis_client: RedisClient, coach: UUID
) -> None:
    """`recompute_due(..., incremental=True)`, as a drain runs it: the value stored with its
    snapshot is the base of the next recompute; what is stored is the oracle's."""
    store = AggregateStore(redis_client)
    recompute_due(readers, store, [(CLIENTS, [coach])])
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE goals SET progress = 90 WHERE client_id = %s", (first_client(conn, coach),)
        )
        conn.commit()
        served = readings("incremental")
        result = recompute_due(readers, store, [(CLIENTS, [coach])], incremental=True)
        assert (result.stored, readings("incremental") - served) == (1, 1)
        stored = store.versions_and_bases([], [(CLIENTS, [coach])])[1][CLIENTS.name][coach]
        expected = oracle.expected(read_back(conn), CLIENTS.name, coach, stored.as_of)
    assert stored.value == expected
    assert stored.value["clients"][0]["average_goal_progress"] == 90.0


def test_a_bulk_refresh_reads_in_full(readers: Engine, redis_client: RedisClient) -> None:
    """Without `incremental` no base is read (beat's refreshes re-base every value)."""
    store = AggregateStore(redis_client)
    coach = uuid.uuid4()
    recompute_due(readers, store, [(CLIENTS, [coach])])
    checked = readings("incremental") + readings("full")
    recompute_due(readers, store, [(CLIENTS, [coach])])
    assert readings("incremental") + readings("full") == checked


@pytest.fixture
def unstamped(fresh_database: str) -> Iterator[tuple[str, Engine, Engine, UUID]]:
    """A migrated database of its own with a coach (`seed_coach`): (url, writer, readers,
    coach). The tests take stamps away from it, as before migration 0005."""
    writer = make_engine(fresh_database)
    readers = make_engine(fresh_database, snapshots=True)
    try:
        upgrade(writer, "coachpipe")
        with psycopg.connect(fresh_database) as conn:
            coach = seed_coach(conn)
        yield fresh_database, writer, readers, coach
    finally:
        writer.dispose()
        readers.dispose()


def test_migration_0005_stamps_a_database_with_data(
    unstamped: tuple[str, Engine, Engine, UUID],
) -> None:
    """A database at 0004 with data (no stamps): upgrading adds them, rows keep NULL, and a
    value stored from before the migration never serves as a base; one stored after does."""
    url, writer, readers, coach = unstamped
    with psycopg.connect(url) as conn:
        for table in (*(t.name for t in summary_metadata.sorted_tables), "summary_state"):
            conn.execute(f"ALTER TABLE {SCHEMA}.{table} DROP COLUMN changed")
        conn.execute(f"UPDATE {VERSION_TABLE} SET version_num = '0004'")
        conn.commit()
    before = compute_snapshot(readers, [CLIENTS], [coach])
    upgrade(writer, "coachpipe")
    compute_snapshot(readers, [CLIENTS], [coach])  # the process sees the stamps
    with psycopg.connect(url) as conn:
        full = readings("full")
        after = compute_snapshot(readers, [CLIENTS], [coach], bases_of(before))
        assert readings("full") - full == 1
        conn.execute(
            "UPDATE goals SET progress = 70 WHERE client_id = %s", (first_client(conn, coach),)
        )
        conn.commit()
        served = readings("incremental")
        changed = compute_snapshot(readers, [CLIENTS], [coach], bases_of(after))
        assert readings("incremental") - served == 1
        assert_oracle(conn, changed, [coach])


def test_a_next_session_past_year_9999_is_read_again_not_fatal(
    database_url: str, readers: Engine, coach: UUID
) -> None:
    with psycopg.connect(database_url) as conn:
        client = first_client(conn, coach)
        conn.execute(
            "UPDATE sessions SET scheduled_at = '20260-01-01' WHERE client_id = %s"
            " AND status = 'scheduled'",
            (client,),
        )
        conn.commit()
        before = compute_snapshot(readers, [CLIENTS], [coach])
        assert before.values[CLIENTS.name][coach]["clients"][0]["next_session_at"].startswith(
            "20260-"
        )
        lines = lines_read()
        after = compute_snapshot(readers, [CLIENTS], [coach], bases_of(before))
        assert lines_read() - lines == 1
        assert after.values == before.values


def test_a_rebuild_after_writes_without_triggers_reads_the_roster_in_full(
    database_url: str, engine: Engine, readers: Engine, coach: UUID
) -> None:
    """Every client moved away with the triggers off (a restore with triggers disabled): the
    roster's row is wrong until the rebuild, which stamps it; then the value is read in full."""
    before = compute_snapshot(readers, [CLIENTS], [coach])
    with psycopg.connect(database_url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE users SET coach_id = NULL WHERE coach_id = %s", (coach,))
        conn.commit()
        backfill.rebuild(engine, [coach])
        full = readings("full")
        after = compute_snapshot(readers, [CLIENTS], [coach], bases_of(before))
        assert readings("full") - full == 1
        assert after.values[CLIENTS.name][coach] == {"total": 0, "clients": []}


def test_a_worker_before_migration_0005_reads_in_full(
    unstamped: tuple[str, Engine, Engine, UUID],
) -> None:
    """Deployed before `coachpipe migrate` (no stamps yet): no stamp check is sent, nothing
    fails."""
    url, _, readers, coach = unstamped
    with psycopg.connect(url) as conn:
        conn.execute(f"ALTER TABLE {SCHEMA}.summary_state DROP COLUMN changed")
        conn.commit()
    before = compute_snapshot(readers, [CLIENTS], [coach])
    checked = readings("incremental") + readings("full")
    again = compute_snapshot(readers, [CLIENTS], [coach], bases_of(before))
    assert readings("incremental") + readings("full") == checked
    assert again.values == before.values


def test_a_write_under_a_savepoint_is_read_again(
    database_url: str, readers: Engine, coach: UUID
) -> None:
    """A writer in flight when the base was taken, its summary rows written in a
    subtransaction: their stamp is the top-level transaction's, which the base's snapshot lists
    as in progress (a row's `xmin` would be the subtransaction's, which `pg_visible_in_snapshot`
    would call visible)."""
    with psycopg.connect(database_url) as writer, psycopg.connect(database_url) as conn:
        client = first_client(conn, coach)
        writer.execute("UPDATE users SET updated_at = now() WHERE id = %s", (coach,))  # an xid
        with writer.transaction():  # SAVEPOINT
            writer.execute(
                "INSERT INTO sessions (coach_id, client_id, status, scheduled_at, completed_at)"
                " VALUES (%s, %s, 'completed', now(), now())",
                (coach, client),
            )
        before = compute_snapshot(readers, [CLIENTS], [coach])
        writer.commit()
        after = compute_snapshot(readers, [CLIENTS], [coach], bases_of(before))
        assert before.values[CLIENTS.name][coach]["clients"][0]["completed_sessions"] == 3
        assert after.values[CLIENTS.name][coach]["clients"][0]["completed_sessions"] == 4
        assert_oracle(conn, after, [coach])


def test_a_crash_recovery_is_another_server_run(
    database_url: str, readers: Engine, coach: UUID
) -> None:
    """Crash recovery after a backend's crash keeps the postmaster (its start time) but resets
    the shared statistics, as `pg_stat_reset_shared` does: the run changes, bases taken before
    are read in full."""
    before = compute_snapshot(readers, [CLIENTS], [coach])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_reset_shared('bgwriter')")
    full = readings("full")
    after = compute_snapshot(readers, [CLIENTS], [coach], bases_of(before))
    assert after.taken.server != before.taken.server
    assert readings("full") - full == 1


def test_a_value_an_earlier_release_rewrote_is_no_base(
    readers: Engine, redis_client: RedisClient, coach: UUID
) -> None:
    """A worker of an earlier release writes the value's fields but not the snapshot: the one
    left there names another version, so it is never taken for this value's."""
    store = AggregateStore(redis_client)
    recompute_due(readers, store, [(CLIENTS, [coach])])
    assert store.versions_and_bases([], [(CLIENTS, [coach])])[1]
    key = keys.aggregate(CLIENTS.name, coach)
    redis_client.hset(key, mapping={"version": 99, "value": b'{"total": 0, "clients": []}'})
    assert store.versions_and_bases([], [(CLIENTS, [coach])])[1] == {}
