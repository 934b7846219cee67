"""Which coaches to refresh when no single event says: all of them, the ones a clock crossing
touched, or the ones whose rows changed since a moment (the catch-up after an outage)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    Select,
    bindparam,
    func,
    select,
    text,
    union_all,
)

from pipeline.aggregates import Aggregate
from pipeline.errors import NotACoachError
from pipeline.tables import BY_NAME, users

ACTIVE_COACHES = (users.c.role == "coach") & (users.c.status != "archived")
SINCE = bindparam("since", type_=DateTime(timezone=True))
UNTIL = bindparam("until", type_=DateTime(timezone=True))


def require_coaches(engine: Engine, ids: Iterable[UUID]) -> None:
    """Raise `NotACoachError` naming every id of `ids` that is not a coach, and why."""
    wrong = not_coaches(engine, ids)
    if wrong:
        raise NotACoachError(wrong)


def not_coaches(engine: Engine, ids: Iterable[UUID]) -> dict[UUID, str]:
    """Which of `ids` are not coaches, each with why ("no such user", "a client", …)."""
    wanted = list(dict.fromkeys(ids))
    with engine.begin() as connection:
        roles = dict(
            connection.execute(select(users.c.id, users.c.role).where(users.c.id.in_(wanted))).all()
        )
    return {
        coach: "no such user" if coach not in roles else f"a user with role {roles[coach]!r}"
        for coach in wanted
        if roles.get(coach) != "coach"
    }


def active_coach_batches(engine: Engine, size: int) -> Iterator[list[UUID]]:
    """Every coach that is not archived, in id order, `size` at a time (keyset pagination)."""
    after: UUID | None = None
    while True:
        query = select(users.c.id).where(ACTIVE_COACHES).order_by(users.c.id).limit(size)
        if after is not None:
            query = query.where(users.c.id > after)
        with engine.begin() as connection:
            batch = list(connection.execute(query).scalars())
        if not batch:
            return
        yield batch
        after = batch[-1]


def crossing_statement(aggregate: Aggregate) -> Select[Any] | None:
    """(coach_id, crossed_at): per coach with a row whose `column + offset` falls in
    (:since, :until] for any boundary, the latest such `column + offset`.

    `column + offset` in (since, until] is rewritten `column` in (since - offset, until - offset]
    so the time indexes of pipeline.migrations serve it.
    """
    parts = []
    for boundary in aggregate.time_boundaries:
        table = BY_NAME[boundary.table]
        column = table.c[boundary.column]
        for offset in boundary.offsets:
            part = select(table.c.coach_id, (column + offset).label("crossed_at")).where(
                column > SINCE - offset,
                column <= UNTIL - offset,
            )
            if boundary.where:
                part = part.where(text(boundary.where))
            parts.append(part)
    if not parts:
        return None
    crossings = union_all(*parts).subquery()
    return select(crossings.c.coach_id, func.max(crossings.c.crossed_at)).group_by(
        crossings.c.coach_id
    )


def coaches_crossing(
    connection: Connection, aggregate: Aggregate, since: datetime, until: datetime
) -> dict[UUID, datetime]:
    """Coaches whose `aggregate` value may differ between `since` and `until` by the clock
    alone, each with the latest moment in (since, until] at which one of its rows crosses a
    boundary."""
    statement = crossing_statement(aggregate)
    if statement is None or until <= since:
        return {}
    return {
        coach: crossed_at
        for coach, crossed_at in connection.execute(statement, {"since": since, "until": until})
    }


CHANGED_SINCE = text(
    """
    SELECT coach_id FROM public.sessions WHERE updated_at >= :since
    UNION SELECT coach_id FROM public.session_feedback WHERE created_at >= :since
    UNION SELECT coach_id FROM public.session_ratings WHERE created_at >= :since
    UNION SELECT coach_id FROM public.goals WHERE updated_at >= :since
    UNION SELECT coach_id FROM public.users
          WHERE updated_at >= :since AND role = 'client' AND coach_id IS NOT NULL
    """
)


def coaches_changed_since(engine: Engine, since: datetime, margin: timedelta) -> set[UUID]:
    """Coaches with a row created or updated since `since - margin` (catch-up after an outage).

    Deleted rows leave no trace here; the fallback sweep after recovery covers them.
    """
    with engine.begin() as connection:
        return set(connection.execute(CHANGED_SINCE, {"since": since - margin}).scalars())
