"""The SQL that keeps `pipeline.summaries` exact: tables, triggers, backfill, readiness.

Everything is generated from the declarations in `pipeline.summaries`, so a summary's trigger,
its backfill, its fill by a migration and its `advance` can never disagree about what a row
adds or what a latest value is.

**One delta statement serves all.** A statement's effect on a summary is the sum over its new
rows minus the sum over its old rows, grouped by the summary's keys. An INSERT has only new
rows, a DELETE only old ones; an UPDATE has both, so a status flip, a moved timestamp or a
reassignment to another coach (the old coach loses the row, the new one gains it) need no
special case. The backfill applies the same statement to a coach's base rows after zeroing
the coach's summaries.

**Anchors serialize writers and the backfill per coach.** The delta upsert of a source's anchor
(its per-coach summary) runs first in every trigger and always writes the touched coaches' rows,
in coach order, so a writer holds their row locks until it commits. The backfill of a coach
locks the same rows (`FOR UPDATE`) before it reads: it waits for writers in flight (and then
sees them), and later writers wait for it (and then add their delta to its result).
"""

from __future__ import annotations

from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from pipeline.summaries import (
    SCHEMA,
    SOURCES,
    STAMP,
    STAMP_COLUMN,
    Summary,
    anchor,
    metadata,
    of_source,
)

STATE_TABLE = f"{SCHEMA}.summary_state"
STAMPED = f"{STAMP_COLUMN} = {STAMP}"
"""The SET item that stamps a summary row (`pipeline.summaries.STAMP`)."""
FORGET_SNAPSHOTS = f"UPDATE {STATE_TABLE} SET {STAMPED}"
"""Stamp the state row: no stored value computed from an earlier snapshot may serve as the base
of an incremental recompute (`pipeline.aggregates.delta`). Run by whatever removes summary rows
wholesale, which the rows' own stamps cannot tell: a TRUNCATE, a repair of lost triggers, the
readiness flipping either way, migration 0005."""
SIGN = "coachpipe_sign"
"""The column that says whether a row adds (+1) or takes away (-1)."""

INSERTED = f"(SELECT 1 AS {SIGN}, * FROM new_rows)"
DELETED = f"(SELECT -1 AS {SIGN}, * FROM old_rows)"
UPDATED = f"(SELECT 1 AS {SIGN}, * FROM new_rows UNION ALL SELECT -1, * FROM old_rows)"


def base_rows(source: str, coach_ids_param: str = "%(coach_ids)s") -> str:
    """A source's current rows of a batch of coaches, each adding once (the backfill's delta)."""
    return f"(SELECT 1 AS {SIGN}, * FROM public.{source} WHERE coach_id = ANY({coach_ids_param}))"


def delta_upsert(summary: Summary, rows: str) -> str:
    """Add `rows`' contribution (each row times its sign) to `summary`, in key order.

    The anchor's upsert keeps keys whose delta is zero, so it always locks the coaches touched;
    the other summaries skip them (an UPDATE of a comment writes nothing else).
    """
    keys = list(summary.keys)
    positions = ", ".join(str(i) for i in range(1, len(keys) + 1))
    sums = [f"sum({SIGN} * ({expression}))" for expression in summary.values.values()]
    having = "" if summary.is_anchor else "HAVING " + " OR ".join(f"{s} <> 0" for s in sums)
    updates = ", ".join(f'"{c}" = s."{c}" + excluded."{c}"' for c in summary.values)
    columns = ", ".join(f'"{c}"' for c in [*keys, *summary.values, STAMP_COLUMN])
    return f"""
    INSERT INTO {SCHEMA}.{summary.table.name} AS s ({columns})
    SELECT {", ".join(summary.keys.values())}, {", ".join(sums)}, {STAMP}
    FROM {rows} AS r
    WHERE coach_id IS NOT NULL AND ({summary.where})
    GROUP BY {positions} {having}
    ORDER BY {positions}
    ON CONFLICT ({", ".join(keys)}) DO UPDATE SET {updates}, {STAMPED};
    """


def _latest_value(summary: Summary) -> str:
    """The SET list that reads `summary.latest` again for the summary row `s` (one index probe:
    unqualified names in the subquery are the source row's)."""
    latest = summary.latest
    assert latest is not None
    match = " AND ".join(f"{key} = s.{key}" for key in summary.keys)
    value = f"""{latest.column} = (
        SELECT {latest.function}({latest.source_column}) FROM public.{summary.source}
        WHERE {match} AND ({summary.where}) AND ({latest.condition}))"""
    checked = f", {latest.checked_at} = now()" if latest.checked_at else ""
    return f"{value}{checked}, {STAMPED}"


