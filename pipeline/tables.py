"""The five watched tables, as SQLAlchemy Core objects.

The migrations create them (see `pipeline/migrations`); the aggregates query them; routing and the
listeners know them by `WATCHED_TABLES`. A test checks that this description and the migrated
database agree column by column.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
)

metadata = MetaData(schema="public")


def _timestamps() -> tuple[Column[object], Column[object]]:
    return (
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )


users = Table(
    "users",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("role", Text, nullable=False),
    Column("coach_id", Uuid, ForeignKey("public.users.id", ondelete="SET NULL")),
    Column("full_name", Text, nullable=False),
    Column("email", Text),
    Column("status", Text, nullable=False),
    *_timestamps(),
    CheckConstraint("role in ('coach', 'client', 'admin')", name="users_role_check"),
    CheckConstraint("status in ('active', 'paused', 'archived')", name="users_status_check"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("coach_id", Uuid, ForeignKey("public.users.id", ondelete="CASCADE"), nullable=False),
    Column("client_id", Uuid, ForeignKey("public.users.id", ondelete="CASCADE"), nullable=False),
    Column("status", Text, nullable=False),
    Column("scheduled_at", DateTime(timezone=True), nullable=False),
    Column("duration_minutes", Integer, nullable=False),
    Column("price_cents", Integer),
    Column("completed_at", DateTime(timezone=True)),
    *_timestamps(),
    CheckConstraint(
        "status in ('scheduled', 'completed', 'cancelled', 'no_show')", name="sessions_status_check"
    ),
)

session_feedback = Table(
    "session_feedback",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column(
        "session_id", Uuid, ForeignKey("public.sessions.id", ondelete="CASCADE"), nullable=False
    ),
    Column("coach_id", Uuid, ForeignKey("public.users.id", ondelete="CASCADE"), nullable=False),
    Column("client_id", Uuid, ForeignKey("public.users.id", ondelete="CASCADE"), nullable=False),
    Column("comment", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

session_ratings = Table(
    "session_ratings",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column(
        "session_id", Uuid, ForeignKey("public.sessions.id", ondelete="CASCADE"), nullable=False
    ),
    Column("coach_id", Uuid, ForeignKey("public.users.id", ondelete="CASCADE"), nullable=False),
    Column("client_id", Uuid, ForeignKey("public.users.id", ondelete="CASCADE"), nullable=False),
    Column("rating", SmallInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("rating between 1 and 5", name="session_ratings_rating_check"),
)

goals = Table(
    "goals",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("coach_id", Uuid, ForeignKey("public.users.id", ondelete="CASCADE"), nullable=False),
    Column("client_id", Uuid, ForeignKey("public.users.id", ondelete="CASCADE"), nullable=False),
    Column("title", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("progress", SmallInteger, nullable=False),
    Column("target_date", Date),
    *_timestamps(),
    CheckConstraint("status in ('active', 'completed', 'abandoned')", name="goals_status_check"),
    CheckConstraint("progress between 0 and 100", name="goals_progress_check"),
)

WATCHED_TABLES: tuple[str, ...] = tuple(table.name for table in metadata.sorted_tables)
"""Names of the five tables the listeners watch, in dependency order."""

BY_NAME: dict[str, Table] = {table.name: table for table in metadata.sorted_tables}

PARTITION_LEAVES = """
SELECT t.name, n.nspname, c.relname FROM unnest(%(tables)s::text[]) AS t(name)
CROSS JOIN LATERAL pg_partition_tree(to_regclass('public.' || quote_ident(t.name))) AS tree
JOIN pg_class c ON c.oid = tree.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE tree.isleaf AND tree.level > 0
ORDER BY 1, 2, 3
"""
"""(watched table, schema, partition) for every leaf partition of a partitioned watched table
(psycopg parameter style, `tables` a list of watched table names). A table that is not
partitioned has no row."""
