"""Routing: derived from the registry, checked against the SQL, table-tested on changes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import visitors

from pipeline.aggregates import REGISTRY, Kind
from pipeline.coaches import crossing_statement
from pipeline.events import ChangeEvent, ChangeType
from pipeline.routing import TABLE_AGGREGATES, Route, route
from pipeline.summaries import SOURCE_OF

SEED_MAP = {
    "sessions": {"coach-stats", "coach-activity"},
    "session_feedback": {"coach-insights", "coach-stats"},
    "session_ratings": {"coach-insights"},
    "users": {"coach-clients"},
    "goals": {"coach-insights"},
}


def tables_in(statement: Any) -> set[str]:
    """The watched tables a statement reads, directly or through their summaries."""
    names = {node.name for node in visitors.iterate(statement) if isinstance(node, Table)}
    return {SOURCE_OF.get(name, name) for name in names}


def test_the_derived_map_covers_the_seed_design() -> None:
    for table, aggregates in SEED_MAP.items():
        assert aggregates <= set(TABLE_AGGREGATES[table]), table


def test_only_critical_aggregates_are_routed() -> None:
    routed = {name for names in TABLE_AGGREGATES.values() for name in names}
    assert routed == {a.name for a in REGISTRY if a.kind is Kind.CRITICAL}


@pytest.mark.parametrize("aggregate", REGISTRY, ids=lambda a: a.name)
def test_declared_tables_equal_the_tables_the_statements_reference(aggregate: Any) -> None:
    for statements in (aggregate.statements, aggregate.scan_statements or aggregate.statements):
        referenced = set().union(*(tables_in(stmt) for stmt in statements.values()))
        assert referenced == aggregate.tables
    crossing = crossing_statement(aggregate)
    if crossing is not None:
        assert tables_in(crossing) <= aggregate.tables


@pytest.mark.parametrize("aggregate", REGISTRY, ids=lambda a: a.name)
def test_declared_tables_equal_the_relations_postgres_plans_to_read(
    aggregate: Any, database_url: str
) -> None:
    """EXPLAIN names every relation a statement scans, index scans included."""
    dialect = postgresql.psycopg.dialect()  # type: ignore[attr-defined]
    for summaries in (True, False):
        relations: set[str] = set()
        with psycopg.connect(database_url) as conn:
            # what the workers execute
            for sql in aggregate.compiled(dialect, summaries=summaries).values():
                params = {"coach_ids": [uuid.uuid4()], "as_of": datetime.now(UTC)}
                (plan,) = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()
                relations |= _relations(plan[0]["Plan"])
        assert {SOURCE_OF.get(name, name) for name in relations} == aggregate.tables


def _relations(node: dict[str, Any]) -> set[str]:
    found = {node["Relation Name"]} if "Relation Name" in node else set()
    for child in node.get("Plans", []):
        found |= _relations(child)
    return found


COACH_A = uuid.uuid4()
COACH_B = uuid.uuid4()
NOW = datetime(2026, 5, 1, tzinfo=UTC)


def event(table: str, kind: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> Any:
    return ChangeEvent(table, ChangeType(kind), new, old, NOW)


def keys_for(table: str, *coaches: uuid.UUID) -> frozenset[tuple[str, uuid.UUID]]:
    return frozenset((name, coach) for coach in coaches for name in TABLE_AGGREGATES[table])


CASES = [
    # (description, event, expected route)
    (
        "session insert",
        event("sessions", "INSERT", {"coach_id": str(COACH_A)}, None),
        Route(keys=keys_for("sessions", COACH_A)),
    ),
    (
        "session reassigned to another coach invalidates both",
        event("sessions", "UPDATE", {"coach_id": str(COACH_B)}, {"coach_id": str(COACH_A)}),
        Route(keys=keys_for("sessions", COACH_A, COACH_B)),
    ),
    (
        "uuid objects work as well as strings",
        event("goals", "DELETE", None, {"coach_id": COACH_A}),
        Route(keys=keys_for("goals", COACH_A)),
    ),
    (
        "client moved between coaches",
        event(
            "users",
            "UPDATE",
            {"role": "client", "coach_id": str(COACH_B)},
            {"role": "client", "coach_id": str(COACH_A)},
        ),
        Route(keys=keys_for("users", COACH_A, COACH_B)),
    ),
    (
        "client unassigned still invalidates the old coach",
        event(
            "users",
            "UPDATE",
            {"role": "client", "coach_id": None},
            {"role": "client", "coach_id": str(COACH_A)},
        ),
        Route(keys=keys_for("users", COACH_A)),
    ),
    (
        "a coach's own profile feeds no aggregate",
        event("users", "UPDATE", {"role": "coach", "coach_id": None}, {"role": "coach"}),
        Route(),
    ),
    (
        "a new unassigned client feeds no aggregate",
        event("users", "INSERT", {"role": "client", "coach_id": None}, None),
        Route(),
    ),
]

WIDE_CASES = [
    ("delete with only the primary key", event("sessions", "DELETE", None, {"id": "x"}), "missing_coach_id"),
    ("null coach id", event("session_ratings", "INSERT", {"coach_id": None}, None), "missing_coach_id"),
    ("integer coach id", event("goals", "INSERT", {"coach_id": 42}, None), "bad_coach_id"),
    ("non-uuid coach id", event("goals", "INSERT", {"coach_id": "abc"}, None), "bad_coach_id"),
    ("update without the old row", event("sessions", "UPDATE", {"coach_id": str(COACH_A)}, None), "missing_coach_id"),
    ("users row without a role", event("users", "DELETE", None, {"id": "x"}), "missing_role"),
    ("truncate", event("session_feedback", "TRUNCATE", None, None), "truncate"),
]  # fmt: skip


@pytest.mark.parametrize(("description", "change", "expected"), CASES, ids=[c[0] for c in CASES])
def test_route(description: str, change: Any, expected: Route) -> None:
    assert route(change) == expected


@pytest.mark.parametrize(
    ("description", "change", "reason"), WIDE_CASES, ids=[c[0] for c in WIDE_CASES]
)
def test_a_change_without_a_usable_coach_asks_for_a_wide_refresh(
    description: str, change: Any, reason: str
) -> None:
    result = route(change)
    assert result.keys == frozenset()
    assert result.wide == frozenset(TABLE_AGGREGATES[change.table])
    assert result.problem == reason
