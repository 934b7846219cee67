"""`coach-trends` (secondary): twelve weekly buckets and client retention, refreshed by beat.

The weekly sums come from the hourly summaries (`completed_hours`, `rating_hours`) plus the
base rows of the current hour; retention counts distinct clients, which no summary holds, so
it reads the 56 days of completed sessions it needs by index, not the whole history.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, Numeric, cast, func, literal, select, true, union_all

from pipeline.aggregates.base import (
    AS_OF,
    COACH_IDS,
    Aggregate,
    JSONValue,
    Kind,
    Rows,
    number,
    within,
)
from pipeline.aggregates.windows import COMPLETED, bucket
from pipeline.summaries import completed_hours, rating_hours
from pipeline.tables import session_ratings, sessions

WEEKS = 12
RETENTION_WINDOW = timedelta(days=28)

# Weeks are ISO weeks (Monday 00:00) in UTC, whatever the session's TimeZone.
_window_start = func.timezone(
    "UTC",
    func.date_trunc("week", func.timezone("UTC", AS_OF)) - literal(timedelta(weeks=WEEKS - 1)),
)


def _week_of(moment: Any) -> Any:
    return func.date_trunc("week", func.timezone("UTC", moment)).label("week")


_completed = COMPLETED
_session_week = _week_of(sessions.c.completed_at)
SESSIONS_BY_WEEK = (
    select(
        sessions.c.coach_id,
        _session_week,
        func.count().label("completed_sessions"),
        func.coalesce(func.sum(sessions.c.price_cents), 0).label("revenue_cents"),
    )
    .where(
        sessions.c.coach_id == func.any(COACH_IDS),
        _completed,
        sessions.c.completed_at >= _window_start,
        sessions.c.completed_at <= AS_OF,
    )
    .group_by(sessions.c.coach_id, _session_week)
)
_rating_week = _week_of(session_ratings.c.created_at)
RATINGS_BY_WEEK = (
    select(
        session_ratings.c.coach_id,
        _rating_week,
        func.count().label("count"),
        func.round(func.avg(session_ratings.c.rating).cast(Numeric), 2).label("average"),
    )
    .where(
        session_ratings.c.coach_id == func.any(COACH_IDS),
        session_ratings.c.created_at >= _window_start,
        session_ratings.c.created_at <= AS_OF,
    )
    .group_by(session_ratings.c.coach_id, _rating_week)
)
_recent = within(sessions.c.completed_at, RETENTION_WINDOW, timedelta(0))
_previous = within(sessions.c.completed_at, 2 * RETENTION_WINDOW, RETENTION_WINDOW)
_per_client = (
    select(
        sessions.c.coach_id,
        func.bool_or(_recent).label("recent"),
        func.bool_or(_previous).label("previous"),
    )
    .where(
        sessions.c.coach_id == func.any(COACH_IDS),
        _completed,
        # _recent | _previous as one range: an index range scan of 56 days, not the history.
        within(sessions.c.completed_at, 2 * RETENTION_WINDOW, timedelta(0)),
    )
    .group_by(sessions.c.coach_id, sessions.c.client_id)
    .subquery("per_client")
)
RETENTION = select(
    _per_client.c.coach_id,
    func.count().filter(_per_client.c.recent).label("active_clients_28d"),
    func.count().filter(_per_client.c.previous).label("active_clients_prev_28d"),
    func.count().filter(_per_client.c.recent, _per_client.c.previous).label("retained"),
).group_by(_per_client.c.coach_id)


def _by_week(
    hours: Any, base: Any, moment: Any, rows: Any, sums: dict[str, tuple[str, Any]]
) -> Any:
    """Per coach and week, `sums` over the window [week 1's Monday, as_of]: the hourly summary's
    whole buckets before the current hour, plus the base rows of the current hour up to as_of
    (one bucket, by index). A bucket lies inside one week, as weeks start on a whole hour.

    `sums` maps an output label to (the hourly summary's column, what one base row adds).
    """
    now = bucket(AS_OF)
    parts = union_all(
        select(
            hours.c.coach_id,
            hours.c.hour.label("moment"),
            *(hours.c[column].label(label) for label, (column, _) in sums.items()),
        ).where(
            hours.c.coach_id == func.any(COACH_IDS),
            hours.c.hour >= _window_start,
            hours.c.hour < now,
        ),
        select(
            base.c.coach_id,
            moment.label("moment"),
            *(value.label(label) for label, (_, value) in sums.items()),
        ).where(base.c.coach_id == func.any(COACH_IDS), rows, moment >= now, moment <= AS_OF),
    ).subquery("parts")
    week = _week_of(parts.c.moment)
    return (
        select(
            parts.c.coach_id,
            week,
            *(func.sum(parts.c[label]).cast(BigInteger).label(label) for label in sums),
        )
        .group_by(parts.c.coach_id, week)
        .having(func.sum(parts.c[next(iter(sums))]) != 0)
    )


_sessions_weekly = _by_week(
    completed_hours,
    sessions,
    sessions.c.completed_at,
    _completed,
    {
        "completed_sessions": ("sessions", literal(1, BigInteger)),
        "revenue_cents": ("revenue", func.coalesce(sessions.c.price_cents, 0).cast(BigInteger)),
    },
)
_ratings_weekly = _by_week(
    rating_hours,
    session_ratings,
    session_ratings.c.created_at,
    true(),
    {
        "count": ("count", literal(1, BigInteger)),
        "total": ("total", cast(session_ratings.c.rating, BigInteger)),
    },
).subquery("weekly")
SUMMARY_SESSIONS_BY_WEEK = _sessions_weekly
"""SESSIONS_BY_WEEK from `completed_hours`: at most 2,016 rows (12 weeks of hours) a coach."""
SUMMARY_RATINGS_BY_WEEK = select(
    _ratings_weekly.c.coach_id,
    _ratings_weekly.c.week,
    _ratings_weekly.c.count,
    func.round(_ratings_weekly.c.total.cast(Numeric) / _ratings_weekly.c.count, 2).label("average"),
)
"""RATINGS_BY_WEEK from `rating_hours`: the average as total / count (what avg computes)."""


def week_starts(as_of: datetime) -> list[date]:
    """The Mondays of the twelve weeks ending with the week of `as_of`, oldest first."""
    today = as_of.astimezone(UTC).date()
    monday = today - timedelta(days=today.weekday())
    return [monday - timedelta(weeks=back) for back in range(WEEKS - 1, -1, -1)]


def _empty(as_of: datetime) -> JSONValue:
    return {
        "weeks": [
            {
                "week_start": monday.isoformat(),
                "completed_sessions": 0,
                "revenue_cents": 0,
                "rating": {"average": None, "count": 0},
            }
            for monday in week_starts(as_of)
        ],
        "retention": {
            "active_clients_28d": 0,
            "active_clients_prev_28d": 0,
            "retained": 0,
            "rate": None,
        },
    }


def _assemble(rows: Mapping[str, Rows], as_of: datetime) -> dict[UUID, JSONValue]:
    values: dict[UUID, JSONValue] = {}
    position = {monday: index for index, monday in enumerate(week_starts(as_of))}

    def week(coach_id: UUID, start: datetime) -> JSONValue:
        value = values.setdefault(coach_id, _empty(as_of))
        return value["weeks"][position[start.date()]]  # type: ignore[no-any-return]

    for row in rows["sessions"]:
        bucket = week(row.coach_id, row.week)
        bucket["completed_sessions"] = row.completed_sessions
        bucket["revenue_cents"] = row.revenue_cents
    for row in rows["ratings"]:
        week(row.coach_id, row.week)["rating"] = {
            "average": number(row.average),
            "count": row.count,
        }
    for row in rows["retention"]:
        retention = values.setdefault(row.coach_id, _empty(as_of))["retention"]
        previous = row.active_clients_prev_28d
        retention |= {
            "active_clients_28d": row.active_clients_28d,
            "active_clients_prev_28d": previous,
            "retained": row.retained,
            "rate": round(row.retained / previous, 4) if previous else None,
        }
    return values


COACH_TRENDS = Aggregate(
    name="coach-trends",
    kind=Kind.SECONDARY,
    schema_version=1,
    tables=frozenset({"sessions", "session_ratings"}),
    statements={
        "sessions": SUMMARY_SESSIONS_BY_WEEK,
        "ratings": SUMMARY_RATINGS_BY_WEEK,
        "retention": RETENTION,
    },
    scan_statements={
        "sessions": SESSIONS_BY_WEEK,
        "ratings": RATINGS_BY_WEEK,
        "retention": RETENTION,
    },
    assemble=_assemble,
    empty=_empty,
    description=f"{WEEKS} weekly buckets of completed sessions, revenue and average rating; "
    "client retention over 28 days",
)
