"""Schema migrations (Alembic) and the replication setup the listeners need.

`upgrade` is safe to run any number of times: Alembic skips applied revisions, every DDL
statement is idempotent, and `ensure_publication` only adds what is missing. Indexes on large
tables are built afterwards with `CREATE INDEX CONCURRENTLY` (`ensure_concurrent_indexes`),
which cannot run inside the migrations' transaction and does not block writers.
"""

from __future__ import annotations

from importlib.resources import files

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, text

from pipeline.changelog import LOG_TRIGGERS, SIGNAL_TABLE
from pipeline.summaries import SCHEMA, SOURCES, of_source
from pipeline.summary_sql import FORGET_SNAPSHOTS, STATE_TABLE, trigger_function, triggers
from pipeline.tables import WATCHED_TABLES

log = structlog.get_logger("pipeline.migrate")

VERSION_TABLE = "coachpipe_schema_version"
SUPABASE_PUBLICATION = "supabase_realtime"


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("pipeline") / "migrations"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, publication: str) -> list[str]:
    """Apply every migration, then make sure both publications hold the five tables.

    Returns the tables added to a publication by this call ("publication.table").
    """
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('coachpipe.migrate'))"))
        command.upgrade(_alembic_config(connection), "head")
        ensure_partitions_replica_identity(connection)
        for table in WATCHED_TABLES:  # idempotent; a re-created table has lost them
            connection.execute(text(LOG_TRIGGERS.format(table=table)))
        ensure_summary_triggers(connection)
        added = ensure_publication(connection, publication, via_partition_root=True)
        # Realtime also carries the signal table: listener canaries and TRUNCATE notices.
        added += ensure_publication(connection, SUPABASE_PUBLICATION, (SIGNAL_TABLE,))
    ensure_concurrent_indexes(engine)
    return added


SUMMARY_TRIGGERS = text(
    """
    SELECT count(*) FROM pg_trigger
    WHERE tgrelid = to_regclass(:table) AND tgname LIKE 'coachpipe_summarize_%%'
    """
)


def ensure_summary_triggers(connection: Connection) -> list[str]:
    """Re-install the summary triggers of a watched table that lost them; returns its name.

    A table dropped and re-created (partitioned, say) comes back without them. Empty, its
    summaries are emptied too and stay exact; with rows, the summaries are marked not ready
    and the aggregates read the base tables until `coachpipe backfill`. Creating the triggers
    locks the table against writes until the migration commits, so no row slips between.
    """
    repaired = []
    for source in SOURCES:
        table = f"public.{source}"
        if connection.execute(SUMMARY_TRIGGERS, {"table": table}).scalar_one() == 4:
            continue
        connection.exec_driver_sql(trigger_function(source) + triggers(source))
        connection.execute(text(FORGET_SNAPSHOTS))
        if connection.execute(text(f"SELECT EXISTS (SELECT FROM {table})")).scalar_one():
            connection.execute(text(f"UPDATE {STATE_TABLE} SET ready = false"))
        else:
            names = ", ".join(f"{SCHEMA}.{s.table.name}" for s in of_source(source))
            connection.execute(text(f"TRUNCATE {names}"))
        repaired.append(source)
    return repaired


CONCURRENT_INDEXES: dict[str, str] = {
    "sessions_coach_completed_client_idx": "public.sessions (coach_id, completed_at)"
    " INCLUDE (price_cents, client_id) WHERE status = 'completed'",
    "sessions_coach_scheduled_idx": "public.sessions (coach_id, scheduled_at)"
    " WHERE status = 'scheduled'",
    "sessions_coach_client_idx": "public.sessions (coach_id, client_id, status, scheduled_at)"
    " WHERE status IN ('completed', 'scheduled')",
}
"""Indexes added after the tables held data, by name. The first two bound the edges of the
time windows (pipeline.aggregates.windows) and the first also serves coach-trends' retention
(clients with a completed session in 56 days, by an index-only range scan); the third serves
the summary trigger's read of a client's last completed session and coach-clients' probe of a
client's next session. The foreign keys' indexes are built from `UNINDEXED_FOREIGN_KEYS`."""

