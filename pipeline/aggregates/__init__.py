"""The aggregates registry: every aggregate, declared once.

Routing (table → aggregates), the beat schedule, the clock tick, the CLI and the docs are all
derived from `REGISTRY`; nothing keeps a parallel list by hand.
"""

from __future__ import annotations

from pipeline.aggregates.activity import COACH_ACTIVITY
from pipeline.aggregates.base import Aggregate, JSONValue, Kind, TimeBoundary
from pipeline.aggregates.clients import COACH_CLIENTS
from pipeline.aggregates.insights import COACH_INSIGHTS
from pipeline.aggregates.stats import COACH_STATS
from pipeline.aggregates.trends import COACH_TRENDS
from pipeline.errors import UnknownAggregateError

REGISTRY: tuple[Aggregate, ...] = (
    COACH_STATS,
    COACH_ACTIVITY,
    COACH_INSIGHTS,
    COACH_CLIENTS,
    COACH_TRENDS,
)
BY_NAME: dict[str, Aggregate] = {aggregate.name: aggregate for aggregate in REGISTRY}
CRITICAL: tuple[Aggregate, ...] = tuple(a for a in REGISTRY if a.kind is Kind.CRITICAL)
SECONDARY: tuple[Aggregate, ...] = tuple(a for a in REGISTRY if a.kind is Kind.SECONDARY)
NAMES: tuple[str, ...] = tuple(BY_NAME)


def get(name: str) -> Aggregate:
    try:
        return BY_NAME[name]
    except KeyError:
        raise UnknownAggregateError(
            f"unknown aggregate {name!r}; known: {', '.join(NAMES)}"
        ) from None


__all__ = [
    "BY_NAME",
    "CRITICAL",
    "NAMES",
    "REGISTRY",
    "SECONDARY",
    "Aggregate",
    "JSONValue",
    "Kind",
    "TimeBoundary",
    "get",
]
