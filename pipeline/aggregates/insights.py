"""`coach-insights`: ratings over time, revenue, goal outcomes and the latest feedback."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, Numeric, cast, func, literal, select, true

from pipeline.aggregates.base import (
    THIRTY_DAYS,
    Aggregate,
    JSONValue,
    Kind,
    Rows,
    TimeBoundary,
    coach_set,
    coach_summary,
    iso,
    number,
    text_id,
    within,
    zero,
)
from pipeline.aggregates.windows import COMPLETED, completed_last_30_days, windowed
from pipeline.summaries import (
    goal_counts,
    rating_counts,
    rating_hours,
    session_counts,
)
from pipeline.tables import goals, session_feedback, session_ratings, sessions

LATEST_FEEDBACK = 5
GOAL_STATUSES = ("active", "completed", "abandoned")
SIXTY_DAYS = 2 * THIRTY_DAYS

_coach = coach_set()
_rating = session_ratings.c.rating


def _rating_window(start: timedelta, end: timedelta, label: str) -> list[Any]:
    in_window = within(session_ratings.c.created_at, start, end)
    return [
        func.count().filter(in_window).label(f"{label}_count"),
        func.round(func.avg(_rating).filter(in_window).cast(Numeric), 2).label(f"{label}_average"),
    ]


_ratings = (
    select(
        *(func.count().filter(_rating == stars).label(f"stars_{stars}") for stars in range(1, 6)),
        *_rating_window(THIRTY_DAYS, timedelta(0), "last_30d"),
        *_rating_window(SIXTY_DAYS, THIRTY_DAYS, "prev_30d"),
    )
    .where(session_ratings.c.coach_id == _coach.c.coach_id)
    .lateral("r")
)
_revenue = (
    select(
        func.coalesce(
            func.sum(sessions.c.price_cents).filter(
                COMPLETED, within(sessions.c.completed_at, THIRTY_DAYS, timedelta(0))
            ),
            0,
        ).label("last_30d"),
        func.coalesce(func.sum(sessions.c.price_cents).filter(COMPLETED), 0).label("total"),
    )
    .where(sessions.c.coach_id == _coach.c.coach_id)
    .lateral("s")
)
_goal_count = func.count()
_goals = (
    select(
        _goal_count.label("total"),
        *(func.count().filter(goals.c.status == s).label(s) for s in GOAL_STATUSES),
        func.round(
            func.count().filter(goals.c.status == "completed").cast(Numeric)
            / func.nullif(_goal_count, 0),
            4,
        ).label("completion_rate"),
        func.round(
            func.avg(goals.c.progress).filter(goals.c.status == "active").cast(Numeric), 2
        ).label("average_progress"),
    )
    .where(goals.c.coach_id == _coach.c.coach_id)
    .lateral("g")
)

SCAN_SUMMARY = (
    select(
        _coach.c.coach_id,
        *(_ratings.c[f"stars_{stars}"] for stars in range(1, 6)),
        *(_ratings.c[f"{w}_{m}"] for w in ("last_30d", "prev_30d") for m in ("count", "average")),
        _revenue.c.last_30d.label("revenue_last_30d"),
        _revenue.c.total.label("revenue_total"),
        *(_goals.c[name].label(f"goals_{name}") for name in ("total", *GOAL_STATUSES)),
        _goals.c.completion_rate.label("goals_completion_rate"),
        _goals.c.average_progress.label("goals_average_progress"),
    )
    .select_from(_coach)
    .join(_ratings, true())
    .join(_revenue, true())
    .join(_goals, true())
)


def _ratings_in(name: str, start: timedelta, end: timedelta) -> Any:
    return windowed(
        name,
        _coach.c.coach_id,
        hours=rating_hours,
        base=session_ratings,
        moment=session_ratings.c.created_at,
        rows=true(),
        sums={
            "count": ("count", literal(1, BigInteger)),
            "total": ("total", cast(_rating, BigInteger)),
        },
        start=start,
        end=end,
    )


def _average(total: Any, count: Any) -> Any:
    return func.round(total.cast(Numeric) / func.nullif(count, 0), 2)


_last_30d = _ratings_in("last_30d", THIRTY_DAYS, timedelta(0))
_prev_30d = _ratings_in("prev_30d", SIXTY_DAYS, THIRTY_DAYS)
_revenue_30d = completed_last_30_days(
    "revenue_30d",
    _coach.c.coach_id,
    {"revenue": ("revenue", func.coalesce(sessions.c.price_cents, 0).cast(BigInteger))},
)


_rating_counts = coach_summary(rating_counts, _coach)
_session_counts = coach_summary(session_counts, _coach)
_goal_counts = coach_summary(goal_counts, _coach)

SUMMARY = (
    select(
        _coach.c.coach_id,
        *(
            zero(_rating_counts.c[f"stars_{stars}"]).label(f"stars_{stars}")
            for stars in range(1, 6)
        ),
        *(
            column
            for window, name in ((_last_30d, "last_30d"), (_prev_30d, "prev_30d"))
            for column in (
                window.c.count.label(f"{name}_count"),
                _average(window.c.total, window.c.count).label(f"{name}_average"),
            )
        ),
        _revenue_30d.c.revenue.label("revenue_last_30d"),
        zero(_session_counts.c.completed_revenue).label("revenue_total"),
        *(zero(_goal_counts.c[name]).label(f"goals_{name}") for name in ("total", *GOAL_STATUSES)),
        func.round(
            _goal_counts.c.completed.cast(Numeric) / func.nullif(_goal_counts.c.total, 0), 4
        ).label("goals_completion_rate"),
        _average(_goal_counts.c.active_progress, _goal_counts.c.active).label(
            "goals_average_progress"
        ),
    )
    .select_from(_coach)
    .outerjoin(_rating_counts, true())
    .outerjoin(_session_counts, true())
    .outerjoin(_goal_counts, true())
    .join(_last_30d, true())
    .join(_prev_30d, true())
    .join(_revenue_30d, true())
)
"""The same values from the summaries: counts and sums per coach, windows from hourly buckets."""

_latest = (
    select(
        session_feedback.c.id,
        session_feedback.c.session_id,
        session_feedback.c.client_id,
        session_feedback.c.comment,
        session_feedback.c.created_at,
    )
    .where(session_feedback.c.coach_id == _coach.c.coach_id)
    .order_by(session_feedback.c.created_at.desc(), session_feedback.c.id)
    .limit(LATEST_FEEDBACK)
    .lateral("lf")
)
LATEST = (
    select(_coach.c.coach_id, _latest)
    .select_from(_coach)
    .join(_latest, true())
    .order_by(_coach.c.coach_id, _latest.c.created_at.desc(), _latest.c.id)
)


def _summary(row: Any) -> JSONValue:
    return {
        "rating_distribution": {str(stars): row[f"stars_{stars}"] for stars in range(1, 6)},
        "rating_30d": {
            "average": number(row["last_30d_average"]),
            "count": row["last_30d_count"],
        },
        "rating_prev_30d": {
            "average": number(row["prev_30d_average"]),
            "count": row["prev_30d_count"],
        },
        "revenue_cents": {"last_30d": row["revenue_last_30d"], "total": row["revenue_total"]},
        "goals": {
            **{name: row[f"goals_{name}"] for name in ("total", *GOAL_STATUSES)},
            "completion_rate": number(row["goals_completion_rate"]),
            "average_progress": number(row["goals_average_progress"]),
        },
        "latest_feedback": [],
    }


def _assemble(rows: Mapping[str, Rows], as_of: datetime) -> dict[UUID, JSONValue]:
    values = {row.coach_id: _summary(row._asdict()) for row in rows["summary"]}
    for row in rows["latest_feedback"]:
        values[row.coach_id]["latest_feedback"].append(
            {
                "id": str(row.id),
                "session_id": text_id(row.session_id),
                "client_id": text_id(row.client_id),
                "comment": row.comment,
                "at": iso(row.created_at),
            }
        )
    return values


def _empty(as_of: datetime) -> JSONValue:
    zeros: dict[str, Any] = {f"stars_{stars}": 0 for stars in range(1, 6)}
    zeros |= {f"{w}_count": 0 for w in ("last_30d", "prev_30d")}
    zeros |= {f"{w}_average": None for w in ("last_30d", "prev_30d")}
    zeros |= {"revenue_last_30d": 0, "revenue_total": 0}
    zeros |= {f"goals_{name}": 0 for name in ("total", *GOAL_STATUSES)}
    zeros |= {"goals_completion_rate": None, "goals_average_progress": None}
    return _summary(zeros)


COACH_INSIGHTS = Aggregate(
    name="coach-insights",
    kind=Kind.CRITICAL,
    schema_version=1,
    tables=frozenset({"session_ratings", "sessions", "goals", "session_feedback"}),
    statements={"summary": SUMMARY, "latest_feedback": LATEST},
    scan_statements={"summary": SCAN_SUMMARY, "latest_feedback": LATEST},
    assemble=_assemble,
    empty=_empty,
    description="rating distribution, rating in the last 30 days vs the 30 before, revenue "
    "(30 days and total), goal completion and progress, latest feedback",
    time_boundaries=(
        TimeBoundary("session_ratings", "created_at", (timedelta(0), THIRTY_DAYS, SIXTY_DAYS)),
        TimeBoundary(
            "sessions", "completed_at", (timedelta(0), THIRTY_DAYS), "status = 'completed'"
        ),
    ),
)