def latest_update(summary: Summary, rows: str) -> str:
    """Read `summary.latest` again (one index probe a key) for the keys `rows` touched."""
    if summary.latest is None:
        return ""
    keys = list(summary.keys)
    touched = " AND ".join(f"s.{key} = t.{key}" for key in keys)
    return f"""
    UPDATE {SCHEMA}.{summary.table.name} AS s SET {_latest_value(summary)}
    FROM (SELECT DISTINCT {", ".join(summary.keys.values())} FROM {rows} AS r
          WHERE coach_id IS NOT NULL AND ({summary.where})) AS t ({", ".join(keys)})
    WHERE {touched};
    """


def passed_coaches(summary: Summary) -> str:
    """Up to `%(limit)s` coaches, in order, with a clock-relative latest value that the clock
    has passed (`summary` is one of `CLOCKED`), leaving out `%(skipped)s`."""
    latest = summary.latest
    assert latest is not None and latest.checked_at is not None
    return (
        f"SELECT DISTINCT coach_id FROM {SCHEMA}.{summary.table.name}"
        f" WHERE {latest.column} <= now() AND coach_id <> ALL(%(skipped)s)"
        " ORDER BY coach_id LIMIT %(limit)s"
    )


def advance_statements(summary: Summary) -> tuple[str, str]:
    """(lock, read again): in one READ COMMITTED transaction, lock the anchor rows of the
    coaches in `%(coach_ids)s` that no one holds (in coach order, as every trigger does; a
    coach a writer holds is skipped, never waited for), then, in a second statement whose
    snapshot follows the locks, read again the passed values of the coaches locked, passed as
    `%(coach_ids)s` again."""
    latest = summary.latest
    assert latest is not None and latest.checked_at is not None
    main = f"{SCHEMA}.{anchor(summary.source).table.name}"
    return (
        f"SELECT coach_id FROM {main} WHERE coach_id = ANY(%(coach_ids)s)"
        " ORDER BY coach_id FOR UPDATE SKIP LOCKED",
        f"UPDATE {SCHEMA}.{summary.table.name} AS s SET {_latest_value(summary)}"
        f" WHERE coach_id = ANY(%(coach_ids)s) AND {latest.column} <= now()",
    )


def fill_statements(summary: Summary) -> list[str]:
    """Empty `summary` and fill it from every base row: for a migration that adds a summary to
    a database with data. The caller keeps writers out (its `CREATE TRIGGER` on the source
    holds a lock that blocks them until it commits)."""
    rows = f"(SELECT 1 AS {SIGN}, * FROM public.{summary.source})"
    return [
        f"TRUNCATE {SCHEMA}.{summary.table.name}",
        FORGET_SNAPSHOTS,
        *(sql for sql in _statements(summary, rows) if sql),
    ]


def _statements(summary: Summary, rows: str) -> list[str]:
    return [delta_upsert(summary, rows), latest_update(summary, rows)]


def _deltas(source: str, rows: str) -> str:
    return "".join(sql for summary in of_source(source) for sql in _statements(summary, rows))


def trigger_function(source: str) -> str:
    """`coachpipe.summarize_<source>()`: the statement trigger that applies a statement's delta.

    SECURITY DEFINER with a fixed search_path: whoever writes the source table (an app role
    under RLS, say) needs no privilege on the summaries, and cannot redirect their names.
    """
    return f"""
    CREATE OR REPLACE FUNCTION {SCHEMA}.summarize_{source}() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN {_deltas(source, INSERTED)}
        ELSIF TG_OP = 'UPDATE' THEN {_deltas(source, UPDATED)}
        ELSIF TG_OP = 'DELETE' THEN {_deltas(source, DELETED)}
        ELSE
            TRUNCATE {", ".join(f"{SCHEMA}.{s.table.name}" for s in of_source(source))};
            {FORGET_SNAPSHOTS};
        END IF;
        RETURN NULL;
    END $$;
    """


def triggers(source: str) -> str:
    function = f"{SCHEMA}.summarize_{source}()"
    return f"""
    CREATE OR REPLACE TRIGGER coachpipe_summarize_insert AFTER INSERT ON public.{source}
        REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {function};
    CREATE OR REPLACE TRIGGER coachpipe_summarize_update AFTER UPDATE ON public.{source}
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION {function};
    CREATE OR REPLACE TRIGGER coachpipe_summarize_delete AFTER DELETE ON public.{source}
        REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {function};
    CREATE OR REPLACE TRIGGER coachpipe_summarize_truncate AFTER TRUNCATE ON public.{source}
        FOR EACH STATEMENT EXECUTE FUNCTION {function};
    """


