"""Sums over a time window from hourly summary buckets plus the base rows at its two edges.

A window (as_of - start, as_of - end] is the whole hourly buckets strictly inside it, read from
a summary (`pipeline.summaries`: at most 24 rows a day of window, whatever the history), plus
the base rows in the partial buckets at its edges, read by an index on (coach_id, moment):
at most one bucket's rows at each edge. The result is exactly the sum over the base rows in
the window, for any clock, so the clock tick only has to know when to recompute (unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Table,
    and_,
    func,
    literal_column,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql.selectable import LateralFromClause

from pipeline.aggregates.base import AS_OF, THIRTY_DAYS
from pipeline.summaries import BUCKET, BUCKET_ORIGIN, completed_hours
from pipeline.tables import sessions

COMPLETED: ColumnElement[bool] = sessions.c.status == "completed"
"""The sessions `summaries.completed_hours` counts (its trigger's filter)."""

_STRIDE: ColumnElement[Any] = literal_column(f"interval '{BUCKET.total_seconds():.0f} seconds'")
_ORIGIN: ColumnElement[Any] = literal_column(f"timestamptz '{BUCKET_ORIGIN}'")


def bucket(moment: ColumnElement[Any]) -> ColumnElement[Any]:
    """The start of `moment`'s bucket, as the summaries' triggers compute it."""
    return func.date_bin(_STRIDE, moment, _ORIGIN, type_=DateTime(timezone=True))


def windowed(
    name: str,
    coach: ColumnElement[Any],
    *,
    hours: Table,
    base: Table,
    moment: ColumnElement[Any],
    rows: ColumnElement[bool],
    sums: Mapping[str, tuple[str, ColumnElement[Any]]],
    start: timedelta,
    end: timedelta | None,
) -> LateralFromClause:
    """A lateral subquery with one bigint column per `sums` entry, summed over the window.

    `sums` maps an output label to (the hourly summary's column, what one base row adds).
    `rows` picks the base rows the summary counts (the same filter as its trigger), `moment`
    is their time column. The window is (as_of - start, as_of - end], or (as_of - start, ∞)
    when `end` is None. It must be longer than a bucket.
    """
    low = AS_OF - start
    low_edge = and_(moment > low, moment < bucket(low) + BUCKET)
    inside = [hours.c.coach_id == coach, hours.c.hour > bucket(low)]
    if end is None:
        edges = low_edge
    else:
        high = AS_OF - end
        inside.append(hours.c.hour < bucket(high))
        edges = or_(low_edge, and_(moment >= bucket(high), moment <= high))
    parts = union_all(
        select(*(hours.c[column].label(label) for label, (column, _) in sums.items()))
        .where(*inside)
        .correlate_except(hours),
        select(*(value.label(label) for label, (_, value) in sums.items()))
        .where(base.c.coach_id == coach, rows, edges)
        .correlate_except(base),
    ).subquery(f"{name}_parts")
    return select(
        *(
            func.coalesce(func.sum(parts.c[label]), 0).cast(BigInteger).label(label)
            for label in sums
        )
    ).lateral(name)


def completed_last_30_days(
    name: str, coach: ColumnElement[Any], sums: Mapping[str, tuple[str, ColumnElement[Any]]]
) -> LateralFromClause:
    """`windowed` over the coach's sessions completed in the last 30 days (coach-stats'
    count, coach-insights' revenue)."""
    return windowed(
        name,
        coach,
        hours=completed_hours,
        base=sessions,
        moment=sessions.c.completed_at,
        rows=COMPLETED,
        sums=sums,
        start=THIRTY_DAYS,
        end=timedelta(0),
    )
