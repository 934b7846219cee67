"""`coach-trends` (secondary): twelve weekly buckets and client retention, refreshed by beat."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Numeric, func, literal, select

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


_completed = sessions.c.status == "completed"
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
    .where(sessions.c.coach_id == func.any(COACH_IDS), _completed, _recent | _previous)
    .group_by(sessions.c.coach_id, sessions.c.client_id)
    .subquery("per_client")
)
RETENTION = select(
    _per_client.c.coach_id,
    func.count().filter(_per_client.c.recent).label("active_clients_28d"),
    func.count().filter(_per_client.c.previous).label("active_clients_prev_28d"),
    func.count().filter(_per_client.c.recent, _per_client.c.previous).label("retained"),
).group_by(_per_client.c.coach_id)


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
    statements={"sessions": SESSIONS_BY_WEEK, "ratings": RATINGS_BY_WEEK, "retention": RETENTION},
    assemble=_assemble,
    empty=_empty,
    description=f"{WEEKS} weekly buckets of completed sessions, revenue and average rating; "
    "client retention over 28 days",
)
