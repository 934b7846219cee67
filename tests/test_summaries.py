"""Summary tables (issue 18): exact after any change sequence, rebuilt by the backfill, safe
to build beside live writes, out of every publication."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from devtools.processes import wait_for
from pipeline import backfill, seed
from pipeline.aggregates import REGISTRY
from pipeline.aggregates.base import compute_all
from pipeline.db import make_engine
from pipeline.migrate import VERSION_TABLE, upgrade
from pipeline.summaries import SCHEMA, SUMMARIES
from pipeline.tables import WATCHED_TABLES
from tests import oracle
from tests.conftest import reset_database
from tests.datasets import datasets, insert, read_back
from tests.test_cli import coachpipe

DAY = timedelta(days=1)
STATUSES = ["scheduled", "completed", "cancelled", "no_show"]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def assert_equals_oracle(
    engine: Engine, conn: psycopg.Connection[Any], as_of: datetime, *, summaries: bool | None
) -> None:
    data = read_back(conn)
    coaches = [u["id"] for u in data.users if u["role"] == "coach"]
    with engine.connect() as connection:
        values = compute_all(connection, REGISTRY, coaches, as_of, summaries_ready=summaries)
    for aggregate in REGISTRY:
        for coach in coaches:
            expected = oracle.expected(data, aggregate.name, coach, as_of)
            assert values[aggregate.name][coach] == expected, (aggregate.name, coach)


def summary_rows(conn: psycopg.Connection[Any]) -> dict[str, set[tuple[Any, ...]]]:
    """Every summary's rows, without the rows whose sums are all zero (they read as none), nor
    the clock-relative columns (read at a writer's `now()`: a rebuild reads them again later)."""
    rows = {}
    for summary in SUMMARIES:
        keys = len(summary.keys)
        latest = summary.latest
        clocked = (latest.column, latest.checked_at) if latest and latest.checked_at else ()
        left_out = {*clocked, "changed"}  # a stamp: the writer's transaction, not a sum
        columns = ", ".join(c.name for c in summary.table.columns if c.name not in left_out)
        found = conn.execute(f"SELECT {columns} FROM {SCHEMA}.{summary.table.name}").fetchall()
        rows[summary.table.name] = {row for row in found if any(row[keys:])}
    return rows


# One change: (kind, which existing row, a moment offset in hours, a small number).
CHANGES = st.tuples(
    st.sampled_from(
        [
            "insert_session",
            "flip_session",
            "move_session_time",
            "reassign_session",
            "delete_session",
            "insert_rating",
            "reassign_rating",
            "delete_rating",
            "insert_feedback",
            "delete_feedback",
            "update_goal",
            "reassign_goal",
            "update_client",
            "reassign_client",
            "delete_client",
            "move_clock",
        ]
    ),
    st.integers(0, 1000),
    st.integers(-62 * 24, 40 * 24),
    st.integers(0, 100),
)


def apply(
    conn: psycopg.Connection[Any], change: tuple[str, int, int, int], as_of: datetime
) -> datetime:
    """Apply one change in its own transaction; returns the (possibly moved) clock."""
    kind, pick, hours, small = change
    moment = as_of + timedelta(hours=hours, microseconds=small)

    def one(table: str, where: str = "true") -> Any:
        ids = [r[0] for r in conn.execute(f"SELECT id FROM {table} WHERE {where} ORDER BY id")]
        return ids[pick % len(ids)] if ids else None

    coaches = [r[0] for r in conn.execute("SELECT id FROM users WHERE role = 'coach' ORDER BY id")]
    coach = coaches[pick % len(coaches)]
    if kind == "move_clock":
        return as_of + timedelta(hours=hours % 24 * 7 + 1, microseconds=small)
    if kind == "insert_session":
        client = one("users", "role = 'client'")
        if client is not None:
            status = STATUSES[small % 4]
            conn.execute(
                "INSERT INTO sessions (coach_id, client_id, status, scheduled_at, completed_at,"
                " duration_minutes, price_cents) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    coach,
                    client,
                    status,
                    moment,
                    moment + timedelta(hours=1) if status == "completed" else None,
                    small,
                    None if small % 5 == 0 else small * 100,
                ),
            )
    elif kind == "flip_session":
        conn.execute(
            "UPDATE sessions SET status = %s, completed_at = coalesce(completed_at, %s)"
            " WHERE id = %s",
            (STATUSES[small % 4], moment, one("sessions")),
        )
    elif kind == "move_session_time":
        conn.execute(
            "UPDATE sessions SET scheduled_at = %s, completed_at = %s, price_cents = %s"
            " WHERE id = %s",
            (moment, moment if small % 3 else None, small, one("sessions")),
        )
    elif kind in {"reassign_session", "reassign_rating", "reassign_goal"}:
        table = {"reassign_session": "sessions", "reassign_rating": "session_ratings"}.get(
            kind, "goals"
        )
        conn.execute(f"UPDATE {table} SET coach_id = %s WHERE id = %s", (coach, one(table)))
    elif kind.startswith("delete_") and kind != "delete_client":
        table = {"delete_session": "sessions", "delete_rating": "session_ratings"}.get(
            kind, "session_feedback"
        )
        conn.execute(f"DELETE FROM {table} WHERE id = %s", (one(table),))
    elif kind in {"insert_rating", "insert_feedback"}:
        session = one("sessions")
        if session is not None:
            table, column, value = (
                ("session_ratings", "rating", 1 + small % 5)
                if kind == "insert_rating"
                else ("session_feedback", "comment", f"note {small}")
            )
            conn.execute(
                f"INSERT INTO {table} (session_id, coach_id, client_id, {column}, created_at)"
                " SELECT id, coach_id, client_id, %s, %s FROM sessions WHERE id = %s",
                (value, moment, session),
            )
    elif kind == "update_goal":
        conn.execute(
            "UPDATE goals SET status = %s, progress = %s WHERE id = %s",
            (["active", "completed", "abandoned"][small % 3], small, one("goals")),
        )
    elif kind == "update_client":
        conn.execute(
            "UPDATE users SET status = %s, full_name = %s WHERE id = %s",
            (
                ["active", "paused", "archived"][small % 3],
                f"C{small}",
                one("users", "role = 'client'"),
            ),
        )
    elif kind == "reassign_client":
        target = None if small % 4 == 0 else coach
        conn.execute(
            "UPDATE users SET coach_id = %s WHERE id = %s",
            (target, one("users", "role = 'client'")),
        )
    else:  # delete_client: its sessions, ratings, feedback and goals go with it
        conn.execute("DELETE FROM users WHERE id = %s", (one("users", "role = 'client'"),))
    conn.commit()
    return as_of


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=datasets(max_rows=10), changes=st.lists(CHANGES, min_size=1, max_size=10))
def test_summaries_stay_exact_through_any_change_sequence(
    database_url: str, engine: Engine, drawn: Any, changes: list[tuple[str, int, int, int]]
) -> None:
    """After every change (and clock move) the summary-based SQL equals the oracle, and the
    summaries equal a rebuild from scratch."""
    as_of, data, _ = drawn
    reset_database(database_url)
    with psycopg.connect(database_url) as conn:
        insert(conn, data)
        conn.commit()
        for change in changes:
            as_of = apply(conn, change, as_of)
            assert_equals_oracle(engine, conn, as_of, summaries=True)
        kept = summary_rows(conn)
        conn.commit()
        backfill.rebuild(engine, backfill.every_coach(engine))
        assert summary_rows(conn) == kept


