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


def settled_as_of(
    client: RedisClient, aggregate: str, coach_ids: Iterable[UUID]
) -> dict[UUID, datetime | None]:
    """Coach → the clock (`as_of`) of its stored `aggregate`, when no recompute of the coach has
    taken a version since (the stored version is the coach's version counter); None when
    nothing is stored or one has. One round trip (a pipeline, split by slot on a Cluster: each
    coach's keys share its slot).

    A recompute in flight may store a value from a snapshot older than the one stored now (its
    version was taken first, its snapshot later; the newer version wins whatever its clock), so
    a stored clock says what the coach's value will be only while none is in flight."""
    wanted = list(coach_ids)
    pipe = client.pipeline(transaction=False)
    for coach in wanted:
        pipe.hmget(keys.aggregate(aggregate, coach), [HASH_FIELDS[0], AS_OF_FIELD])
        pipe.get(keys.version(coach))
    replies = pipe.execute()
    settled: dict[UUID, datetime | None] = {}
    for coach, (version, as_of), counter in zip(wanted, replies[::2], replies[1::2], strict=True):
        current = version is not None and as_of is not None and version == counter
        settled[coach] = datetime.fromisoformat(as_text(as_of)) if current else None
    return settled