UNINDEXED_FOREIGN_KEYS = """
SELECT format('%%I.%%I', r.relnamespace::regnamespace, r.relname) AS tbl, c.conname,
       string_agg(quote_ident(a.attname), ', ' ORDER BY k.n) AS columns,
       r.relkind = 'p' AS partitioned
FROM pg_constraint c
JOIN pg_class r ON r.oid = c.conrelid
CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
WHERE c.contype = 'f' AND c.conrelid = ANY(
        SELECT to_regclass('public.' || quote_ident(t)) FROM unnest(%(tables)s::text[]) AS t)
  AND NOT EXISTS (
        SELECT FROM pg_index i
        CROSS JOIN LATERAL (
            SELECT (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(c.conkey)] AS lead
        ) AS l
        WHERE i.indrelid = c.conrelid AND i.indisvalid AND i.indpred IS NULL
          AND cardinality(c.conkey) <= i.indnkeyatts
          AND l.lead @> c.conkey AND l.lead <@ c.conkey)
GROUP BY r.relnamespace, r.relname, r.relkind, c.conname
ORDER BY 1, 2
"""
"""(table, constraint, its columns, whether the table is partitioned) of each foreign key of
`%(tables)s` (names in `public`) whose columns, in any order, are not the leading key
columns of a valid, non-partial index: a delete of the referenced row scans the whole table
for its rows, under the delete's row locks. Postgres indexes only the referenced side of a
foreign key; Supabase's database linter reports the same (lint 0001,
"unindexed_foreign_keys"). A partial index does not count (the key's lookups have no WHERE to
match it), nor an INVALID one (a `CREATE INDEX CONCURRENTLY` that was interrupted). psycopg
parameter style, like `PUBLICATION_MEMBERS`."""


def foreign_key_index_name(constraint: str) -> str:
    """The index `migrate` builds for a foreign key: named after its constraint, cut so that
    the name fits Postgres's 63 bytes (NAMEDATALEN - 1) whole characters and all."""
    return f"{constraint.encode()[:59].decode(errors='ignore')}_idx"


def foreign_key_index(table: str, constraint: str, columns: str, partitioned: bool) -> str:
    """The statement that indexes one row of `UNINDEXED_FOREIGN_KEYS`, built `CONCURRENTLY`
    (not possible on a partitioned table: built plainly)."""
    how = "" if partitioned else " CONCURRENTLY"
    name = foreign_key_index_name(constraint)
    return f'CREATE INDEX{how} IF NOT EXISTS "{name}" ON {table} ({columns})'


RETIRED_INDEXES: dict[str, str] = {
    "sessions_coach_completed_idx": "public.sessions",
}
"""Indexes an earlier version built, by name → table, dropped (concurrently) once every
`CONCURRENT_INDEXES` entry is valid: `sessions_coach_completed_idx` did not cover client_id,
so retention fetched one heap row per completed session of its 56 days."""

INDEX_STATE = text(
    """
    SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
    WHERE c.relname = :name AND c.relnamespace = 'public'::regnamespace
    """
)
PARTITIONED = text("SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(:table)")


def ensure_concurrent_indexes(engine: Engine) -> list[str]:
    """Build the missing `CONCURRENT_INDEXES` and an index for each foreign key of the five
    tables that no index serves (`UNINDEXED_FOREIGN_KEYS`: on a database whose tables were
    adopted with such an index already, none is added) without blocking writers, then drop the
    `RETIRED_INDEXES` they replace; returns the names built.

    An index left invalid by an interrupted earlier build is dropped and built again. Postgres
    cannot build an index on a partitioned table concurrently: there it is built plainly
    (which holds off writers while it runs). A session advisory lock keeps two migrations
    from building the same index at once.
    """
    built = []
    with engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        autocommit.execute(text("SELECT pg_advisory_lock(hashtext('coachpipe.indexes'))"))
        try:
            for name, definition in CONCURRENT_INDEXES.items():
                state = autocommit.execute(INDEX_STATE, {"name": name}).first()
                if state is not None and state.indisvalid:
                    continue
                table = definition.split(" ", 1)[0]
                partitioned = autocommit.execute(PARTITIONED, {"table": table}).scalar()
                how = "" if partitioned else " CONCURRENTLY"
                if state is not None:
                    autocommit.execute(text(f"DROP INDEX{how} IF EXISTS public.{name}"))
                autocommit.execute(text(f"CREATE INDEX{how} IF NOT EXISTS {name} ON {definition}"))
                built.append(name)
            unindexed = autocommit.exec_driver_sql(
                UNINDEXED_FOREIGN_KEYS, {"tables": list(WATCHED_TABLES)}
            ).all()
            for table, constraint, columns, partitioned in unindexed:
                name = foreign_key_index_name(constraint)
                how = "" if partitioned else " CONCURRENTLY"
                state = autocommit.execute(INDEX_STATE, {"name": name}).first()
                if state is not None and state.indisvalid:
                    # A valid index of that name serves something else (partial, other
                    # columns or table): not ours to drop. `coachpipe doctor` still warns.
                    log.warning("foreign_key_index_name_taken", index=name, table=table)
                    continue
                if state is not None:  # left invalid by an interrupted build: built again
                    autocommit.execute(text(f'DROP INDEX{how} IF EXISTS public."{name}"'))
                autocommit.exec_driver_sql(
                    foreign_key_index(table, constraint, columns, partitioned)
                )
                built.append(name)
            for name, table in RETIRED_INDEXES.items():
                partitioned = autocommit.execute(PARTITIONED, {"table": table}).scalar()
                how = "" if partitioned else " CONCURRENTLY"
                autocommit.execute(text(f"DROP INDEX{how} IF EXISTS public.{name}"))
        finally:
            autocommit.execute(text("SELECT pg_advisory_unlock(hashtext('coachpipe.indexes'))"))
    return built


