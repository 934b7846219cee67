"""The read side: what dashboards, the CLI and the HTTP API read. Redis only, never Postgres."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import redis

from pipeline import keys
from pipeline.aggregates import NAMES, JSONValue, get
from pipeline.redis_values import as_text


@dataclass(frozen=True)
class StoredAggregate:
    coach_id: UUID
    aggregate: str
    version: int
    computed_at: datetime
    as_of: datetime
    """The database clock of the snapshot the value was computed from."""
    schema_version: int
    value: JSONValue

    def as_json(self) -> dict[str, Any]:
        return {
            "coach_id": str(self.coach_id),
            "aggregate": self.aggregate,
            "version": self.version,
            "computed_at": self.computed_at.isoformat(),
            "as_of": self.as_of.isoformat(),
            "schema_version": self.schema_version,
            "value": self.value,
        }


_FIELDS = ("version", "computed_at", "schema", "value", "as_of")


def _decode(coach_id: UUID, aggregate: str, fields: list[Any]) -> StoredAggregate | None:
    if fields[0] is None:
        return None
    version, computed_at, schema, value, as_of = fields
    return StoredAggregate(
        coach_id=coach_id,
        aggregate=aggregate,
        version=int(version),
        computed_at=datetime.fromisoformat(as_text(computed_at)),
        as_of=datetime.fromisoformat(as_text(as_of)),
        schema_version=int(schema),
        value=orjson.loads(value),
    )


def read_aggregate(client: redis.Redis, coach_id: UUID, aggregate: str) -> StoredAggregate | None:
    """One coach's aggregate, or None when nothing is stored for that coach."""
    get(aggregate)  # raises UnknownAggregateError for a name outside the registry
    fields = client.hmget(keys.aggregate(aggregate, coach_id), _FIELDS)
    return _decode(coach_id, aggregate, list(fields))


def read_all(
    client: redis.Redis, coach_id: UUID, aggregates: Iterable[str] = NAMES
) -> dict[str, StoredAggregate] | None:
    """Every stored aggregate of a coach in one round trip; None for an unknown coach."""
    names = list(aggregates)
    pipe = client.pipeline(transaction=False)
    for name in names:
        get(name)
        pipe.hmget(keys.aggregate(name, coach_id), _FIELDS)
    found = {}
    for name, fields in zip(names, pipe.execute(), strict=True):
        stored = _decode(coach_id, name, fields)
        if stored is not None:
            found[name] = stored
    return found or None