def seed_without_triggers(database_url: str, data: oracle.Dataset) -> None:
    """Rows that existed before the summaries did: written with triggers off (replica role)."""
    with psycopg.connect(database_url) as conn:
        conn.execute("SET session_replication_role = replica")
        insert(conn, data)
        conn.execute(f"UPDATE {SCHEMA}.summary_state SET ready = false")
        conn.commit()


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=datasets(max_rows=14))
def test_backfill_fills_summaries_of_existing_rows(
    database_url: str, engine: Engine, drawn: Any
) -> None:
    as_of, data, _ = drawn
    reset_database(database_url)
    seed_without_triggers(database_url, data)
    assert not backfill.is_ready(engine)
    with psycopg.connect(database_url) as conn:
        assert_equals_oracle(engine, conn, as_of, summaries=None)  # the scan statements
        backfill.backfill(engine, batch_size=2)
        assert backfill.is_ready(engine)
        assert_equals_oracle(engine, conn, as_of, summaries=None)  # now the summaries
        kept = summary_rows(conn)
        conn.commit()
        backfill.backfill(engine, batch_size=1)  # idempotent
        assert summary_rows(conn) == kept


def two_coaches(database_url: str) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Two coaches and four clients, two each (client i belongs to coach i % 2)."""
    coaches = [uuid.uuid4(), uuid.uuid4()]
    clients = [uuid.uuid4() for _ in range(4)]
    with psycopg.connect(database_url) as conn:
        for coach in coaches:
            conn.execute(
                "INSERT INTO users (id, role, full_name) VALUES (%s, 'coach', 'C')", (coach,)
            )
        for i, client in enumerate(clients):
            conn.execute(
                "INSERT INTO users (id, role, coach_id, full_name) VALUES (%s, 'client', %s, 'x')",
                (client, coaches[i % 2]),
            )
    return coaches, clients


def beside_writers(
    database_url: str,
    step: Callable[[psycopg.Connection[Any], int], None],
    work: Callable[[], None],
    writers: int = 2,
) -> None:
    """Run `work()` while `writers` threads each call `step(conn, i)` for i = 1, 2, … on an
    autocommit connection of their own; a writer's error fails the test."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                i = 0
                while not stop.is_set():
                    i += 1
                    step(conn, i)
        except BaseException as error:  # reported by the test, not swallowed
            errors.append(error)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    try:
        work()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []


