"""The stored-aggregate hash: one layout, written by the store and decoded by every reader."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis

from pipeline import keys
from pipeline.aggregates.delta import Base, SnapshotId
from pipeline.read import read_aggregate
from pipeline.store import AggregateStore
from pipeline.stored import HASH_FIELDS, StoredAggregate, version_snapshot

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


RUN = "2026-12-03 17:12:59.1+00 2026-12-03 17:12:58.7+00"


def test_a_value_with_its_snapshot_is_a_base() -> None:
    stored = replace(STORED, snapshot=version_snapshot(f"10:20:12,15@{RUN}", STORED.version))
    assert stored.as_base(schema_version=3) == Base(
        {"completed": 4, "rating": None},
        NOW - timedelta(seconds=1),
        SnapshotId("10:20:12,15", RUN),
    )


@pytest.mark.parametrize(
    ("snapshot", "schema", "value"),
    [
        (f"10:20:@{RUN}#12", 2, STORED.value_json),  # another schema
        ("", 3, STORED.value_json),  # written without a snapshot
        (f"10:20:@{RUN}#11", 3, STORED.value_json),  # another version's (an older worker's)
        (f"10:20:@{RUN}", 3, STORED.value_json),  # no version
        ("10:20:#12", 3, STORED.value_json),  # no server run
        (f"10:20:12,15'; DROP TABLE x@{RUN}#12", 3, STORED.value_json),  # never cast
        (f"xmin:xmax:@{RUN}#12", 3, STORED.value_json),
        (f"\u0661\u0660:\u0662\u0660:@{RUN}#12", 3, STORED.value_json),  # not ASCII digits
        (f"\u00b2:3:@{RUN}#12", 3, STORED.value_json),
        (f"0:0:@{RUN}#12", 3, STORED.value_json),  # Postgres rejects a zero xmin
        (f"4294967296:4294967297:@{RUN}#12", 3, STORED.value_json),  # low 32 bits zero
        (f"5:3:@{RUN}#12", 3, STORED.value_json),  # xmin after xmax
        (f"10:20:15,12@{RUN}#12", 3, STORED.value_json),  # in progress out of order
        (f"10:20:25@{RUN}#12", 3, STORED.value_json),  # in progress past xmax
        (f"10:{2**64}:@{RUN}#12", 3, STORED.value_json),  # past 64 bits
        (f"10:20:@{RUN}#12", 3, b"{not json"),
        (f"10:20:@{RUN}#12", 3, b"[1, 2]"),  # not an object
    ],
)
def test_no_base_from_what_cannot_serve(snapshot: str, schema: int, value: bytes) -> None:
    stored = replace(STORED, snapshot=snapshot, schema_version=3, value_json=value)
    assert stored.as_base(schema_version=schema) is None


def test_no_base_from_a_clock_without_a_time_zone() -> None:
    stored = replace(STORED, snapshot=f"10:20:@{RUN}#12", as_of=datetime(2026, 1, 2))
    assert stored.as_base(schema_version=3) is None
