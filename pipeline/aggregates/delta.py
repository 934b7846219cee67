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
after random changes. Delivery stays at-least-once: a replay reads the same lines again, a
stale write is refused by the version compare-and-set as before.

Transaction IDs identify a write only within one run of one server: a failover to a standby
that had not received every commit, a point-in-time recovery or a crash that lost commits
(asynchronous ones) hands some out again. So the snapshot is stored with the server's run
(`SnapshotId`: its start, and the reset of its statistics that every crash recovery makes), and
a base from another run is read in full. And it is stored with the value's version
(`pipeline.stored`): a worker of an earlier release rewrites the value without the field, and
the snapshot left there then belongs to another value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import structlog
from psycopg.rows import namedtuple_row
from sqlalchemy.engine import Connection

from pipeline import metrics
from pipeline.aggregates.base import Aggregate, Incremental, JSONValue
from pipeline.db import psycopg_connection
from pipeline.summaries import SCHEMA, STAMP_COLUMN
from pipeline.summary_sql import STATE_TABLE

log = structlog.get_logger("pipeline.aggregates.delta")


@dataclass(frozen=True)
class SnapshotId:
    """Which snapshot of which server run a value was computed from: `pg_current_snapshot()`
    (`xmin:xmax:xip_list`) and the run, `pg_postmaster_start_time()` with the time the
    server's statistics were last reset (`pg_stat_get_bgwriter_stat_reset_time()`, which crash
    recovery after a backend's crash resets without a new postmaster), as Postgres prints them.
    Stored as one text (`encode`) beside the value (`pipeline.stored`)."""

    snapshot: str
    server: str

    def encode(self) -> str:
        return f"{self.snapshot}@{self.server}"

    @classmethod
    def decode(cls, text: str) -> SnapshotId | None:
        """The stored text read back; None unless Postgres would accept the snapshot (ASCII
        digits, `xmin <= xmax < 2^63`, every ID's low 32 bits not 0, in-progress IDs ascending
        in `[xmin, xmax)`: `parse_snapshot` in Postgres's xid8funcs.c), so a bad one never
        aborts a recompute."""
        snapshot, _, server = text.partition("@")
        if not server or not _SNAPSHOT.fullmatch(snapshot):
            return None
        xmin_text, xmax_text, listed = snapshot.split(":")
        xmin, xmax = int(xmin_text), int(xmax_text)
        ids = [int(x) for x in listed.split(",")] if listed else []
        valid = all(x % 2**32 != 0 for x in (xmin, xmax, *ids))
        if not valid or not xmin <= xmax < 2**63 or ids != sorted(set(ids)):
            return None
        return cls(snapshot, server) if all(xmin <= x < xmax for x in ids) else None


_SNAPSHOT = re.compile(r"[0-9]{1,19}:[0-9]{1,19}:(?:[0-9]{1,19}(?:,[0-9]{1,19})*)?")


@dataclass(frozen=True)
class Base:
    """A stored value an incremental recompute may start from (`pipeline.stored`)."""

    value: JSONValue
    as_of: datetime
    taken: SnapshotId


_SEEN = f"pg_visible_in_snapshot({STAMP_COLUMN}, %(snapshot)s::pg_snapshot)"


def changed_sql(incremental: Incremental) -> str:
    """One row: whether a base taken at `%(snapshot)s` may serve for `%(coach_id)s` at this
    transaction's snapshot, and the client IDs (text) whose rows were written since."""
    changed = " UNION ".join(
        f"SELECT client_id::text FROM {SCHEMA}.{table} WHERE coach_id = %(coach_id)s"
        f" AND NOT {_SEEN}"
        for table in incremental.by_client
    )
    return f"""
    SELECT pg_snapshot_xmax(%(snapshot)s::pg_snapshot) <= pg_snapshot_xmax(pg_current_snapshot())
       AND EXISTS (SELECT FROM {STATE_TABLE} WHERE {_SEEN})
       AND EXISTS (SELECT FROM {SCHEMA}.{incremental.roster} WHERE coach_id = %(coach_id)s
                   AND ({STAMP_COLUMN} IS NULL OR {_SEEN})),
       ARRAY({changed})
    """


_CHANGED_SQL: dict[str, str] = {}


