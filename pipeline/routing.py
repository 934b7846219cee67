"""Which (coach, aggregate) pairs a change invalidates. Pure, derived from the registry.

The coach ids of a change are those of its new and its old row, so a session or a client moved
from one coach to another invalidates both. A change whose coach cannot be told (a missing or
malformed `coach_id`, a DELETE that only carries the primary key) is not dropped: the route asks
for a wide refresh of the aggregates that read its table, and says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from uuid import UUID

from pipeline.aggregates import CRITICAL
from pipeline.events import ChangeEvent, ChangeType, Record
from pipeline.tables import WATCHED_TABLES


def _derive() -> dict[str, tuple[str, ...]]:
    return {table: tuple(a.name for a in CRITICAL if table in a.tables) for table in WATCHED_TABLES}


TABLE_AGGREGATES: Mapping[str, tuple[str, ...]] = _derive()
"""table → names of the critical aggregates that read it. Secondary ones are refreshed by beat."""

Key = tuple[str, UUID]
"""(aggregate name, coach id)"""


@dataclass(frozen=True)
class Route:
    keys: frozenset[Key] = frozenset()
    wide: frozenset[str] = frozenset()
    problem: str | None = None
    """Why a wide refresh was needed: a stable label for logs and metrics."""
    detail: str = field(default="", compare=False)


class _Unknown(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def _coach_of(table: str, record: Record) -> UUID | None:
    """The coach a row belongs to; None when it belongs to no coach (a coach's own user row)."""
    if table == "users":
        if "role" not in record:
            raise _Unknown("missing_role", "users row without a role")
        if record["role"] != "client":
            return None  # coaches' and admins' own rows feed no aggregate
        if "coach_id" not in record:
            raise _Unknown("missing_coach_id", "users row without coach_id")
        if record["coach_id"] is None:
            return None  # an unassigned client
    elif record.get("coach_id") is None:
        raise _Unknown("missing_coach_id", f"{table} row without coach_id")
    value = record["coach_id"]
    if isinstance(value, UUID):
        return value
    if not isinstance(value, str):
        raise _Unknown("bad_coach_id", f"coach_id of type {type(value).__name__}")
    try:
        return UUID(value)
    except ValueError:
        raise _Unknown("bad_coach_id", f"coach_id {value[:40]!r} is not a UUID") from None


def route(event: ChangeEvent) -> Route:
    aggregates = TABLE_AGGREGATES.get(event.table, ())
    if not aggregates:
        return Route()
    if event.type is ChangeType.TRUNCATE:
        return Route(wide=frozenset(aggregates), problem="truncate", detail=event.table)
    records = [r for r in (event.new, event.old) if r is not None]
    if event.type is ChangeType.UPDATE and event.old is None:
        records.append({})  # the old row is unknown, so is its coach
    if not records:
        return Route(wide=frozenset(aggregates), problem="missing_record", detail=event.table)
    coaches: set[UUID] = set()
    try:
        for record in records:
            coach = _coach_of(event.table, record)
            if coach is not None:
                coaches.add(coach)
    except _Unknown as unknown:
        return Route(wide=frozenset(aggregates), problem=unknown.reason, detail=unknown.detail)
    return Route(keys=frozenset((name, coach) for coach in coaches for name in aggregates))
