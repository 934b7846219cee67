"""Every aggregate computed in plain Python from raw rows.

Written from the definitions in the README's aggregate table, independently of the SQL in
`pipeline/aggregates`: it imports nothing from there. The oracle tests compare the two on
generated datasets; the end-to-end tests compare what the pipeline stored in Redis with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID

Row = dict[str, Any]
DAY = timedelta(days=1)


@dataclass
class Dataset:
    users: list[Row] = field(default_factory=list)
    sessions: list[Row] = field(default_factory=list)
    session_feedback: list[Row] = field(default_factory=list)
    session_ratings: list[Row] = field(default_factory=list)
    goals: list[Row] = field(default_factory=list)


def _round(numerator: int | float, denominator: int, places: int) -> float | None:
    if denominator == 0:
        return None
    exact = Decimal(numerator) / Decimal(denominator)
    return float(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def _iso(moment: datetime | date | None) -> str | None:
    if moment is None:
        return None
    if isinstance(moment, datetime):
        return moment.astimezone(UTC).isoformat()
    return moment.isoformat()


def _in(moment: datetime | None, as_of: datetime, start: timedelta, end: timedelta) -> bool:
    return moment is not None and as_of - start < moment <= as_of - end


def _mine(rows: list[Row], coach_id: UUID) -> list[Row]:
    return [row for row in rows if row["coach_id"] == coach_id]


def coach_stats(data: Dataset, coach_id: UUID, as_of: datetime) -> dict[str, Any]:
    clients = [u for u in _mine(data.users, coach_id) if u["role"] == "client"]
    sessions = _mine(data.sessions, coach_id)
    completed = [s for s in sessions if s["status"] == "completed"]
    ratings = [r["rating"] for r in _mine(data.session_ratings, coach_id)]
    return {
        "clients": {
            "total": len(clients),
            **{s: sum(c["status"] == s for c in clients) for s in ("active", "paused", "archived")},
        },
        "sessions": {
            "total": len(sessions),
            **{
                status: sum(s["status"] == status for s in sessions)
                for status in ("scheduled", "completed", "cancelled", "no_show")
            },
        },
        "upcoming": sum(s["status"] == "scheduled" and s["scheduled_at"] > as_of for s in sessions),
        "completed_30d": sum(_in(s["completed_at"], as_of, 30 * DAY, 0 * DAY) for s in completed),
        "minutes_coached": sum(s["duration_minutes"] for s in completed),
        "rating": {"average": _round(sum(ratings), len(ratings), 2), "count": len(ratings)},
        "feedback_count": len(_mine(data.session_feedback, coach_id)),
    }


KIND_ORDER = {"feedback": 0, "goal": 1, "rating": 2, "session": 3}  # alphabetical, as in SQL


def coach_activity(data: Dataset, coach_id: UUID, as_of: datetime) -> dict[str, Any]:
    items: list[tuple[datetime, str, UUID, dict[str, Any]]] = []
    for s in _mine(data.sessions, coach_id):
        details = {"status": s["status"], "scheduled_at": _iso(s["scheduled_at"])}
        items.append(
            (s["updated_at"], "session", s["id"], {"client_id": s["client_id"], **details})
        )
    for f in _mine(data.session_feedback, coach_id):
        details = {"session_id": str(f["session_id"]), "comment": f["comment"][:140]}
        items.append(
            (f["created_at"], "feedback", f["id"], {"client_id": f["client_id"], **details})
        )
    for r in _mine(data.session_ratings, coach_id):
        details = {"session_id": str(r["session_id"]), "rating": r["rating"]}
        items.append((r["created_at"], "rating", r["id"], {"client_id": r["client_id"], **details}))
    for g in _mine(data.goals, coach_id):
        details = {"title": g["title"], "status": g["status"], "progress": g["progress"]}
        items.append((g["updated_at"], "goal", g["id"], {"client_id": g["client_id"], **details}))
    # newest first; ties by kind, then id, both ascending
    items.sort(key=lambda item: (item[1], item[2]))
    items.sort(key=lambda item: item[0], reverse=True)
    return {
        "items": [
            {"kind": kind, "id": str(item_id), "at": _iso(at), **details}
            | {"client_id": str(details["client_id"])}
            for at, kind, item_id, details in items[:20]
        ]
    }


def coach_insights(data: Dataset, coach_id: UUID, as_of: datetime) -> dict[str, Any]:
    ratings = _mine(data.session_ratings, coach_id)
    last = [r["rating"] for r in ratings if _in(r["created_at"], as_of, 30 * DAY, 0 * DAY)]
    prev = [r["rating"] for r in ratings if _in(r["created_at"], as_of, 60 * DAY, 30 * DAY)]
    completed = [s for s in _mine(data.sessions, coach_id) if s["status"] == "completed"]
    goals = _mine(data.goals, coach_id)
    active = [g["progress"] for g in goals if g["status"] == "active"]
    done = sum(g["status"] == "completed" for g in goals)
    feedback = sorted(_mine(data.session_feedback, coach_id), key=lambda f: f["id"])
    feedback.sort(key=lambda f: f["created_at"], reverse=True)
    return {
        "rating_distribution": {
            str(n): sum(r["rating"] == n for r in ratings) for n in range(1, 6)
        },
        "rating_30d": {"average": _round(sum(last), len(last), 2), "count": len(last)},
        "rating_prev_30d": {"average": _round(sum(prev), len(prev), 2), "count": len(prev)},
        "revenue_cents": {
            "last_30d": sum(
                s["price_cents"] or 0
                for s in completed
                if _in(s["completed_at"], as_of, 30 * DAY, 0 * DAY)
            ),
            "total": sum(s["price_cents"] or 0 for s in completed),
        },
        "goals": {
            "total": len(goals),
            "active": len(active),
            "completed": done,
            "abandoned": sum(g["status"] == "abandoned" for g in goals),
            "completion_rate": _round(done, len(goals), 4),
            "average_progress": _round(sum(active), len(active), 2),
        },
        "latest_feedback": [
            {
                "id": str(f["id"]),
                "session_id": str(f["session_id"]),
                "client_id": str(f["client_id"]),
                "comment": f["comment"],
                "at": _iso(f["created_at"]),
            }
            for f in feedback[:5]
        ],
    }


def coach_clients(data: Dataset, coach_id: UUID, as_of: datetime) -> dict[str, Any]:
    clients = [u for u in _mine(data.users, coach_id) if u["role"] == "client"]
    clients.sort(key=lambda u: (u["full_name"], u["id"]))
    sessions = _mine(data.sessions, coach_id)
    goals = _mine(data.goals, coach_id)
    lines = []
    for client in clients[:500]:
        theirs = [s for s in sessions if s["client_id"] == client["id"]]
        done = [s["scheduled_at"] for s in theirs if s["status"] == "completed"]
        upcoming = [
            s["scheduled_at"]
            for s in theirs
            if s["status"] == "scheduled" and s["scheduled_at"] > as_of
        ]
        active = [
            g["progress"]
            for g in goals
            if g["client_id"] == client["id"] and g["status"] == "active"
        ]
        lines.append(
            {
                "id": str(client["id"]),
                "full_name": client["full_name"],
                "status": client["status"],
                "completed_sessions": len(done),
                "last_session_at": _iso(max(done, default=None)),
                "next_session_at": _iso(min(upcoming, default=None)),
                "active_goals": len(active),
                "average_goal_progress": _round(sum(active), len(active), 2),
            }
        )
    return {"total": len(clients), "clients": lines}


def _monday(moment: datetime) -> date:
    day = moment.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


def coach_trends(data: Dataset, coach_id: UUID, as_of: datetime) -> dict[str, Any]:
    this_week = _monday(as_of)
    mondays = [this_week - timedelta(weeks=back) for back in range(11, -1, -1)]
    first = datetime.combine(mondays[0], datetime.min.time(), tzinfo=UTC)
    completed = [
        s
        for s in _mine(data.sessions, coach_id)
        if s["status"] == "completed" and s["completed_at"] is not None
    ]
    weeks = []
    for monday in mondays:
        done = [
            s
            for s in completed
            if first <= s["completed_at"] <= as_of and _monday(s["completed_at"]) == monday
        ]
        stars = [
            r["rating"]
            for r in _mine(data.session_ratings, coach_id)
            if first <= r["created_at"] <= as_of and _monday(r["created_at"]) == monday
        ]
        weeks.append(
            {
                "week_start": monday.isoformat(),
                "completed_sessions": len(done),
                "revenue_cents": sum(s["price_cents"] or 0 for s in done),
                "rating": {"average": _round(sum(stars), len(stars), 2), "count": len(stars)},
            }
        )
    recent: set[UUID] = set()
    previous: set[UUID] = set()
    for s in completed:
        if _in(s["completed_at"], as_of, 28 * DAY, 0 * DAY):
            recent.add(s["client_id"])
        if _in(s["completed_at"], as_of, 56 * DAY, 28 * DAY):
            previous.add(s["client_id"])
    retained = len(recent & previous)
    return {
        "weeks": weeks,
        "retention": {
            "active_clients_28d": len(recent),
            "active_clients_prev_28d": len(previous),
            "retained": retained,
            "rate": round(retained / len(previous), 4) if previous else None,
        },
    }


ORACLES = {
    "coach-stats": coach_stats,
    "coach-activity": coach_activity,
    "coach-insights": coach_insights,
    "coach-clients": coach_clients,
    "coach-trends": coach_trends,
}


def expected(data: Dataset, aggregate: str, coach_id: UUID, as_of: datetime) -> dict[str, Any]:
    return ORACLES[aggregate](data, coach_id, as_of)