def _changed_sql(aggregate: Aggregate) -> str:
    """`changed_sql` of an incremental aggregate, built once."""
    if aggregate.name not in _CHANGED_SQL:
        assert aggregate.incremental is not None
        _CHANGED_SQL[aggregate.name] = changed_sql(aggregate.incremental)
    return _CHANGED_SQL[aggregate.name]


MIN_LINES = 100
"""A base with fewer lines is not worth it: the value is read in full. Reading a line costs
about 15 µs (its summaries' rows, its text, its Python dict; the 1M-session whale's 500 lines:
9.2 ms of 12.5 ms), checking the stamps one statement more (a range scan of the coach's rows
of three summaries, 1 ms for the whale): a coach of 20 clients read 1.8 ms in full against
3.2 ms incrementally."""


@dataclass
class Reading:
    """One coach's base on its way: its stamps checked, then its changed lines read."""

    aggregate: Aggregate
    coach: UUID
    base: Base
    check: psycopg.Cursor[Any]
    """The cursor of `changed_sql`, sent in the snapshot's first round trip."""
    ids: list[UUID] = field(default_factory=list)
    lines: psycopg.Cursor[Any] | None = None
    """The cursor of the lines of `ids` (none when no line changed)."""

    @property
    def incremental(self) -> Incremental:
        """The aggregate's `Incremental` (every reading is of an incremental aggregate)."""
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
                _changed_sql(aggregate),
                {"coach_id": coach, "snapshot": base.taken.snapshot},
            ),
        )
        for aggregate in aggregates
        if aggregate.incremental is not None
        for coach, base in bases.get(aggregate.name, {}).items()
        if _lines(aggregate.incremental, base.value) >= min_lines
    ]


UNREADABLE = (KeyError, TypeError, ValueError, AttributeError)
"""What reading a stored value's lines raises when it is not a value this release wrote."""


def _lines(incremental: Incremental, value: JSONValue) -> int:
    """How many lines a stored value lists; 0 when it cannot be read (it is then read in full)."""
    try:
        return len(incremental.listed(value))
    except UNREADABLE:
        return 0


def plan(readings: Sequence[Reading], as_of: datetime, server: str) -> list[Reading]:
    """The readings whose base serves at clock `as_of` on the server run `server` (its stamps
    checked, its clock not ahead, its lines readable), each with the IDs of its lines to read
    again; the others are read in full."""
    planned = []
    for reading in readings:
        row = reading.check.fetchone()
        base = reading.base
        if (
            row is not None
            and row[0] is True
            and base.taken.server == server
            and base.as_of <= as_of
        ):
            try:
                listed = set(reading.incremental.listed(base.value))
                stale = (set(row[1]) | reading.incremental.clocked(base.value, as_of)) & listed
                reading.ids = sorted(UUID(client) for client in stale)
            except UNREADABLE:
                log.warning("incremental_base_unreadable", aggregate=reading.aggregate.name)
            else:
                planned.append(reading)
                continue
        metrics.INCREMENTAL_RECOMPUTES.labels(reading.aggregate.name, "full").inc()
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
                reading.aggregate.compiled_lines(connection.dialect),
                {"coach_ids": [reading.coach], "as_of": as_of, "client_ids": reading.ids},
            )


def merged(planned: Sequence[Reading]) -> tuple[dict[str, dict[UUID, JSONValue]], list[Reading]]:
    """(values by aggregate name and coach, the readings that could not be completed: a listed
    client's line did not come back, which the roster's stamp should have told, or the stored
    value could not be merged; the caller reads those in full)."""
    values: dict[str, dict[UUID, JSONValue]] = {}
    missed = []
    for reading in planned:
        rows: list[Any] = reading.lines.fetchall() if reading.lines is not None else []
        name = reading.aggregate.name
        try:
            if {row.id for row in rows} != {str(client) for client in reading.ids}:
                raise KeyError("a listed client's line did not come back")
            value = reading.incremental.merge(reading.base.value, rows)
        except UNREADABLE:
            metrics.INCREMENTAL_RECOMPUTES.labels(name, "full").inc()
            missed.append(reading)
            continue
        metrics.INCREMENTAL_RECOMPUTES.labels(name, "incremental").inc()
        metrics.INCREMENTAL_LINES.labels(name).observe(len(reading.ids))
        values.setdefault(name, {})[reading.coach] = value
    return values, missed
