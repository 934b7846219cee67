"""Migrations: idempotent, matching pipeline.tables, replication-ready, Supabase-friendly."""

from __future__ import annotations

import uuid

import psycopg
from sqlalchemy import inspect

from pipeline.changelog import SIGNAL_TABLE
from pipeline.db import make_engine
from pipeline.migrate import CONCURRENT_INDEXES, RETIRED_INDEXES, current_revision, upgrade
from pipeline.tables import WATCHED_TABLES, metadata


def test_migrate_twice_is_a_no_op(fresh_database: str) -> None:
    engine = make_engine(fresh_database)
    first = upgrade(engine, "coachpipe")
    assert len(first) == 2 * len(WATCHED_TABLES) + 1  # Realtime also carries the signal table
    assert upgrade(engine, "coachpipe") == []
    assert current_revision(engine) == "0004"
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
                " ON c.oid = i.indexrelid WHERE i.indrelid = 'public.sessions'::regclass"
            ).fetchall()
        )
    assert all(valid.get(name) for name in CONCURRENT_INDEXES)
    assert not set(RETIRED_INDEXES) & set(valid)
