"""`coach-stats`: the headline numbers of a coach's dashboard."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, Numeric, func, literal, select, true

from pipeline.aggregates.base import (
    AS_OF,
    THIRTY_DAYS,
    Aggregate,
    JSONValue,
    Kind,
    Rows,
    TimeBoundary,
    coach_set,
    coach_summary,
    number,
    within,
    zero,
)
from pipeline.aggregates.windows import COMPLETED, completed_last_30_days, windowed
from pipeline.summaries import (
    client_counts,
    feedback_counts,
    rating_counts,
    scheduled_hours,
    session_counts,
)
from pipeline.tables import session_feedback, session_ratings, sessions, users

SESSION_STATUSES = ("scheduled", "completed", "cancelled", "no_show")
CLIENT_STATUSES = ("active", "paused", "archived")

_coach = coach_set()
_clients = (
    select(
        func.count().label("total"),
        *(func.count().filter(users.c.status == s).label(s) for s in CLIENT_STATUSES),
    )
    .where(users.c.coach_id == _coach.c.coach_id, users.c.role == "client")
    .lateral("u")
)
_sessions = (
    select(
        func.count().label("total"),
        *(func.count().filter(sessions.c.status == s).label(s) for s in SESSION_STATUSES),
        func.count()
        .filter(sessions.c.status == "scheduled", sessions.c.scheduled_at > AS_OF)
        .label("upcoming"),
        func.count()
        .filter(COMPLETED, within(sessions.c.completed_at, THIRTY_DAYS, timedelta(0)))
        .label("completed_30d"),
        func.coalesce(func.sum(sessions.c.duration_minutes).filter(COMPLETED), 0).label(
            "minutes_coached"
        ),
    )
    .where(sessions.c.coach_id == _coach.c.coach_id)
    .lateral("s")
)
_ratings = (
    select(
        func.count().label("count"),
        func.round(func.avg(session_ratings.c.rating).cast(Numeric), 2).label("average"),
    )
    .where(session_ratings.c.coach_id == _coach.c.coach_id)
    .lateral("r")
)
_feedback = (
    select(func.count().label("count"))
    .where(session_feedback.c.coach_id == _coach.c.coach_id)
    .lateral("f")
)

SCAN_STATEMENT = (
    select(
        _coach.c.coach_id,
        *(_clients.c[name].label(f"clients_{name}") for name in ("total", *CLIENT_STATUSES)),
        *(
            _sessions.c[name].label(f"sessions_{name}")
            for name in ("total", *SESSION_STATUSES, "upcoming", "completed_30d", "minutes_coached")
        ),
        _ratings.c.count.label("ratings_count"),
        _ratings.c.average.label("ratings_average"),
        _feedback.c.count.label("feedback_count"),
    )
    .select_from(_coach)
    .join(_clients, true())
    .join(_sessions, true())
    .join(_ratings, true())
    .join(_feedback, true())
)


_upcoming = windowed(
    "upcoming",
    _coach.c.coach_id,
    hours=scheduled_hours,
    base=sessions,
    moment=sessions.c.scheduled_at,
    rows=sessions.c.status == "scheduled",
    sums={"sessions": ("sessions", literal(1, BigInteger))},
    start=timedelta(0),
    end=None,
)
_completed_30d = completed_last_30_days(
    "completed_30d", _coach.c.coach_id, {"sessions": ("sessions", literal(1, BigInteger))}
)


_client_counts = coach_summary(client_counts, _coach)
_session_counts = coach_summary(session_counts, _coach)
_rating_counts = coach_summary(rating_counts, _coach)
_feedback_counts = coach_summary(feedback_counts, _coach)

STATEMENT = (
    select(
        _coach.c.coach_id,
        *(
            zero(_client_counts.c[name]).label(f"clients_{name}")
            for name in ("total", *CLIENT_STATUSES)
        ),
        *(
            zero(_session_counts.c[name]).label(f"sessions_{name}")
            for name in ("total", *SESSION_STATUSES)
        ),
        _upcoming.c.sessions.label("sessions_upcoming"),
        _completed_30d.c.sessions.label("sessions_completed_30d"),
        zero(_session_counts.c.completed_minutes).label("sessions_minutes_coached"),
        zero(_rating_counts.c.count).label("ratings_count"),
        func.round(
            _rating_counts.c.total.cast(Numeric) / func.nullif(_rating_counts.c.count, 0), 2
        ).label("ratings_average"),
        zero(_feedback_counts.c.count).label("feedback_count"),
    )
    .select_from(_coach)
    .outerjoin(_client_counts, true())
    .outerjoin(_session_counts, true())
    .outerjoin(_rating_counts, true())
    .outerjoin(_feedback_counts, true())
    .join(_upcoming, true())
    .join(_completed_30d, true())
)
"""The same values from the summaries: counts and sums per coach, windows from hourly buckets."""


def _value(row: Any) -> JSONValue:
    return {
        "clients": {name: row[f"clients_{name}"] for name in ("total", *CLIENT_STATUSES)},
        "sessions": {name: row[f"sessions_{name}"] for name in ("total", *SESSION_STATUSES)},
        "upcoming": row["sessions_upcoming"],
        "completed_30d": row["sessions_completed_30d"],
        "minutes_coached": row["sessions_minutes_coached"],
        "rating": {"average": number(row["ratings_average"]), "count": row["ratings_count"]},
        "feedback_count": row["feedback_count"],
    }


def _assemble(rows: Mapping[str, Rows], as_of: datetime) -> dict[UUID, JSONValue]:
    return {row.coach_id: _value(row._asdict()) for row in rows["stats"]}


def _empty(as_of: datetime) -> JSONValue:
    zeros: dict[str, Any] = {f"clients_{n}": 0 for n in ("total", *CLIENT_STATUSES)}
    zeros |= {
        f"sessions_{n}": 0
        for n in ("total", *SESSION_STATUSES, "upcoming", "completed_30d", "minutes_coached")
    }
    zeros |= {"ratings_count": 0, "ratings_average": None, "feedback_count": 0}
    return _value(zeros)


COACH_STATS = Aggregate(
    name="coach-stats",
    kind=Kind.CRITICAL,
    schema_version=1,
    tables=frozenset({"users", "sessions", "session_ratings", "session_feedback"}),
    statements={"stats": STATEMENT},
    scan_statements={"stats": SCAN_STATEMENT},
    assemble=_assemble,
    empty=_empty,
    description="client and session counts, upcoming, completed in 30 days, minutes coached, "
    "average rating, rating and feedback counts",
    time_boundaries=(
        TimeBoundary("sessions", "scheduled_at", (timedelta(0),), "status = 'scheduled'"),
        TimeBoundary(
            "sessions", "completed_at", (timedelta(0), THIRTY_DAYS), "status = 'completed'"
        ),
    ),
)
