"""`coach-clients`: one line per client of the coach, with sessions and goals."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Numeric,
    Select,
    Text,
    Uuid,
    and_,
    case,
    cast,
    column,
    func,
    literal,
    null,
    or_,
    select,
    true,
)

from pipeline.aggregates.base import (
    AS_OF,
    CLIENT_IDS,
    COACH_IDS,
    Aggregate,
    Incremental,
    JSONValue,
    Kind,
    Rows,
    TimeBoundary,
    coach_set,
    coach_summary,
    iso_text,
    number,
)
from pipeline.summaries import (
    client_counts,
    client_schedules,
    goal_client_counts,
    session_client_counts,
)
from pipeline.tables import goals, sessions, users

MAX_CLIENTS = 500

_per_client_sessions = (
    select(
        sessions.c.coach_id,
        sessions.c.client_id,
        func.count().filter(sessions.c.status == "completed").label("completed_sessions"),
        func.max(sessions.c.scheduled_at)
        .filter(sessions.c.status == "completed")
        .label("last_session_at"),
        func.min(sessions.c.scheduled_at)
        .filter(sessions.c.status == "scheduled", sessions.c.scheduled_at > AS_OF)
        .label("next_session_at"),
    )
    .where(sessions.c.coach_id == func.any(COACH_IDS))
    .group_by(sessions.c.coach_id, sessions.c.client_id)
    .subquery("s")
)
_active = goals.c.status == "active"
_per_client_goals = (
    select(
        goals.c.coach_id,
        goals.c.client_id,
        func.count().filter(_active).label("active_goals"),
        func.round(func.avg(goals.c.progress).filter(_active).cast(Numeric), 2).label(
            "average_goal_progress"
        ),
    )
    .where(goals.c.coach_id == func.any(COACH_IDS))
    .group_by(goals.c.coach_id, goals.c.client_id)
    .subquery("g")
)
_name_order = (users.c.full_name.collate("C"), users.c.id)
_ranked = (
    select(
        users.c.coach_id,
        cast(users.c.id, Text).label("id"),
        users.c.full_name,
        users.c.status,
        func.coalesce(_per_client_sessions.c.completed_sessions, 0).label("completed_sessions"),
        iso_text(_per_client_sessions.c.last_session_at).label("last_session_at"),
        iso_text(_per_client_sessions.c.next_session_at).label("next_session_at"),
        func.coalesce(_per_client_goals.c.active_goals, 0).label("active_goals"),
        _per_client_goals.c.average_goal_progress,
        func.row_number().over(partition_by=users.c.coach_id, order_by=_name_order).label("rank"),
        func.count().over(partition_by=users.c.coach_id).label("total"),
    )
    .select_from(users)
    .outerjoin(
        _per_client_sessions,
        and_(
            _per_client_sessions.c.coach_id == users.c.coach_id,
            _per_client_sessions.c.client_id == users.c.id,
        ),
    )
    .outerjoin(
        _per_client_goals,
        and_(
            _per_client_goals.c.coach_id == users.c.coach_id,
            _per_client_goals.c.client_id == users.c.id,
        ),
    )
    .where(users.c.role == "client", users.c.coach_id == func.any(COACH_IDS))
    .subquery("ranked")
)
SCAN_STATEMENT = (
    select(_ranked)
    .where(_ranked.c.rank <= MAX_CLIENTS)
    .order_by(_ranked.c.coach_id, _ranked.c.rank)
)

_coach = coach_set()


def _listed(only_given: bool) -> Any:
    """The coach's clients listed, by name: the first `MAX_CLIENTS`, or (`only_given`) those
    of `:client_ids`, by primary key (one probe a client; their rank is not read)."""
    of_coach = (users.c.coach_id == _coach.c.coach_id, users.c.role == "client")
    if not only_given:
        return (
            select(
                users.c.id,
                users.c.full_name,
                users.c.status,
                func.row_number().over(order_by=_name_order).label("rank"),
            )
            .where(*of_coach)
            .order_by(*_name_order)
            .limit(MAX_CLIENTS)
            .lateral("u")
        )
    given = (
        func.unnest(CLIENT_IDS)
        .table_valued(column("id", Uuid))
        .render_derived(name="given", with_types=False)
    )
    user = (
        select(users.c.id, users.c.full_name, users.c.status)
        .where(users.c.id == given.c.id, *of_coach)
        .correlate_except(users)
        .lateral("client")
    )
    return (
        select(user.c.id, user.c.full_name, user.c.status, literal(0).label("rank"))
        .select_from(given)
        .join(user, true())
        .lateral("u")
    )


def _next_session_probe(first: Any) -> Any:
    """The listed client's next session by one probe of sessions_coach_client_idx: what the
    summary cannot answer (its value has passed, or was read after this recompute's clock)."""
    return (
        select(func.min(sessions.c.scheduled_at))
        .where(
            sessions.c.coach_id == _coach.c.coach_id,
            sessions.c.client_id == first.c.id,
            sessions.c.status == "scheduled",
            sessions.c.scheduled_at > AS_OF,
        )
        .scalar_subquery()
    )


_client_counts = coach_summary(client_counts, _coach)


def _coach_rows(table: Any, first: Any, only_given: bool, *columns: str) -> Any:
    """Every row of the batch's coach in a summary keyed (coach, client), by one index range
    scan, for a hash join to the listed clients. Bounded by the coach's clients, and far cheaper
    than one index descent per listed client (`OFFSET 0` keeps Postgres from flattening it
    into a join it would plan as such probes, or as a hash of the whole summary).
    `only_given` (a few lines): the listed client's row alone, one index probe a line."""
    where = [table.c.coach_id == _coach.c.coach_id]
    if only_given:
        where.append(table.c.client_id == first.c.id)
    return (
        select(table.c.client_id, *(table.c[column] for column in columns))
        .where(*where)
        .offset(0)
        .lateral(f"{table.name}_of_coach")
    )


def _statement(only_given: bool) -> Select[Any]:
    """The listed clients' lines (`_listed`): their counts, last and next session from the
    summaries (one range scan each, hash-joined), a next session that has begun since by an
    index probe: bounded by the coach's clients, not by the history.

    The summary's next session is taken while it is still ahead of the clock
    (`pipeline.summaries`), none for a client without a row (every client with a scheduled
    session has one), else a probe: only the clients whose next session began since it was
    last read, or all of them at a clock before it was read."""
    first = _listed(only_given)
    session_counts = _coach_rows(
        session_client_counts, first, only_given, "completed", "last_completed_at"
    )
    goal_counts = _coach_rows(goal_client_counts, first, only_given, "active", "active_progress")
    schedules = _coach_rows(
        client_schedules, first, only_given, "next_scheduled_at", "next_checked_at"
    )
    known_next = schedules.c.next_scheduled_at
    next_session = case(
        (schedules.c.client_id.is_(None), null()),  # no scheduled session at all
        (
            and_(
                schedules.c.next_checked_at <= AS_OF,
                or_(known_next.is_(None), known_next > AS_OF),
            ),
            known_next,
        ),
        else_=_next_session_probe(first),
    )
    return (
        select(
            _coach.c.coach_id,
            cast(first.c.id, Text).label("id"),
            first.c.full_name,
            first.c.status,
            func.coalesce(session_counts.c.completed, 0).label("completed_sessions"),
            iso_text(session_counts.c.last_completed_at).label("last_session_at"),
            iso_text(next_session).label("next_session_at"),
            func.coalesce(goal_counts.c.active, 0).label("active_goals"),
            func.round(
                goal_counts.c.active_progress.cast(Numeric) / func.nullif(goal_counts.c.active, 0),
                2,
            ).label("average_goal_progress"),
            first.c.rank,
            func.coalesce(_client_counts.c.total, 0).label("total"),
        )
        .select_from(_coach)
        .join(first, true())
        .outerjoin(_client_counts, true())
        .outerjoin(session_counts, session_counts.c.client_id == first.c.id)
        .outerjoin(goal_counts, goal_counts.c.client_id == first.c.id)
        .outerjoin(schedules, schedules.c.client_id == first.c.id)
        .order_by(_coach.c.coach_id, first.c.rank)
    )


STATEMENT = _statement(only_given=False)
LINES_STATEMENT = _statement(only_given=True)
"""The lines of `:client_ids` alone, for an incremental recompute (`pipeline.aggregates.delta`)."""


def _client(row: Any) -> JSONValue:
    """One line; id and timestamps arrive as text (`iso_text`): 500 lines a recompute."""
    return {
        "id": row.id,
        "full_name": row.full_name,
        "status": row.status,
        "completed_sessions": row.completed_sessions,
        "last_session_at": row.last_session_at,
        "next_session_at": row.next_session_at,
        "active_goals": row.active_goals,
        "average_goal_progress": number(row.average_goal_progress),
    }


def _assemble(rows: Mapping[str, Rows], as_of: datetime) -> dict[UUID, JSONValue]:
    values: dict[UUID, JSONValue] = {}
    for row in rows["clients"]:
        value = values.get(row.coach_id)
        if value is None:
            value = values[row.coach_id] = {"total": row.total, "clients": []}
        value["clients"].append(_client(row))
    return values


def _listed_ids(value: JSONValue) -> list[str]:
    return [line["id"] for line in value["clients"]]


def _clocked(value: JSONValue, as_of: datetime) -> set[str]:
    """The lines whose next session has begun by `as_of`: the only field the clock moves (a
    session that begins after the stored next one cannot become the next)."""
    return {
        line["id"]
        for line in value["clients"]
        if line["next_session_at"] is not None and not _ahead(line["next_session_at"], as_of)
    }


def _ahead(moment: str, as_of: datetime) -> bool:
    """Whether a line's `iso_text` moment is after `as_of`; not when it cannot be read (a year
    past 9999 has five digits): such a line is read again, never trusted."""
    try:
        return datetime.fromisoformat(moment) > as_of
    except ValueError:
        return False


def _merge(value: JSONValue, rows: Rows) -> JSONValue:
    """The value with the lines of `rows` in place of their clients' (same roster, same order)."""
    fresh = {row.id: _client(row) for row in rows}
    return {
        "total": value["total"],
        "clients": [fresh.get(line["id"], line) for line in value["clients"]],
    }


def _empty(as_of: datetime) -> JSONValue:
    return {"total": 0, "clients": []}


COACH_CLIENTS = Aggregate(
    name="coach-clients",
    kind=Kind.CRITICAL,
    schema_version=1,
    tables=frozenset({"users", "sessions", "goals"}),
    statements={"clients": STATEMENT},
    scan_statements={"clients": SCAN_STATEMENT},
    assemble=_assemble,
    empty=_empty,
    description=f"each client (up to {MAX_CLIENTS}, by name): status, completed sessions, last "
    "and next session, active goals and their average progress",
    time_boundaries=(
        TimeBoundary("sessions", "scheduled_at", (timedelta(0),), "status = 'scheduled'"),
    ),
    incremental=Incremental(
        roster=client_counts.name,
        by_client=(session_client_counts.name, goal_client_counts.name, client_schedules.name),
        lines=LINES_STATEMENT,
        listed=_listed_ids,
        clocked=_clocked,
        merge=_merge,
    ),
)
