"""The stored-aggregate hash: one layout, written by the store and decoded by every reader."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis

from pipeline import keys
from pipeline.aggregates.delta import Base
from pipeline.read import read_aggregate
from pipeline.store import AggregateStore
from pipeline.stored import HASH_FIELDS, StoredAggregate, base_from_hash

COACH = uuid.UUID("00000000-0000-0000-0000-0000000000c1")
NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
STORED = StoredAggregate(
    coach_id=COACH,
    aggregate="coach-stats",
    version=12,
    computed_at=NOW,
    as_of=NOW - timedelta(seconds=1),
    schema_version=3,
    value_json=b'{"completed":4,"rating":null}',
)


def test_the_hash_holds_the_layout_fields_version_first() -> None:
    assert tuple(STORED.to_hash()) == HASH_FIELDS
    assert HASH_FIELDS[0] == "version"


@pytest.mark.parametrize("decode", [False, True], ids=["bytes replies", "decoded replies"])
def test_from_hash_reads_back_what_to_hash_wrote(decode: bool) -> None:
    def reply(value: object) -> object:
        raw = value if isinstance(value, bytes) else str(value).encode()
        return raw.decode() if decode else raw

    replies = [reply(value) for value in STORED.to_hash().values()]
    assert StoredAggregate.from_hash(COACH, "coach-stats", replies) == STORED


def test_nothing_stored_decodes_as_none() -> None:
    assert StoredAggregate.from_hash(COACH, "coach-stats", [None] * len(HASH_FIELDS)) is None


def test_value_is_the_parsed_json_and_as_json_carries_it() -> None:
    assert STORED.value == {"completed": 4, "rating": None}
    assert STORED.as_json() == {
        "coach_id": str(COACH),
        "aggregate": "coach-stats",
        "version": 12,
        "computed_at": NOW.isoformat(),
        "as_of": (NOW - timedelta(seconds=1)).isoformat(),
        "schema_version": 3,
        "value": {"completed": 4, "rating": None},
    }


def test_the_store_writes_exactly_the_layout_and_readers_decode_it(
    redis_client: redis.Redis,
) -> None:
    coach = uuid.uuid4()
    AggregateStore(redis_client).write(
        "coach-stats", 3, 12, {coach: {"completed": 4}}, snapshot_at=NOW, computed_at=NOW
    )
    written = redis_client.hgetall(keys.aggregate("coach-stats", coach))
    assert {field.decode() for field in written} == set(HASH_FIELDS)
    stored = read_aggregate(redis_client, coach, "coach-stats")
    assert stored is not None
    assert (stored.version, stored.schema_version, stored.as_of) == (12, 3, NOW)
    assert orjson.loads(stored.value_json) == {"completed": 4}


BASE_REPLY = [b"3", b'{"completed":4}', NOW.isoformat().encode(), b"10:20:12,15"]


def test_a_base_decodes_the_value_its_clock_and_its_snapshot() -> None:
    base = base_from_hash(BASE_REPLY, schema_version=3)
    assert base == Base({"completed": 4}, NOW, "10:20:12,15")


@pytest.mark.parametrize(
    "reply",
    [
        [None, None, None, None],  # nothing stored
        [b"2", *BASE_REPLY[1:]],  # another schema
        [*BASE_REPLY[:3], b""],  # written without a snapshot
        [*BASE_REPLY[:3], None],  # written before snapshots were
        [*BASE_REPLY[:3], b"10:20:12,15'; DROP TABLE x"],  # not Postgres's: never cast
        [*BASE_REPLY[:3], b"xmin:xmax:"],
    ],
    ids=["none", "schema", "empty", "missing", "injected", "garbage"],
)
def test_no_base_from_what_cannot_serve(reply: list[bytes | None]) -> None:
    assert base_from_hash(reply, schema_version=3) is None
