"""The traffic writer (`coachpipe.traffic`) reports what each change really did: the bench
judges freshness per change from `Change.coaches`, so a change that names a coach it did not
touch, or a statement that touched nothing, would count as a change the pipeline never
answered (the steady bench's `missing` and ~20 s maxima came from such changes)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import psycopg
from psycopg.rows import TupleRow

from coachpipe.traffic import ChangeWriter
from pipeline import seed
from pipeline.tables import WATCHED_TABLES

PLAN = seed.SeedPlan(coaches=2, clients_per_coach=4, anchor=datetime(2026, 6, 1, tzinfo=UTC))

Rows = dict[tuple[str, UUID], tuple[str, UUID | None]]
"""(table, row id) → (row as text, its coach id)"""


def rows(conn: psycopg.Connection[TupleRow]) -> Rows:
    found: Rows = {}
    for table in WATCHED_TABLES:
        for row_id, text, coach in conn.execute(
            f"SELECT t.id, row_to_json(t)::text, t.coach_id FROM {table} t"
        ):
            found[(table, row_id)] = (text, coach)
    return found


def coaches_touched(before: Rows, after: Rows) -> set[UUID | None]:
    """The coach ids of every row inserted, deleted or changed (old and new row)."""
    touched: set[UUID | None] = set()
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old != new:
            touched.update(row[1] for row in (old, new) if row is not None)
    return touched


def test_a_change_names_the_coaches_its_statement_touched(database_url: str) -> None:
    seed.load(database_url, PLAN)
    with (
        psycopg.connect(database_url, autocommit=True) as conn,
        psycopg.connect(database_url, autocommit=True) as other,
    ):
        first, second = (
            row[0] for row in conn.execute("SELECT id FROM users WHERE role = 'coach' ORDER BY id")
        )
        writer = ChangeWriter(conn, [first, second], seed=3)
        # Another writer, behind this one's back: every scheduled session of `first` moves to
        # `second`, and every cancelled one of `first` is deleted.
        other.execute(
            "UPDATE sessions SET coach_id = %s WHERE coach_id = %s AND status = 'scheduled'",
            (second, first),
        )
        other.execute(
            "DELETE FROM sessions s WHERE coach_id = %s AND status = 'cancelled'"
            " AND NOT EXISTS (SELECT 1 FROM session_ratings r WHERE r.session_id = s.id)"
            " AND NOT EXISTS (SELECT 1 FROM session_feedback f WHERE f.session_id = s.id)",
            (first,),
        )
        for _ in range(150):
            before = rows(conn)
            change = writer.write(first)
            touched = coaches_touched(before, rows(conn))
            assert touched, f"{change.kind} changed no row"
            assert set(change.coaches) == touched, change.kind


def test_a_change_is_bracketed_by_the_servers_clocks(database_url: str) -> None:
    """With `track_commit_timestamp` on (the tests' and the bench's Postgres) and
    `server_clock` asked for (the bench), a change's bracket is the commit timestamp Postgres
    recorded and the server clock of a SELECT sent with the COMMIT, not the writer's wall
    clock: in the whale bench, brackets
    taken by a writer thread of a busy bench process were 20-360 ms wide, a drain's snapshot
    inside one could not be told to include the change, and the change was judged answered
    only by its coach's next write, 30-54 s later, though the pipeline had stored it within
    milliseconds."""
    seed.load(database_url, PLAN)
    with psycopg.connect(database_url, autocommit=True) as conn:
        coaches = [row[0] for row in conn.execute("SELECT id FROM users WHERE role = 'coach'")]
        writer = ChangeWriter(conn, coaches, seed=3, server_clock=True)
        assert writer.commit_timestamps
        for _ in range(20):
            change = writer.write()
            found = conn.execute(
                "SELECT extract(epoch FROM pg_xact_commit_timestamp("
                "(%s::numeric %% 4294967296)::text::xid)) * 1000",
                (writer.last_xid,),
            ).fetchone()
            assert found is not None
            assert change.sent_ms == float(found[0]), "the commit timestamp of its transaction"
            assert change.sent_ms <= change.commit_ms
        assert not ChangeWriter(conn, coaches).commit_timestamps, "the CLI's: one statement"
