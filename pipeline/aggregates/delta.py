"""Incremental recomputes: a stored value brought to a later snapshot by its changed lines.

coach-clients lists up to 500 clients of a coach. Read in full, its cost follows those lines
(the whale of issue 18: 2,000 clients, 500 listed, two thirds of all its critical aggregates'
time), yet one change touches one client's line. So a drain starts from the value stored
(`Base`: the value, its clock and the snapshot it was computed from, `pg_current_snapshot()`)
and reads again, in its own snapshot, only the lines whose summary rows were written since:

- every summary row carries `changed`, the writing transaction's ID (`pipeline.summaries.STAMP`);
  a row with a stamp the base's snapshot does not see (`pg_visible_in_snapshot`) was written
  after it: its client's line is read again;
- the lines the clock alone has changed since (`Incremental.clocked`: a next session that has
  begun) are read again too;
- the roster (which clients are listed, in which order, their names and statuses, the total) is
  the anchor summary's: its stamp moves with every write of a client of the coach, and then the
  value is read in full; so does the state row's (`pipeline.summary_sql.FORGET_SNAPSHOTS`) when
  summaries were removed wholesale (TRUNCATE, a lost trigger repaired, readiness), and a base
  whose snapshot is not behind this one (another database, a clock that went back).

Each line is computed whole from the summaries at the current snapshot, so the result is the full
read's value by construction (no delta arithmetic); the property tests compare it with the oracle
after random changes. A base that is older than it claims would only make more lines read again:
the stamps are compared with the snapshot stored beside the value, in the same hash write.
Delivery stays at-least-once: a replay reads the same lines again, a stale write is refused by
the version compare-and-set as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import namedtuple_row
from sqlalchemy.engine import Connection

from pipeline import metrics
from pipeline.aggregates.base import Aggregate, Incremental, JSONValue, driver_sql
from pipeline.db import psycopg_connection
from pipeline.summaries import SCHEMA
from pipeline.summary_sql import STATE_TABLE


@dataclass(frozen=True)
class Base:
    """A stored value an incremental recompute may start from (`pipeline.stored`)."""

    value: JSONValue
    as_of: datetime
    snapshot: str
    """`pg_current_snapshot()` of the transaction the value was computed in, as text."""


_SEEN = "pg_visible_in_snapshot({column}, %(snapshot)s::pg_snapshot)"


def changed_sql(incremental: Incremental) -> str:
    """One row: whether a base taken at `%(snapshot)s` may serve for `%(coach_id)s` at this
    transaction's snapshot, and the client IDs (text) whose rows were written since."""
    changed = " UNION ".join(
        f"SELECT client_id::text FROM {SCHEMA}.{table} WHERE coach_id = %(coach_id)s"
        f" AND NOT {_SEEN.format(column='changed')}"
        for table in incremental.by_client
    )
    return f"""
    SELECT pg_snapshot_xmax(%(snapshot)s::pg_snapshot) <= pg_snapshot_xmax(pg_current_snapshot())
       AND EXISTS (SELECT FROM {STATE_TABLE} WHERE {_SEEN.format(column="changed")})
       AND EXISTS (SELECT FROM {SCHEMA}.{incremental.roster} WHERE coach_id = %(coach_id)s
                   AND (changed IS NULL OR {_SEEN.format(column="changed")})),
       ARRAY({changed})
    """


_SQL: dict[str, tuple[str, str]] = {}

MIN_LINES = 100
"""A base with fewer lines is not worth it: the value is read in full. Reading a line costs
about 15 µs (its summaries' rows, its text, its Python dict; the 1M-session whale's 500 lines:
9.2 ms of 12.5 ms), checking the stamps one statement more and the commit one round trip more
(1-1.5 ms): a coach of 20 clients read 1.8 ms in full against 3.2 ms incrementally."""


def _sql(aggregate: Aggregate, connection: Connection) -> tuple[str, str]:
    """(changed, lines) SQL of an incremental aggregate, compiled once."""
    incremental = aggregate.incremental
    assert incremental is not None
    if aggregate.name not in _SQL:
        lines = driver_sql(incremental.lines, connection.dialect)
        _SQL[aggregate.name] = (changed_sql(incremental), lines)
    return _SQL[aggregate.name]


