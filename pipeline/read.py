"""The read side: what dashboards, the CLI and the HTTP API read. Redis only, never Postgres."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from pipeline import keys
from pipeline.aggregates import NAMES, get
from pipeline.redis_client import RedisClient
from pipeline.redis_values import as_text
from pipeline.stored import AS_OF_FIELD, HASH_FIELDS, StoredAggregate


def read_aggregate(client: RedisClient, coach_id: UUID, aggregate: str) -> StoredAggregate | None:
    """One coach's aggregate, or None when nothing is stored for that coach."""
    get(aggregate)  # raises UnknownAggregateError for a name outside the registry
    fields = client.hmget(keys.aggregate(aggregate, coach_id), HASH_FIELDS)
    return StoredAggregate.from_hash(coach_id, aggregate, list(fields))


def read_all(
    client: RedisClient, coach_id: UUID, aggregates: Iterable[str] = NAMES
) -> dict[str, StoredAggregate] | None:
    """Every stored aggregate of a coach in one round trip; None for an unknown coach."""
    names = list(aggregates)
    pipe = client.pipeline(transaction=False)
    for name in names:
        get(name)
        pipe.hmget(keys.aggregate(name, coach_id), HASH_FIELDS)
    return stored_by_name(coach_id, names, pipe.execute()) or None


def stored_by_name(
    coach_id: UUID, names: Sequence[str], replies: Sequence[Sequence[Any]]
) -> dict[str, StoredAggregate]:
    """The aggregates stored for a coach, from HMGET replies of `HASH_FIELDS` in `names` order."""
    found = {}
    for name, fields in zip(names, replies, strict=True):
        stored = StoredAggregate.from_hash(coach_id, name, fields)
        if stored is not None:
            found[name] = stored
    return found


def stored_as_of(
    client: RedisClient, aggregate: str, coach_ids: Iterable[UUID]
) -> dict[UUID, datetime | None]:
    """Coach → the clock (`as_of`) of its stored `aggregate`, None when nothing is stored; one
    round trip (a pipeline, split by slot on a Cluster)."""
    wanted = list(coach_ids)
    pipe = client.pipeline(transaction=False)
    for coach in wanted:
        pipe.hget(keys.aggregate(aggregate, coach), AS_OF_FIELD)
    return {
        coach: None if raw is None else datetime.fromisoformat(as_text(raw))
        for coach, raw in zip(wanted, pipe.execute(), strict=True)
    }
