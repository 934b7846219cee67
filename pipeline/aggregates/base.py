"""What an aggregate is, and the few SQL building blocks every aggregate shares.

An aggregate is declared once: its name, whether it is critical (kept fresh by events) or
secondary (refreshed by beat), the tables it reads, its statements and how their rows become one
JSON value per coach. An aggregate whose statements read summaries (`pipeline.summaries`) also
keeps `scan_statements` that read only the base tables, for a database whose summaries are
not filled yet (`coachpipe backfill`). Every statement takes the same two parameters,
`:coach_ids` (a batch) and `:as_of` (the clock the value is computed for), so one code path
serves a realtime recompute of three coaches and a beat refresh of five hundred (an
`Incremental` aggregate's lines statement takes `:client_ids` too, `pipeline.aggregates.delta`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, cast
from uuid import UUID

from psycopg.rows import namedtuple_row
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    DateTime,
    Select,
    String,
    TableValuedAlias,
    Uuid,
    bindparam,
    column,
    func,
    select,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter

from pipeline.db import psycopg_connection
from pipeline.summaries import STAMP_COLUMN

JSONValue = dict[str, Any]
Rows = Sequence[Any]
"""Named tuples from psycopg: attribute access (`row.coach_id`) and `row._asdict()`."""

COACH_IDS = bindparam("coach_ids", type_=ARRAY(Uuid))
AS_OF = bindparam("as_of", type_=DateTime(timezone=True))

THIRTY_DAYS = timedelta(days=30)


class Kind(StrEnum):
    CRITICAL = "critical"
    SECONDARY = "secondary"


def coach_set(name: str = "c") -> TableValuedAlias:
    """`unnest(:coach_ids) AS c(coach_id)`: the batch as a relation that laterals hang from."""
    return (
        func.unnest(COACH_IDS)
        .table_valued(column("coach_id", Uuid))
        .render_derived(name=name, with_types=False)
    )


def summary_row(table: Any, name: str, *where: ColumnElement[bool]) -> Any:
    """A lateral lookup of one summary row by its key (`LIMIT 1` keeps it a per-row index probe:
    a plain outer join lets a generic plan hash the whole summary table). Its sums and keys,
    not its stamp (`pipeline.summaries.STAMP_COLUMN`: when it was written, not a value)."""
    sums = (column for column in table.c if column.name != STAMP_COLUMN)
    return select(*sums).where(*where).correlate_except(table).limit(1).lateral(f"{name}_row")


def coach_summary(table: Any, coach: TableValuedAlias) -> Any:
    """`summary_row` of a per-coach summary (keyed by coach alone) for the batch's coach."""
    return summary_row(table, table.name, table.c.coach_id == coach.c.coach_id)