def test_backfill_beside_live_writes_loses_no_delta(database_url: str, engine: Engine) -> None:
    """Writers keep inserting, flipping and moving sessions between two coaches while the
    backfill rebuilds them again and again; at the end the sums are exact."""
    coaches, clients = two_coaches(database_url)
    now = datetime.now().astimezone()

    def step(conn: psycopg.Connection[Any], i: int) -> None:
        conn.execute(
            "INSERT INTO sessions (coach_id, client_id, status, scheduled_at,"
            " completed_at, price_cents) VALUES (%s, %s, %s, %s, %s, %s)",
            (
                coaches[i % 2],
                clients[i % 4],
                STATUSES[i % 4],
                now - (i % 50) * DAY,
                now - (i % 40) * DAY,
                i,
            ),
        )
        # Two coaches in one transaction, in either order: two such writers can
        # deadlock on the coaches' summary rows (README, "Write cost"); Postgres
        # aborts one, which retries like an application would.
        with contextlib.suppress(psycopg.errors.DeadlockDetected), conn.transaction():
            conn.execute(
                "UPDATE sessions SET coach_id = %s, status = %s"
                " WHERE id = (SELECT id FROM sessions ORDER BY random() LIMIT 1)",
                (coaches[i % 2], STATUSES[(i + 1) % 4]),
            )
            conn.execute(
                "DELETE FROM sessions"
                " WHERE id = (SELECT id FROM sessions ORDER BY random() LIMIT 1)"
                " AND %s",
                (i % 3 == 0,),
            )

    def rebuild() -> None:
        for _ in range(15):
            backfill.rebuild(engine, coaches)

    beside_writers(database_url, step, rebuild)
    with psycopg.connect(database_url) as conn:
        assert_equals_oracle(engine, conn, now, summaries=True)


def database_now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


NOT_AS_READ = """
SELECT s.coach_id, s.client_id, s.next_scheduled_at, (
    SELECT min(scheduled_at) FROM public.sessions
    WHERE coach_id = s.coach_id AND client_id = s.client_id AND status = 'scheduled'
      AND scheduled_at > s.next_checked_at)
FROM coachpipe.client_schedules AS s
WHERE s.next_scheduled_at IS DISTINCT FROM (
    SELECT min(scheduled_at) FROM public.sessions
    WHERE coach_id = s.coach_id AND client_id = s.client_id AND status = 'scheduled'
      AND scheduled_at > s.next_checked_at)
"""
"""The rows whose next session is not the earliest scheduled one after the moment it was read."""


