"""Hypothesis datasets for the oracle tests, and how to load them into Postgres.

A dataset is drawn around a clock `as_of` with many timestamps sitting exactly on the window
edges the aggregates use (now, 28/30/56/60 days ago, Monday midnights), written with assorted
UTC offsets, then mutated in SQL (clients deleted with their rows, clients reassigned to another
coach) and read back raw, so the oracle sees exactly what the SQL sees.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import psycopg
from hypothesis import strategies as st

from tests.oracle import Dataset

DAY = timedelta(days=1)
MICRO = timedelta(microseconds=1)
NAMES = st.sampled_from(["Ann", "ann", "Ánn", "Zoë", "Élodie", "Bob", "bob", "", "Ωmega", "Al B"])
COMMENT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=180
)
OFFSETS = st.integers(-14, 14).map(lambda hours: timezone(timedelta(hours=hours)))


@st.composite
def clocks(draw: st.DrawFn) -> datetime:
    base = draw(
        st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31))
    ).replace(tzinfo=UTC)
    if draw(st.booleans()):  # a clock right at a week boundary
        monday = base - timedelta(days=base.weekday())
        base = monday.replace(hour=0, minute=0, second=0, microsecond=0)
        base += draw(st.sampled_from([timedelta(0), -MICRO, MICRO]))
    return base


@st.composite
def moments(draw: st.DrawFn, as_of: datetime, edge_bias: float = 0.5) -> datetime:
    """A timestamp near `as_of`: often exactly on an edge, otherwise anywhere in ±90 days."""
    if draw(st.floats(0, 1)) < edge_bias:
        edge = as_of - draw(st.sampled_from([0, 28, 30, 56, 60, 77])) * DAY
        edge += draw(st.sampled_from([timedelta(0), -MICRO, MICRO]))
        if draw(st.booleans()):  # a Monday midnight near the clock
            edge = (edge - timedelta(days=edge.weekday())).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
    else:
        edge = as_of + timedelta(seconds=draw(st.integers(-90 * 86400, 40 * 86400)))
    return edge.astimezone(draw(OFFSETS))


@st.composite
def datasets(
    draw: st.DrawFn, max_rows: int = 14, edge_bias: float = 0.5
) -> tuple[datetime, Dataset, dict[str, Any]]:
    """`max_rows` bounds sessions (goals: half of it); small values make sparse datasets."""
    as_of = draw(clocks())
    when = moments(as_of, edge_bias)
    coaches = draw(st.lists(st.uuids(version=4), min_size=1, max_size=3, unique=True))
    data = Dataset()
    for coach_id in coaches:
        data.users.append(_user(coach_id, "coach", None, draw(NAMES), "active", draw(when)))
    client_ids = draw(st.lists(st.uuids(version=4), max_size=7, unique=True))
    for client_id in client_ids:
        if client_id in coaches:
            continue
        coach_id = draw(st.sampled_from([*coaches, None]))
        status = draw(st.sampled_from(["active", "paused", "archived"]))
        data.users.append(_user(client_id, "client", coach_id, draw(NAMES), status, draw(when)))
    clients = [u["id"] for u in data.users if u["role"] == "client"]
    if clients:
        for session_id in draw(st.lists(st.uuids(version=4), max_size=max_rows, unique=True)):
            status = draw(st.sampled_from(["scheduled", "completed", "cancelled", "no_show"]))
            completed_at = draw(when) if status == "completed" or draw(st.booleans()) else None
            if status == "completed" and draw(st.integers(0, 9)) == 0:
                completed_at = None  # completed without a timestamp: counted, never windowed
            data.sessions.append(
                {
                    "id": session_id,
                    "coach_id": draw(st.sampled_from(coaches)),
                    "client_id": draw(st.sampled_from(clients)),
                    "status": status,
                    "scheduled_at": draw(when),
                    "duration_minutes": draw(st.integers(0, 240)),
                    "price_cents": draw(st.none() | st.integers(0, 100_000)),
                    "completed_at": completed_at,
                    "created_at": draw(when),
                    "updated_at": draw(when),
                }
            )
    for session in data.sessions:
        for _ in range(draw(st.integers(0, 2))):
            data.session_feedback.append(
                _child(draw(st.uuids(version=4)), session, comment=draw(COMMENT), at=draw(when))
            )
        if draw(st.booleans()):
            data.session_ratings.append(
                _child(
                    draw(st.uuids(version=4)),
                    session,
                    rating=draw(st.integers(1, 5)),
                    at=draw(when),
                )
            )
    if clients:
        for goal_id in draw(st.lists(st.uuids(version=4), max_size=max_rows // 2, unique=True)):
            data.goals.append(
                {
                    "id": goal_id,
                    "coach_id": draw(st.sampled_from(coaches)),
                    "client_id": draw(st.sampled_from(clients)),
                    "title": draw(NAMES),
                    "status": draw(st.sampled_from(["active", "completed", "abandoned"])),
                    "progress": draw(st.integers(0, 100)),
                    "target_date": draw(when).date(),
                    "created_at": draw(when),
                    "updated_at": draw(when),
                }
            )
    mutations = {
        "delete": draw(st.lists(st.sampled_from(clients), unique=True)) if clients else [],
        "reassign": (
            [
                (c, draw(st.sampled_from(coaches)))
                for c in draw(st.lists(st.sampled_from(clients), unique=True))
            ]
            if clients
            else []
        ),
    }
    return as_of, data, mutations


def _user(
    user_id: UUID, role: str, coach_id: UUID | None, name: str, status: str, at: datetime
) -> dict[str, Any]:
    return {
        "id": user_id,
        "role": role,
        "coach_id": coach_id,
        "full_name": name,
        "email": None,
        "status": status,
        "created_at": at,
        "updated_at": at,
    }


def _child(row_id: UUID, session: dict[str, Any], *, at: datetime, **values: Any) -> dict[str, Any]:
    return {
        "id": row_id,
        "session_id": session["id"],
        "coach_id": session["coach_id"],
        "client_id": session["client_id"],
        "created_at": at,
        **values,
    }


TABLE_ORDER = ("users", "sessions", "session_feedback", "session_ratings", "goals")


def insert(conn: psycopg.Connection[Any], data: Dataset) -> None:
    users = sorted(data.users, key=lambda u: u["coach_id"] is not None)  # coaches first
    for table in TABLE_ORDER:
        rows = users if table == "users" else getattr(data, table)
        if not rows:
            continue
        columns = list(rows[0])
        placeholders = ", ".join(["%s"] * len(columns))
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO public.{table} ({', '.join(columns)}) VALUES ({placeholders})",
                [tuple(row[c] for c in columns) for row in rows],
            )


def mutate(conn: psycopg.Connection[Any], mutations: dict[str, Any]) -> None:
    for client_id, coach_id in mutations["reassign"]:
        conn.execute("UPDATE public.users SET coach_id = %s WHERE id = %s", (coach_id, client_id))
    for client_id in mutations["delete"]:
        conn.execute("DELETE FROM public.users WHERE id = %s", (client_id,))


def read_back(conn: psycopg.Connection[Any]) -> Dataset:
    data = Dataset()
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        for table in TABLE_ORDER:
            setattr(data, table, cur.execute(f"SELECT * FROM public.{table}").fetchall())
    return data