@dataclass
class Reading:
    """One coach's base on its way: its stamps checked, then its changed lines read."""

    aggregate: Aggregate
    coach: UUID
    base: Base
    check: Any
    """The cursor of `changed_sql`, sent in the snapshot's first round trip."""
    ids: list[str] = field(default_factory=list)
    lines: Any = None
    """The cursor of the lines of `ids` (none when no line changed)."""

    @property
    def incremental(self) -> Incremental:
        assert self.aggregate.incremental is not None
        return self.aggregate.incremental


def send_checks(
    connection: Connection,
    aggregates: Sequence[Aggregate],
    bases: Mapping[str, Mapping[UUID, Base]],
    min_lines: int = MIN_LINES,
) -> list[Reading]:
    """Send, inside the caller's pipeline, the stamp check of every base worth it (`min_lines`
    lines or more) of an incremental aggregate; fetch them once the pipeline is synced
    (`plan`)."""
    driver = psycopg_connection(connection)
    return [
        Reading(
            aggregate,
            coach,
            base,
            driver.execute(
                _sql(aggregate, connection)[0], {"coach_id": coach, "snapshot": base.snapshot}
            ),
        )
        for aggregate in aggregates
        if aggregate.incremental is not None
        for coach, base in bases.get(aggregate.name, {}).items()
        if len(aggregate.incremental.listed(base.value)) >= min_lines
    ]


def plan(readings: Sequence[Reading], as_of: datetime) -> list[Reading]:
    """The readings whose base serves at clock `as_of` (its stamps checked, its clock not
    ahead), each with the IDs of its lines to read again; the others are read in full."""
    planned = []
    for reading in readings:
        row = reading.check.fetchone()
        name = reading.aggregate.name
        if row is None or row[0] is not True or reading.base.as_of > as_of:
            metrics.INCREMENTAL_RECOMPUTES.labels(name, "full").inc()
            continue
        listed = reading.incremental.listed(reading.base.value)
        stale = set(row[1]) | reading.incremental.clocked(reading.base.value, as_of)
        reading.ids = sorted(stale & set(listed))
        planned.append(reading)
    return planned


def served_coaches(planned: Sequence[Reading]) -> dict[str, set[UUID]]:
    """By aggregate name, the coaches a planned reading serves (left out of the full read)."""
    served: dict[str, set[UUID]] = {}
    for reading in planned:
        served.setdefault(reading.aggregate.name, set()).add(reading.coach)
    return served


def send_lines(connection: Connection, planned: Sequence[Reading], as_of: datetime) -> None:
    """Send, inside the caller's pipeline, the read of every planned reading's changed lines."""
    driver = psycopg_connection(connection)
    for reading in planned:
        if reading.ids:
            reading.lines = driver.cursor(row_factory=namedtuple_row).execute(
                _sql(reading.aggregate, connection)[1],
                {"coach_ids": [reading.coach], "as_of": as_of, "client_ids": reading.ids},
            )


def merged(planned: Sequence[Reading]) -> tuple[dict[str, dict[UUID, JSONValue]], list[Reading]]:
    """(values by aggregate name and coach, the readings whose lines did not all come back: a
    listed client gone, which the roster's stamp should have told; read them in full)."""
    values: dict[str, dict[UUID, JSONValue]] = {}
    missed = []
    for reading in planned:
        rows: list[Any] = reading.lines.fetchall() if reading.lines is not None else []
        name = reading.aggregate.name
        if {row.id for row in rows} != set(reading.ids):
            metrics.INCREMENTAL_RECOMPUTES.labels(name, "full").inc()
            missed.append(reading)
            continue
        metrics.INCREMENTAL_RECOMPUTES.labels(name, "incremental").inc()
        metrics.INCREMENTAL_LINES.labels(name).observe(len(reading.ids))
        values.setdefault(name, {})[reading.coach] = reading.incremental.merge(
            reading.base.value, rows
        )
    return values, missed
