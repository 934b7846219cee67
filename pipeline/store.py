"""Versioned writes of aggregates to Redis, and the update notice each write publishes.

A version is taken (`next_version`) before the Postgres snapshot is read. The Lua script stores
a value only if no newer version is stored, so a slow recompute that read an older snapshot can
never overwrite a newer result, whatever order writers finish in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import redis

from pipeline import keys
from pipeline.aggregates import JSONValue
from pipeline.lua import Lua, run_pipeline
from pipeline.stored import StoredAggregate

STORE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], ARGV[2])
if current and tonumber(current) >= tonumber(ARGV[3]) then
    return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""
"""KEYS: the aggregate's hash, the coach's updates channel. ARGV: the notice, then the hash's
field, value pairs (`StoredAggregate.to_hash`), the version first."""


@dataclass(frozen=True)
class Notice:
    """What subscribers of a coach's updates channel receive after each stored write."""

    coach_id: str
    aggregate: str
    version: int
    computed_at: str
    snapshot_at: str
    commit_ms: int | None = None
    """Commit time of the oldest change this write answers, when an event triggered it."""

    def encode(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def decode(cls, raw: bytes | str) -> Notice:
        return cls(**orjson.loads(raw))


@dataclass(frozen=True)
class WriteResult:
    stored: int
    stale: int
    stale_by_aggregate: Mapping[str, int] = field(default_factory=dict)


AggregateValues = tuple[str, int, Mapping[UUID, JSONValue]]
"""(aggregate name, schema version, value per coach)"""


class AggregateStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self.client = client  # pipeline.freshness marks tickets after a store
        self._store_if_newer = Lua(client, STORE_IF_NEWER)

    def next_version(self) -> int:
        return int(self._redis.incr(keys.VERSION_COUNTER))

    def write(
        self,
        aggregate: str,
        schema_version: int,
        version: int,
        values: Mapping[UUID, JSONValue],
        *,
        snapshot_at: datetime,
        computed_at: datetime,
        commit_ms: Mapping[UUID, int | None] | None = None,
    ) -> WriteResult:
        """Store every coach's value at `version`; count stale rejections."""
        return self.write_many(
            [(aggregate, schema_version, values)],
            version,
            snapshot_at=snapshot_at,
            computed_at=computed_at,
            commit_ms=commit_ms,
        )

    def write_many(
        self,
        results: Sequence[AggregateValues],
        version: int,
        *,
        snapshot_at: datetime,
        computed_at: datetime,
        commit_ms: Mapping[UUID, int | None] | None = None,
    ) -> WriteResult:
        """Store several aggregates' values at one version, in one round trip."""
        computed = computed_at.isoformat()
        as_of = snapshot_at.isoformat()
        order = []
        calls = []
        for aggregate, schema_version, values in results:
            for coach_id, value in values.items():
                notice = Notice(
                    coach_id=str(coach_id),
                    aggregate=aggregate,
                    version=version,
                    computed_at=computed,
                    snapshot_at=as_of,
                    commit_ms=(commit_ms or {}).get(coach_id),
                )
                stored = StoredAggregate(
                    coach_id=coach_id,
                    aggregate=aggregate,
                    version=version,
                    computed_at=computed_at,
                    as_of=snapshot_at,
                    schema_version=schema_version,
                    value_json=orjson.dumps(value),
                )
                fields = [part for pair in stored.to_hash().items() for part in pair]
                calls.append(
                    (
                        [keys.aggregate(aggregate, coach_id), keys.updates_channel(coach_id)],
                        [notice.encode(), *fields],
                    )
                )
                order.append(aggregate)

        def build(pipe: Any) -> None:
            for call_keys, args in calls:
                self._store_if_newer.queue(pipe, call_keys, args)

        outcomes = run_pipeline(self._redis, [self._store_if_newer], build)
        stale_by_aggregate: dict[str, int] = {}
        for aggregate, outcome in zip(order, outcomes, strict=True):
            if outcome != 1:
                stale_by_aggregate[aggregate] = stale_by_aggregate.get(aggregate, 0) + 1
        stale = sum(stale_by_aggregate.values())
        return WriteResult(
            stored=len(outcomes) - stale, stale=stale, stale_by_aggregate=stale_by_aggregate
        )