def current_revision(engine: Engine) -> str | None:
    with engine.begin() as connection:
        exists = connection.execute(
            text("SELECT to_regclass(:name) IS NOT NULL"), {"name": f"public.{VERSION_TABLE}"}
        ).scalar_one()
        if not exists:
            return None
        return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


PUBLICATION_MEMBERS = """
SELECT c.relname FROM pg_publication p
JOIN pg_publication_rel r ON r.prpubid = p.oid
JOIN pg_class c ON c.oid = r.prrelid
WHERE p.pubname = %(name)s AND c.relnamespace = 'public'::regnamespace
UNION
SELECT tablename FROM pg_publication_tables WHERE pubname = %(name)s AND schemaname = 'public'
"""
"""Tables of `public` a publication holds: the ones added to it (a partitioned table by its own
name, whichever way the publication sends its changes) and the ones it holds otherwise
(`FOR TABLES IN SCHEMA`). `pg_publication_tables` alone names a partitioned table's partitions
instead of itself unless `publish_via_partition_root` is on. (psycopg parameter style; SQLAlchemy
callers bind it with `:name`.)"""

PARTITIONS_WITHOUT_FULL_IDENTITY = text(
    """
    SELECT format('%I.%I', n.nspname, c.relname) FROM unnest(CAST(:tables AS text[])) AS t(name)
    CROSS JOIN LATERAL pg_partition_tree(to_regclass('public.' || quote_ident(t.name))) AS tree
    JOIN pg_class c ON c.oid = tree.relid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE tree.isleaf AND tree.level > 0 AND c.relreplident <> 'f'
    """
)


def ensure_partitions_replica_identity(connection: Connection) -> list[str]:
    """`REPLICA IDENTITY FULL` on every partition of a partitioned watched table.

    Partitions do not inherit it from their parent, and the old row of an UPDATE or DELETE is
    logged as the partition's own setting says. Run again after adding partitions.
    """
    partitions = list(
        connection.execute(
            PARTITIONS_WITHOUT_FULL_IDENTITY, {"tables": list(WATCHED_TABLES)}
        ).scalars()
    )
    for partition in partitions:
        connection.execute(text(f"ALTER TABLE {partition} REPLICA IDENTITY FULL"))
    return partitions


def ensure_publication(
    connection: Connection,
    publication: str,
    extra: tuple[str, ...] = (),
    *,
    via_partition_root: bool = False,
) -> list[str]:
    """Create `publication` if missing and add whichever watched (or `extra`) table it lacks.

    With `via_partition_root`, a partitioned table's changes are sent under its own name (the
    one routing knows), not its partitions'. A publication `FOR ALL TABLES` already holds the
    tables and cannot take more; it is only switched to `publish_via_partition_root`.
    """
    row = connection.execute(
        text("SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = :name"),
        {"name": publication},
    ).first()
    if row is None:
        options = " WITH (publish_via_partition_root = true)" if via_partition_root else ""
        connection.execute(text(f'CREATE PUBLICATION "{publication}"{options}'))
    elif via_partition_root and not row.pubviaroot:
        connection.execute(
            text(f'ALTER PUBLICATION "{publication}" SET (publish_via_partition_root = true)')
        )
    if row is not None and row.puballtables:
        return []
    present = set(
        connection.execute(
            text(PUBLICATION_MEMBERS.replace("%(name)s", ":name")), {"name": publication}
        ).scalars()
    )
    added = []
    for table in (*WATCHED_TABLES, *extra):
        if table not in present:
            connection.execute(
                text(f'ALTER PUBLICATION "{publication}" ADD TABLE public."{table}"')
            )
            added.append(f"{publication}.{table}")
    return added
