"""Versioned writes of aggregates to Redis, and the update notice each write publishes.

A version is taken per coach (`next_versions`, the coach's own counter) before the Postgres
snapshot is read. The Lua script stores a value only if no newer version is stored, so a slow
recompute that read an older snapshot can never overwrite a newer result, whatever order
writers finish in. Compare-and-set needs versions ordered in time *per key* only, so each coach
has its own counter in its own slot: no script reaches across slots on a Redis Cluster, no
single key takes every recompute's increment, and a failover that loses the last writes of a
coach loses its counter's increments with them (they share the slot's replication stream).
A write also raises the counter to its own version: one taken on another server (a master
being replaced) or before a restart can never leave the counter below what is stored.

On one Redis (or Sentinel's master) the notice is `PUBLISH`ed; on a Cluster it is `SPUBLISH`ed
to the coach's shard channel, which only the coach's slot's nodes carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from pipeline import keys
from pipeline.aggregates import Aggregate, JSONValue
from pipeline.aggregates.delta import Base
from pipeline.lua import Lua, run_pipeline
from pipeline.redis_client import RedisClient, is_cluster
from pipeline.stored import HASH_FIELDS, StoredAggregate, version_snapshot

STORE_IF_NEWER = """
local version = tonumber(ARGV[4])
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[3]) or '0')
local top = math.max(current, version)
if tonumber(redis.call('GET', KEYS[3]) or '0') < top then
    redis.call('SET', KEYS[3], top)
end
if current >= version then
    return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call(ARGV[1], KEYS[2], ARGV[2])