def zero(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A sum read from a summary, 0 where the coach has no row."""
    return func.coalesce(column, 0)


def within(moment: ColumnElement[Any], start: timedelta, end: timedelta) -> ColumnElement[bool]:
    """`moment` lies in the window (as_of - start, as_of - end]."""
    return (moment > AS_OF - start) & (moment <= AS_OF - end)


def iso(moment: datetime | date | None) -> str | None:
    """Timestamps as ISO 8601 in UTC; dates as YYYY-MM-DD."""
    if moment is None:
        return None
    if isinstance(moment, datetime):
        return moment.astimezone(UTC).isoformat()
    return moment.isoformat()


def iso_text(moment: ColumnElement[Any]) -> ColumnElement[str]:
    """`iso` computed by Postgres, for statements that return many timestamps: the same text
    (UTC, `+00:00`, microseconds only when not zero) whatever the session's TimeZone, without
    a datetime object and its isoformat per value in the worker. NULL stays NULL."""
    utc = func.timezone("UTC", moment)
    text = func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS.US', type_=String)
    return func.replace(text, ".000000", "", type_=String).concat("+00:00")


def number(value: Decimal | float | None) -> float | None:
    """A rounded SQL numeric as a JSON number (None stays None)."""
    return None if value is None else float(value)


def text_id(value: UUID | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class TimeBoundary:
    """A row starts or stops counting when `as_of` passes `column + offset` (for some offset).

    The clock tick (`pipeline.coaches.coaches_crossing`) recomputes the coaches with such a
    crossing whose stored value was computed before it (`pipeline.clock.behind_the_clock`), so
    time-dependent fields ("upcoming", "last 30 days") stay right without any row changing.
    """

    table: str
    column: str
    offsets: tuple[timedelta, ...]
    where: str = ""


@dataclass(frozen=True)
class Incremental:
    """How a stored value is brought to a later snapshot by reading again only its lines that
    changed (`pipeline.aggregates.delta`): for a value whose size follows a coach's clients,
    not its history, but whose full read still does (coach-clients: 500 lines).

    `roster` is the summary keyed by coach whose stamp moves whenever the set or order of the
    lines may have (then the value is read in full); `by_client` the summaries keyed by
    (coach, client) whose stamps name the lines to read again; `lines` reads the lines of
    `:client_ids`. `listed` gives a value's line IDs, `clocked` those of its lines the clock
    alone has changed by `as_of`, and `merge` the value with the fresh lines put in place."""

    roster: str
    by_client: tuple[str, ...]
    lines: Select[Any]
    listed: Callable[[JSONValue], list[str]]
    clocked: Callable[[JSONValue, datetime], set[str]]
    merge: Callable[[JSONValue, Rows], JSONValue]


@dataclass(frozen=True)
class Aggregate:
    name: str
    kind: Kind
    schema_version: int
    tables: frozenset[str]
    statements: Mapping[str, Select[Any]]
    assemble: Callable[[Mapping[str, Rows], datetime], dict[UUID, JSONValue]]
    empty: Callable[[datetime], JSONValue]
    description: str = ""
    time_boundaries: tuple[TimeBoundary, ...] = field(default=())
    scan_statements: Mapping[str, Select[Any]] | None = None
    """The same values from the base tables alone (whole histories), while summaries are not
    ready; None when `statements` read no summary."""
    incremental: Incremental | None = None

    def compute(
        self, connection: Connection, coach_ids: Sequence[UUID], as_of: datetime
    ) -> dict[UUID, JSONValue]:
        """One JSON value per requested coach, an empty one for a coach with no rows.

        Run it inside one REPEATABLE READ transaction (pipeline.recompute does) so that every
        statement sees the same snapshot.
        """
        return compute_all(connection, [self], coach_ids, as_of)[self.name]

    def values(
        self, rows: Mapping[str, Rows], coach_ids: Sequence[UUID], as_of: datetime
    ) -> dict[UUID, JSONValue]:
        assembled = self.assemble(rows, as_of)
        return {coach_id: assembled.get(coach_id) or self.empty(as_of) for coach_id in coach_ids}

    def compiled(self, dialect: Dialect, *, summaries: bool = True) -> Mapping[str, str]:
        """The statements as SQL strings for `dialect`, compiled once (see `driver_sql`).

        `summaries=False`: the `scan_statements` (when the aggregate has any).
        """
        chosen = self.statements if summaries else self.scan_statements or self.statements
        return _compiled(self.name, "summaries" if summaries else "scan", chosen, dialect)

    def compiled_lines(self, dialect: Dialect) -> str:
        """`incremental.lines` as SQL for `dialect`, compiled once (see `driver_sql`)."""
        assert self.incremental is not None, f"{self.name} is not incremental"
        return _compiled(self.name, "lines", {"lines": self.incremental.lines}, dialect)["lines"]


def _compiled(
    name: str, kind: str, statements: Mapping[str, Select[Any]], dialect: Dialect
) -> Mapping[str, str]:
    key = (name, kind, dialect.name, dialect.driver)
    if key not in _COMPILED:
        _COMPILED[key] = {
            label: driver_sql(statement, dialect) for label, statement in statements.items()
        }
    return _COMPILED[key]


CLIENT_IDS = bindparam("client_ids", type_=ARRAY(Uuid))
"""The clients an incremental aggregate's lines statement reads (`Incremental.lines`)."""
PARAMETERS = frozenset({COACH_IDS.key, AS_OF.key, CLIENT_IDS.key})


def driver_sql(statement: Select[Any], dialect: Dialect) -> str:
    """The statement as the driver's SQL, its constants inlined as literals.

    Only `:coach_ids`, `:as_of` (and `:client_ids`) stay parameters, so Postgres can plan each
    statement once (a generic plan, see `compute_all`) for every batch; with the constants as
    parameters too the generic plans are far worse (status filters of unknown selectivity) and
    replanning every execution costs more than executing. Compiled once, these strings also spare
    SQLAlchemy's per-execution walk of the statement for its cache key.
    """

    def inline(element: Any, **_: Any) -> Any:
        if isinstance(element, BindParameter) and element.key not in PARAMETERS:
            return element.render_literal_execute()
        return None

    inlined = cast(Select[Any], visitors.replacement_traverse(statement, {}, inline))
    placeholders: dict[str, Any] = dict.fromkeys(PARAMETERS)
    expanded = inlined.compile(dialect=dialect).construct_expanded_state(placeholders)
    return str(expanded.statement)


_COMPILED: dict[tuple[str, str, str, str], Mapping[str, str]] = {}

SUMMARIES_READY = "SELECT ready FROM coachpipe.summary_state"
"""Whether the summaries may be read (pipeline.summary_sql); one row, in the same snapshot."""


def compute_all(
    connection: Connection,
    aggregates: Sequence[Aggregate],
    coach_ids: Sequence[UUID],
    as_of: datetime,
    *,
    end_transaction: bool = False,
    summaries_ready: bool | None = None,
    served: Mapping[str, Collection[UUID]] | None = None,
    also: Callable[[], None] | None = None,
) -> dict[str, dict[UUID, JSONValue]]:
    """Values by aggregate, every statement of every aggregate sent to Postgres at once.

    psycopg's pipeline mode makes the statements one round trip instead of one each; on this
    2-core machine a loopback round trip costs about 0.3 ms, more than most statements' own
    execution. psycopg prepares a statement on its fifth execution on a connection; from then
    on Postgres reuses one generic plan instead of planning each execution, which took more
    time than executing (1 coach, all critical aggregates: 1.8 ms planning, 1.1 ms executing).
    The statements run in the caller's transaction, on its snapshot; `end_transaction=True`
    ends it (a read-only snapshot has nothing to commit) in the same round trip.
    `summaries_ready` (read in the same snapshot, see `SUMMARIES_READY`) chooses between the
    statements that read summaries and the scan statements; None reads it first.
    `served`: by aggregate name, coaches whose value the caller has already (an incremental
    recompute's); they are left out of that aggregate's statements and of its values. `also`
    is called inside the pipeline, before the commit, to send more statements in the same round
    trip.
    """
    driver = psycopg_connection(connection)
    if summaries_ready is None:
        summaries_ready = bool(driver.execute(SUMMARIES_READY).fetchone() == (True,))
    wanted = {
        aggregate.name: [c for c in coach_ids if c not in (served or {}).get(aggregate.name, ())]
        for aggregate in aggregates
    }
    with driver.pipeline():
        driver.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursors = {
            aggregate.name: {
                name: driver.cursor(row_factory=namedtuple_row).execute(
                    sql, {"coach_ids": wanted[aggregate.name], "as_of": as_of}
                )
                for name, sql in aggregate.compiled(
                    connection.dialect, summaries=summaries_ready
                ).items()
            }
            for aggregate in aggregates
            if wanted[aggregate.name]
        }
        if also is not None:
            also()
        if end_transaction:
            driver.commit()
    return {
        aggregate.name: aggregate.values(
            {name: cursor.fetchall() for name, cursor in cursors[aggregate.name].items()},
            wanted[aggregate.name],
            as_of,
        )
        if wanted[aggregate.name]
        else {}
        for aggregate in aggregates
    }
