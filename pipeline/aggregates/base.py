"""What an aggregate is, and the few SQL building blocks every aggregate shares.

An aggregate is declared once: its name, whether it is critical (kept fresh by events) or
secondary (refreshed by beat), the tables it reads, its statements and how their rows become one
JSON value per coach. Every statement takes the same two parameters, `:coach_ids` (a batch) and
`:as_of` (the clock the value is computed for), so one code path serves a realtime recompute of
three coaches and a beat refresh of five hundred.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    DateTime,
    Row,
    Select,
    TableValuedAlias,
    Uuid,
    bindparam,
    column,
    func,
)
from sqlalchemy.engine import Connection

JSONValue = dict[str, Any]
Rows = Sequence[Row[Any]]

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


def number(value: Decimal | float | None) -> float | None:
    """A rounded SQL numeric as a JSON number (None stays None)."""
    return None if value is None else float(value)


def text_id(value: UUID | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class TimeBoundary:
    """A row starts or stops counting when `as_of` passes `column + offset` (for some offset).

    The clock tick (pipeline.clock) recomputes exactly the coaches with such a crossing, so
    time-dependent fields ("upcoming", "last 30 days") stay right without any row changing.
    """

    table: str
    column: str
    offsets: tuple[timedelta, ...]
    where: str = ""


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

    def compute(
        self, connection: Connection, coach_ids: Sequence[UUID], as_of: datetime
    ) -> dict[UUID, JSONValue]:
        """One JSON value per requested coach, an empty one for a coach with no rows.

        Run it inside one REPEATABLE READ transaction (pipeline.recompute does) so that every
        statement sees the same snapshot.
        """
        params = {"coach_ids": list(coach_ids), "as_of": as_of}
        rows = {
            name: connection.execute(stmt, params).all() for name, stmt in self.statements.items()
        }
        values = self.assemble(rows, as_of)
        return {coach_id: values.get(coach_id) or self.empty(as_of) for coach_id in coach_ids}