def test_a_next_session_that_has_begun_is_probed_until_advanced(
    database_url: str, engine: Engine
) -> None:
    """The summary's next session is taken while it is ahead of the clock; once the session
    has begun each recompute probes that client (right, if slower), until `advance` reads it
    again; a recompute at a clock before the summary was read probes too."""
    coach, client, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, role, full_name) VALUES (%s, 'coach', 'C')", (coach,))
        for someone in (client, other):
            conn.execute(
                "INSERT INTO users (id, role, coach_id, full_name) VALUES (%s, 'client', %s, 'x')",
                (someone, coach),
            )
        soon = database_now(conn) + timedelta(milliseconds=300)
        later = soon + timedelta(hours=1)
        for at in (soon, later, soon - DAY):  # and one left scheduled in the past
            conn.execute(
                "INSERT INTO sessions (coach_id, client_id, status, scheduled_at)"
                " VALUES (%s, %s, 'scheduled', %s)",
                (coach, client, at),
            )
        row = conn.execute(
            "SELECT next_scheduled_at, next_checked_at FROM coachpipe.client_schedules"
            " WHERE client_id = %s",
            (client,),
        ).fetchone()
        assert row is not None and row[0] == soon and row[1] < soon
        assert_equals_oracle(engine, conn, database_now(conn), summaries=True)  # read as kept
        assert_equals_oracle(engine, conn, soon - 2 * DAY, summaries=True)  # before it was read
        wait_for(lambda: database_now(conn) > soon, 10, interval=0.05, message="soon to begin")
        assert_equals_oracle(engine, conn, database_now(conn), summaries=True)  # probed
        assert backfill.advance(engine, batch_size=10) == 1
        assert backfill.advance(engine, batch_size=10) == 0
        row = conn.execute(
            "SELECT next_scheduled_at FROM coachpipe.client_schedules WHERE client_id = %s",
            (client,),
        ).fetchone()
        assert row == (later,)
        assert_equals_oracle(engine, conn, database_now(conn), summaries=True)
        assert conn.execute(NOT_AS_READ).fetchall() == []


def test_advance_skips_a_coach_a_writer_holds_and_never_waits(
    database_url: str, engine: Engine
) -> None:
    """A writer holds the coach's anchor (a long transaction, an import): `advance` leaves the
    coach for its next call instead of waiting, so it never stalls a writer behind it nor
    meets one in a deadlock; once the writer commits, the coach is advanced."""
    coach, client = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, role, full_name) VALUES (%s, 'coach', 'C')", (coach,))
        conn.execute(
            "INSERT INTO users (id, role, coach_id, full_name) VALUES (%s, 'client', %s, 'x')",
            (client, coach),
        )
        conn.execute(
            "INSERT INTO sessions (coach_id, client_id, status, scheduled_at)"
            " VALUES (%s, %s, 'scheduled', now() + interval '1 day')",
            (coach, client),
        )
        conn.execute(  # its next session has begun (as the clock would make it)
            "UPDATE coachpipe.client_schedules SET next_scheduled_at = now() - interval '1 hour'"
        )
    with psycopg.connect(database_url) as writer:
        writer.execute(
            "INSERT INTO sessions (coach_id, client_id, status, scheduled_at)"
            " VALUES (%s, %s, 'completed', now() - interval '1 day')",
            (coach, client),
        )
        assert backfill.advance(engine) == 0  # skipped, not waited for
        writer.commit()
    assert backfill.advance(engine) == 1


def test_migration_0004_fills_client_schedules_of_a_database_with_data(
    fresh_database: str,
) -> None:
    """A database at 0003 with sessions, an empty `client_schedules` (or rows a downgrade left
    behind): upgrading fills it from the sessions, leaves the summaries ready, and the
    aggregates equal the oracle."""
    engine = make_engine(fresh_database)
    try:
        upgrade(engine, "coachpipe")
        seed.load(
            fresh_database, seed.SeedPlan(coaches=3, clients_per_coach=4, sessions_per_client=6)
        )
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            expected = summary_rows(conn)["client_schedules"]
            assert expected
            conn.execute("TRUNCATE coachpipe.client_schedules")
            conn.execute(  # left behind: a next session that no longer exists
                "INSERT INTO coachpipe.client_schedules (coach_id, client_id, scheduled,"
                " next_scheduled_at, next_checked_at) SELECT coach_id, id, 1,"
                " now() + interval '1 day', now() - interval '1 day' FROM users"
                " WHERE role = 'client' LIMIT 1"
            )
            conn.execute(f"UPDATE {VERSION_TABLE} SET version_num = '0003'")
        upgrade(engine, "coachpipe")
        assert backfill.is_ready(engine)
        with psycopg.connect(fresh_database) as conn:
            assert summary_rows(conn)["client_schedules"] == expected
            assert conn.execute(NOT_AS_READ).fetchall() == []
            assert_equals_oracle(engine, conn, database_now(conn), summaries=True)
    finally:
        engine.dispose()