def _create_tables() -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return ";\n".join(
        str(CreateTable(table, if_not_exists=True).compile(dialect=dialect))
        for table in metadata.sorted_tables
    )


def schema_ddl() -> str:
    """Schema, summary tables, readiness row, trigger functions and triggers; idempotent.

    The readiness row is created `ready` only when every source table is empty (a new
    database: the triggers see every row from the first). Otherwise the aggregates keep
    reading the base tables until `coachpipe backfill` has filled the summaries. Creating a
    trigger locks its table against writes until the migration commits, so that emptiness
    check cannot miss a row written meanwhile.
    """
    empty = " AND ".join(f"NOT EXISTS (SELECT FROM public.{source})" for source in SOURCES)
    parts = [
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        _create_tables(),
        f"""
        CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            ready boolean NOT NULL,
            backfilled_at timestamptz,
            {STAMP_COLUMN} xid8 DEFAULT {STAMP}
        )
        """,
        f"ALTER TABLE {STATE_TABLE} ADD COLUMN IF NOT EXISTS {STAMP_COLUMN} xid8 DEFAULT {STAMP}",
        *(
            f"ALTER TABLE {SCHEMA}.{table.name} ADD COLUMN IF NOT EXISTS {STAMP_COLUMN} xid8"
            for table in metadata.sorted_tables
        ),
        *(trigger_function(source) + triggers(source) for source in SOURCES),
        f"INSERT INTO {STATE_TABLE} (ready) SELECT {empty} ON CONFLICT DO NOTHING",
    ]
    return ";\n".join(parts)


def drop_ddl() -> str:
    drops = [
        f"DROP TRIGGER IF EXISTS coachpipe_summarize_{op} ON public.{source}"
        for source in SOURCES
        for op in ("insert", "update", "delete", "truncate")
    ]
    return ";\n".join([*drops, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"])


def rebuild_statements(source: str) -> list[str]:
    """Replace the summaries of one source for the coaches in `%(coach_ids)s`, in one transaction.

    Lock the coaches' anchor rows (creating them if missing) in coach order, zero the anchor,
    clear the other summaries' rows (`_clear`), then add every base row once. Run in READ
    COMMITTED: each statement's snapshot is taken after the locks are held.
    """
    main = anchor(source)
    table = f"{SCHEMA}.{main.table.name}"
    zeros = ", ".join([*(f'"{column}" = 0' for column in main.values), STAMPED])
    return [
        f"INSERT INTO {table} (coach_id) SELECT id FROM unnest(%(coach_ids)s::uuid[]) AS c(id)"
        " ORDER BY id ON CONFLICT DO NOTHING",
        f"SELECT 1 FROM {table} WHERE coach_id = ANY(%(coach_ids)s) ORDER BY coach_id FOR UPDATE",
        f"UPDATE {table} SET {zeros} WHERE coach_id = ANY(%(coach_ids)s)",
        *(_clear(summary) for summary in of_source(source) if not summary.is_anchor),
        *(
            sql
            for summary in of_source(source)
            for sql in _statements(summary, base_rows(source))
            if sql
        ),
    ]


def _clear(summary: Summary) -> str:
    """Before a rebuild adds the base rows again: a summary keyed by client keeps its rows,
    zeroed and stamped, so that a reader comparing stamps with an earlier snapshot reads every
    client of the coach again (a deleted row leaves no stamp); their latest value is none, read
    at `now()` (what it stays for a client without a source row: no probe by readers); the
    others' rows are deleted (a zero row in an hourly summary would be an hour with nothing in
    it)."""
    where = "WHERE coach_id = ANY(%(coach_ids)s)"
    if "client_id" not in summary.keys:
        return f"DELETE FROM {SCHEMA}.{summary.table.name} {where}"
    latest = summary.latest
    cleared = [f'"{column}" = 0' for column in summary.values]
    if latest is not None:  # none: read again below for every key that has a source row
        cleared += [f"{latest.column} = NULL"]
        cleared += [f"{latest.checked_at} = now()"] if latest.checked_at else []
    return f"UPDATE {SCHEMA}.{summary.table.name} SET {', '.join(cleared)}, {STAMPED} {where}"
