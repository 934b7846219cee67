"""Migrations: idempotent, matching pipeline.tables, replication-ready, Supabase-friendly."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from sqlalchemy import inspect

from pipeline import seed
from pipeline.changelog import SIGNAL_TABLE
from pipeline.db import make_engine
from pipeline.migrate import (
    CONCURRENT_INDEXES,
    RETIRED_INDEXES,
    UNINDEXED_FOREIGN_KEYS,
    current_revision,
    foreign_key_index_name,
    upgrade,
)
from pipeline.tables import WATCHED_TABLES, metadata


def test_migrate_twice_is_a_no_op(fresh_database: str) -> None:
    engine = make_engine(fresh_database)
    first = upgrade(engine, "coachpipe")
    assert len(first) == 2 * len(WATCHED_TABLES) + 1  # Realtime also carries the signal table
    assert upgrade(engine, "coachpipe") == []
    assert current_revision(engine) == "0005"
    engine.dispose()


def test_migrated_schema_matches_the_table_definitions(fresh_database: str) -> None:
    engine = make_engine(fresh_database)
    upgrade(engine, "coachpipe")
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name, schema="public")}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, (table.name, column.name)
    engine.dispose()


def test_tables_are_ready_for_replication(fresh_database: str) -> None:
    engine = make_engine(fresh_database)
    upgrade(engine, "coachpipe")
    engine.dispose()
    with psycopg.connect(fresh_database) as conn:
        identities = dict(
            conn.execute(
                "SELECT relname, relreplident FROM pg_class WHERE relname = ANY(%s)",
                (list(WATCHED_TABLES),),
            ).fetchall()
        )
        assert identities == dict.fromkeys(WATCHED_TABLES, "f")
        for publication in ("coachpipe", "supabase_realtime"):
            members = {
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
                )
            }
            extra = {SIGNAL_TABLE} if publication == "supabase_realtime" else set()
            assert members == set(WATCHED_TABLES) | extra, publication


def test_migrate_adopts_existing_tables_and_a_partial_publication(fresh_database: str) -> None:
    """A Supabase project often has the tables already and its own publication."""
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.users (id uuid PRIMARY KEY, role text NOT NULL, coach_id uuid,"
            " full_name text NOT NULL, email text, status text NOT NULL DEFAULT 'active',"
            " created_at timestamptz NOT NULL DEFAULT now(),"
            " updated_at timestamptz NOT NULL DEFAULT now(), avatar_url text)"
        )
        conn.execute("CREATE PUBLICATION supabase_realtime FOR TABLE public.users")
    engine = make_engine(fresh_database)
    added = upgrade(engine, "coachpipe")
    engine.dispose()
    assert "supabase_realtime.users" not in added
    assert "supabase_realtime.sessions" in added


def test_updated_at_moves_on_every_update(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        user = uuid.uuid4()
        conn.execute(
            "INSERT INTO users (id, role, full_name, updated_at) "
            "VALUES (%s, 'coach', 'A', '2020-01-01')",
            (user,),
        )
        conn.execute("UPDATE users SET full_name = 'B' WHERE id = %s", (user,))
        (moved,) = conn.execute(
            "SELECT updated_at > '2021-01-01' FROM users WHERE id = %s", (user,)
        ).fetchone()
        assert moved


def test_migrate_replaces_a_retired_index_concurrently(fresh_database: str) -> None:
    """A database migrated by an earlier version has `sessions_coach_completed_idx`; migrate
    builds its successor (covering client_id, for coach-trends' retention) and then drops it."""
    engine = make_engine(fresh_database)
    upgrade(engine, "coachpipe")
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(f"DROP INDEX public.{next(iter(CONCURRENT_INDEXES))}")
        conn.execute(
            "CREATE INDEX sessions_coach_completed_idx ON public.sessions (coach_id, completed_at)"
            " INCLUDE (price_cents) WHERE status = 'completed'"
        )
    upgrade(engine, "coachpipe")
    engine.dispose()
    with psycopg.connect(fresh_database) as conn:
        valid = dict(
            conn.execute(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c"
                " ON c.oid = i.indexrelid WHERE c.relnamespace = 'public'::regnamespace"
            ).fetchall()
        )
    assert all(valid.get(name) for name in CONCURRENT_INDEXES)
    assert not set(RETIRED_INDEXES) & set(valid)


REFERENCING = ("sessions", "session_ratings", "session_feedback", "goals", "users")


def _seq_scans_of_a_delete(
    conn: psycopg.Connection[Any], table: str, row: object
) -> dict[str, int]:
    """Sequential scans of the referencing tables while deleting `row` of `table` (its foreign
    keys' cascades included), from this backend's pending statistics before and after;
    rolled back. Without sequential scans where an index serves (the tables are small here), a
    scan is the lack of an index, not the planner's choice."""
    count = (
        "SELECT relname, seq_scan FROM pg_stat_xact_user_tables"
        " WHERE schemaname = 'public' AND relname = ANY(%s)"
    )
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL enable_seqscan = off")
        before = dict(conn.execute(count, (list(REFERENCING),)).fetchall())
        conn.execute(f"DELETE FROM {table} WHERE id = %s", (row,))
        after = dict(conn.execute(count, (list(REFERENCING),)).fetchall())
    return {
        name: scans - before.get(name, 0)
        for name, scans in after.items()
        if scans != before.get(name, 0)
    }


def test_every_foreign_key_is_indexed_so_a_delete_scans_no_table(fresh_database: str) -> None:
    """Postgres indexes only the referenced side of a foreign key. Before `migrate` indexed the
    referencing columns, deleting one session read all of `session_ratings` and
    `session_feedback` (37 ms p50 on 1.1M sessions), and deleting one client all of
    `sessions`, `goals` and both (18.9 s for a client of the 1M-session whale bench coach).
    An index left INVALID by an interrupted build does not count, and migrate rebuilds it."""
    engine = make_engine(fresh_database)
    upgrade(engine, "coachpipe")
    engine.dispose()
    seed.load(
        fresh_database, seed.SeedPlan(coaches=20, clients_per_coach=20, sessions_per_client=10)
    )
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("ANALYZE")
        assert conn.execute(UNINDEXED_FOREIGN_KEYS, {"tables": list(REFERENCING)}).fetchall() == []
        session, client = conn.execute(
            "SELECT r.session_id, r.client_id FROM session_ratings r"
            " JOIN session_feedback f USING (session_id) LIMIT 1"
        ).fetchone() or (None, None)
        assert session is not None
        coach = conn.execute("SELECT id FROM users WHERE role = 'coach' LIMIT 1").fetchone()
        assert _seq_scans_of_a_delete(conn, "sessions", session) == {}
        assert _seq_scans_of_a_delete(conn, "users", client) == {}
        assert _seq_scans_of_a_delete(conn, "users", coach and coach[0]) == {}
        conn.execute("DROP INDEX public.session_ratings_session_id_fkey_idx")
        missing = [
            ("public.session_ratings", "session_ratings_session_id_fkey", "session_id", False)
        ]
        assert (
            conn.execute(UNINDEXED_FOREIGN_KEYS, {"tables": list(REFERENCING)}).fetchall()
            == missing
        )
        assert _seq_scans_of_a_delete(conn, "sessions", session) == {"session_ratings": 1}
        # As an interrupted CREATE INDEX CONCURRENTLY leaves it.
        conn.execute(
            "CREATE INDEX session_ratings_session_id_fkey_idx ON session_ratings (session_id)"
        )
        conn.execute(
            "UPDATE pg_index SET indisvalid = false"
            " WHERE indexrelid = 'public.session_ratings_session_id_fkey_idx'::regclass"
        )
        assert (
            conn.execute(UNINDEXED_FOREIGN_KEYS, {"tables": list(REFERENCING)}).fetchall()
            == missing
        )
    engine = make_engine(fresh_database)
    upgrade(engine, "coachpipe")
    engine.dispose()
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        assert conn.execute(UNINDEXED_FOREIGN_KEYS, {"tables": list(REFERENCING)}).fetchall() == []
        assert _seq_scans_of_a_delete(conn, "sessions", session) == {}


def test_migrate_adds_no_foreign_key_index_where_one_serves(fresh_database: str) -> None:
    """Adopted tables that already index a foreign key (under another name, with the columns
    of a composite key in another order) get no second index."""
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.users (id uuid PRIMARY KEY, role text NOT NULL, coach_id uuid"
            " REFERENCES public.users (id) ON DELETE SET NULL, full_name text NOT NULL,"
            " email text, status text NOT NULL DEFAULT 'active',"
            " created_at timestamptz NOT NULL DEFAULT now(),"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("CREATE INDEX my_users_by_coach ON public.users (coach_id, full_name)")
    engine = make_engine(fresh_database)
    upgrade(engine, "coachpipe")
    engine.dispose()
    with psycopg.connect(fresh_database) as conn:
        on_coach = conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'public.users'::regclass AND i.indkey[0] = ("
            " SELECT attnum FROM pg_attribute WHERE attrelid = 'public.users'::regclass"
            " AND attname = 'coach_id') AND i.indpred IS NULL"
        ).fetchall()
        assert on_coach == [("my_users_by_coach",)]
        assert conn.execute(UNINDEXED_FOREIGN_KEYS, {"tables": list(REFERENCING)}).fetchall() == []


def test_migrate_drops_no_valid_index_that_holds_the_name_it_would_use(
    fresh_database: str,
) -> None:
    """An index of the name `migrate` would give a foreign key's index that is valid but does
    not serve the key (a user's partial one) is not `migrate`'s to drop: it stays, the key
    stays unindexed (what `coachpipe doctor` warns of), and migrate goes on. It used to be
    dropped and replaced at every run."""
    engine = make_engine(fresh_database)
    upgrade(engine, "coachpipe")
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("DROP INDEX public.session_ratings_session_id_fkey_idx")
        conn.execute(
            "CREATE INDEX session_ratings_session_id_fkey_idx ON session_ratings (session_id)"
            " WHERE rating = 5"
        )
    upgrade(engine, "coachpipe")
    engine.dispose()
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        predicate = conn.execute(
            "SELECT pg_get_expr(indpred, indrelid) FROM pg_index"
            " WHERE indexrelid = 'public.session_ratings_session_id_fkey_idx'::regclass"
        ).fetchone()
        assert predicate == ("(rating = 5)",)
        assert conn.execute(UNINDEXED_FOREIGN_KEYS, {"tables": list(REFERENCING)}).fetchall() == [
            ("public.session_ratings", "session_ratings_session_id_fkey", "session_id", False)
        ]


def test_a_foreign_key_index_name_fits_postgres_whole_characters_and_all() -> None:
    assert foreign_key_index_name("a" * 70) == "a" * 59 + "_idx"
    name = foreign_key_index_name("é" * 40)  # two bytes each: cut between characters
    assert len(name.encode()) <= 63 and name == "é" * 29 + "_idx"