def test_advance_beside_live_writes_keeps_every_next_session(
    database_url: str, engine: Engine
) -> None:
    """Writers book, flip and move sessions a few seconds around the clock (so next sessions
    keep beginning) while `advance` runs again and again: every kept next session is the
    earliest after the moment it was read, and recomputes equal the oracle."""
    coaches, clients = two_coaches(database_url)

    def step(conn: psycopg.Connection[Any], i: int) -> None:
        conn.execute(
            "INSERT INTO sessions (coach_id, client_id, status, scheduled_at)"
            " VALUES (%s, %s, 'scheduled', clock_timestamp() + %s)",
            (coaches[i % 2], clients[i % 4], timedelta(milliseconds=i % 7 * 150)),
        )
        conn.execute(
            "UPDATE sessions SET status = %s, scheduled_at = clock_timestamp() + %s"
            " WHERE id = (SELECT id FROM sessions ORDER BY random() LIMIT 1)",
            (STATUSES[i % 4], timedelta(milliseconds=i % 5 * 200)),
        )

    advanced = 0

    def advance() -> None:
        """At least 40 runs, and on until one has advanced a row (next sessions begin a few
        hundred ms after they are booked; on a fast machine 40 runs can all come first)."""
        nonlocal advanced
        runs, deadline = 0, time.monotonic() + 60
        while runs < 40 or (advanced == 0 and time.monotonic() < deadline):
            advanced += backfill.advance(engine, batch_size=1)
            runs += 1

    beside_writers(database_url, step, advance)
    assert advanced > 0
    with psycopg.connect(database_url) as conn:
        assert conn.execute(NOT_AS_READ).fetchall() == []
        assert_equals_oracle(engine, conn, database_now(conn), summaries=True)


def test_summaries_are_in_no_publication_and_truncate_empties_them(
    database_url: str, engine: Engine
) -> None:
    coach = uuid.uuid4()
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO users (id, role, full_name) VALUES (%s, 'coach', 'C')", (coach,))
        conn.execute(
            "INSERT INTO users (role, coach_id, full_name) VALUES ('client', %s, 'x')", (coach,)
        )
        conn.commit()
        published = {row[0] for row in conn.execute("SELECT schemaname FROM pg_publication_tables")}
        assert published == {"public"}
        assert conn.execute(f"SELECT total FROM {SCHEMA}.client_counts").fetchall() == [(1,)]
        conn.execute(f"TRUNCATE {', '.join(WATCHED_TABLES)} CASCADE")
        conn.commit()
        assert summary_rows(conn) == {summary.table.name: set() for summary in SUMMARIES}
    assert backfill.is_ready(engine)


def test_backfill_and_refresh_rebuild_from_the_command_line(
    service_env: dict[str, str], database_url: str, engine: Engine
) -> None:
    """Issue 18's backfill command: rows from before the summaries, filled with a progress
    bar; `migrate` says what is missing; `refresh --rebuild-summaries` rebuilds one coach."""
    as_of = datetime.now().astimezone()
    data = oracle.Dataset()
    coach, client = uuid.uuid4(), uuid.uuid4()
    for user_id, role, coach_id in ((coach, "coach", None), (client, "client", coach)):
        data.users.append(
            {
                "id": user_id,
                "role": role,
                "coach_id": coach_id,
                "full_name": "A",
                "status": "active",
            }
        )
    seed_without_triggers(database_url, data)
    migrated = coachpipe(service_env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "coachpipe backfill" in migrated.stdout
    filled = coachpipe(service_env, "backfill", "--batch-size", "1")
    assert filled.returncode == 0, filled.stderr
    assert "summaries rebuilt for 1 coaches" in filled.stdout
    assert backfill.is_ready(engine)
    with psycopg.connect(database_url) as conn:
        assert_equals_oracle(engine, conn, as_of, summaries=True)
        conn.execute(f"UPDATE {SCHEMA}.client_counts SET total = 7")  # damaged by hand
        conn.commit()
        rebuilt = coachpipe(service_env, "refresh", "--coach", str(coach), "--rebuild-summaries")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert_equals_oracle(engine, conn, as_of, summaries=True)