return 1
"""
"""KEYS: the aggregate's hash, the coach's updates channel (a key too: a shard channel must be
in the script's slot), the coach's version counter. ARGV: `PUBLISH` or `SPUBLISH`, the notice,
then the hash's field, value pairs (`StoredAggregate.to_hash`), the version first.

The counter is raised to the version written (or, when the write is rejected, to the one
stored) if it is below: a version can be taken on one server and written on another (on the
master that was being replaced, then on the new one whose counter never saw those increments)
or before a restart that brought back an older counter. A counter below a stored version would
have every later recompute of the coach rejected as stale until it caught up; raised, the next
version taken is above everything stored (`tests/test_store.py`)."""


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
    after: tuple[Any, ...] = ()
    """The results of the `after` calls of `write_many`, in order."""


ScriptCall = tuple[Lua, Sequence[Any], Sequence[Any]]
"""(script, keys, args): a call `write_many` queues after its writes."""
AggregateValues = tuple[str, int, Mapping[UUID, JSONValue]]
"""(aggregate name, schema version, value per coach)"""
Versions = Mapping[UUID, int]
"""The version each coach's values are stored at."""


def notice_command(client: RedisClient) -> str:
    """How update notices are sent: sharded pub/sub on a Cluster, plain pub/sub elsewhere."""
    return "SPUBLISH" if is_cluster(client) else "PUBLISH"


class AggregateStore:
    def __init__(self, client: RedisClient) -> None:
        self._redis = client
        self.client = client  # pipeline.freshness marks tickets after a store
        self._store_if_newer = Lua(client, STORE_IF_NEWER)
        self._publish = notice_command(client)

    def next_versions(self, coach_ids: Iterable[UUID]) -> dict[UUID, int]:
        """A new version for each coach, in one round trip (one per node on a Cluster)."""
        return self.versions_and_bases(coach_ids, ())[0]

    def versions_and_bases(
        self, coach_ids: Iterable[UUID], wanted: Sequence[tuple[Aggregate, Sequence[UUID]]]
    ) -> tuple[dict[UUID, int], dict[str, dict[UUID, Base]]]:
        """(`next_versions` of `coach_ids`, by aggregate name the stored values of each
        (aggregate, its coaches) of `wanted` that can serve as bases of an incremental
        recompute, `pipeline.aggregates.delta`) in one round trip: a drain's first."""
        coaches = list(dict.fromkeys(coach_ids))
        pipe = self._redis.pipeline(transaction=False)
        for coach_id in coaches:
            pipe.incr(keys.version(coach_id))
        for aggregate, of in wanted:
            for coach_id in of:
                pipe.hmget(keys.aggregate(aggregate.name, coach_id), HASH_FIELDS)
        replies = iter(pipe.execute())
        versions = {coach: int(next(replies)) for coach in coaches}
        bases: dict[str, dict[UUID, Base]] = {}
        for aggregate, of in wanted:
            for coach in of:
                base = _base(coach, aggregate, next(replies))
                if base is not None:
                    bases.setdefault(aggregate.name, {})[coach] = base
        return versions, bases

    def next_version(self, coach_id: UUID) -> int:
        return self.next_versions([coach_id])[coach_id]

    def write(
        self,
        aggregate: str,
        schema_version: int,
        version: int | Versions,
        values: Mapping[UUID, JSONValue],
        *,
        snapshot_at: datetime,
        computed_at: datetime,
        commit_ms: Mapping[UUID, int | None] | None = None,
    ) -> WriteResult:
        """Store every coach's value at `version` (one for all, or each coach's); count stale
        rejections."""
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
        version: int | Versions,
        *,
        snapshot_at: datetime,
        computed_at: datetime,
        commit_ms: Mapping[UUID, int | None] | None = None,
        after: Sequence[ScriptCall] = (),
        snapshots: Mapping[str, str] | None = None,
    ) -> WriteResult:
        """Store several aggregates' values, each coach's at its version, in one round trip
        (one per node on a Cluster). `after`: script calls sent in the same pipeline behind the
        writes (a call whose keys share a slot with a write sees it: a node runs its part of a
        pipeline in order); their results are `WriteResult.after`. `snapshots`, by aggregate name:
        the snapshot its values were computed from (`SnapshotId.encode`), stored beside each
        (incremental aggregates'; the others store none)."""
        computed = computed_at.isoformat()
        as_of = snapshot_at.isoformat()
        order = []
        calls = []
        for aggregate, schema_version, values in results:
            for coach_id, value in values.items():
                coach_version = version if isinstance(version, int) else version[coach_id]
                notice = Notice(
                    coach_id=str(coach_id),
                    aggregate=aggregate,
                    version=coach_version,
                    computed_at=computed,
                    snapshot_at=as_of,
                    commit_ms=(commit_ms or {}).get(coach_id),
                )
                stored = StoredAggregate(
                    coach_id=coach_id,
                    aggregate=aggregate,
                    version=coach_version,
                    computed_at=computed_at,
                    as_of=snapshot_at,
                    schema_version=schema_version,
                    value_json=orjson.dumps(value),
                    snapshot=version_snapshot((snapshots or {}).get(aggregate), coach_version),
                )
                fields = [part for pair in stored.to_hash().items() for part in pair]
                calls.append(
                    (
                        [
                            keys.aggregate(aggregate, coach_id),
                            keys.updates_channel(coach_id),
                            keys.version(coach_id),
                        ],
                        [self._publish, notice.encode(), *fields],
                    )
                )
                order.append(aggregate)

        def build(pipe: Any) -> None:
            for call_keys, args in calls:
                self._store_if_newer.queue(pipe, call_keys, args)
            for script, after_keys, after_args in after:
                script.queue(pipe, after_keys, after_args)

        scripts = [self._store_if_newer, *{id(s): s for s, _, _ in after}.values()]
        results = run_pipeline(self._redis, scripts, build)
        outcomes = results[: len(calls)]
        stale_by_aggregate: dict[str, int] = {}
        for aggregate, outcome in zip(order, outcomes, strict=True):
            if outcome != 1:
                stale_by_aggregate[aggregate] = stale_by_aggregate.get(aggregate, 0) + 1
        stale = sum(stale_by_aggregate.values())
        return WriteResult(
            stored=len(outcomes) - stale,
            stale=stale,
            stale_by_aggregate=stale_by_aggregate,
            after=tuple(results[len(calls) :]),
        )


def _base(coach: UUID, aggregate: Aggregate, fields: Sequence[Any]) -> Base | None:
    """A stored value as a base (`StoredAggregate.as_base`); None when nothing can serve."""
    try:
        stored = StoredAggregate.from_hash(coach, aggregate.name, fields)
        return None if stored is None else stored.as_base(aggregate.schema_version)
    except (TypeError, ValueError):  # a hash this release did not write
        return None
