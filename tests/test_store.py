"""Versioned store and read side against a real Redis."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, datetime

import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import keys
from pipeline.lua import Lua
from pipeline.read import read_aggregate, read_all
from pipeline.store import AggregateStore, Notice

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def write(store: AggregateStore, coach: uuid.UUID, version: int, value: dict) -> int:
    return store.write(
        "coach-stats", 1, version, {coach: value}, snapshot_at=NOW, computed_at=NOW
    ).stored


def test_read_returns_value_version_and_computed_at(redis_client: redis.Redis) -> None:
    store = AggregateStore(redis_client)
    coach = uuid.uuid4()
    assert write(store, coach, 7, {"n": 1}) == 1
    stored = read_aggregate(redis_client, coach, "coach-stats")
    assert stored is not None
    assert (stored.value, stored.version, stored.computed_at) == ({"n": 1}, 7, NOW)
    assert stored.schema_version == 1


def test_unknown_coach_reads_as_none(redis_client: redis.Redis) -> None:
    assert read_aggregate(redis_client, uuid.uuid4(), "coach-stats") is None
    assert read_all(redis_client, uuid.uuid4()) is None


def test_an_older_version_never_overwrites_a_newer_one(redis_client: redis.Redis) -> None:
    store = AggregateStore(redis_client)
    coach = uuid.uuid4()
    assert write(store, coach, 5, {"n": 5}) == 1
    assert write(store, coach, 4, {"n": 4}) == 0
    assert write(store, coach, 5, {"n": "again"}) == 0  # same version twice: idempotent
    stored = read_aggregate(redis_client, coach, "coach-stats")
    assert stored is not None and stored.value == {"n": 5}


def test_a_version_taken_from_a_server_ahead_of_this_one_leaves_later_versions_above_it(
    redis_client: redis.Redis,
) -> None:
    """A version taken on a master that was being replaced, written once the process follows
    the new master (whose counter never saw those increments), or taken before a restart that
    brought back an older counter: the write raises the coach's counter to its version, so a
    recompute that takes one afterwards is stored. Before, every recompute of the coach was
    rejected as stale until the counter caught up (seen in the Sentinel failover test: a coach
    wrong for over 30 s while the audit's repairs were rejected)."""
    store = AggregateStore(redis_client)
    coach = uuid.uuid4()
    assert store.next_version(coach) == 1
    assert write(store, coach, 10, {"n": "from the other server"}) == 1
    after = store.next_version(coach)
    assert after > 10
    assert write(store, coach, after, {"n": "recomputed after"}) == 1
    stored = read_aggregate(redis_client, coach, "coach-stats")
    assert stored is not None and stored.value == {"n": "recomputed after"}


def test_a_counter_left_behind_its_stored_versions_catches_up_at_the_first_rejected_write(
    redis_client: redis.Redis,
) -> None:
    """A store that got there before the counter was raised by its writes (a counter lost or
    rolled back on its own): one rejected write lifts it above what is stored, and the next
    recompute is stored."""
    store = AggregateStore(redis_client)
    coach = uuid.uuid4()
    assert write(store, coach, 10, {"n": 10}) == 1
    redis_client.set(keys.version(coach), 2)
    assert write(store, coach, store.next_version(coach), {"n": 3}) == 0
    assert write(store, coach, store.next_version(coach), {"n": "next"}) == 1


def test_each_stored_write_publishes_a_notice(redis_client: redis.Redis) -> None:
    store = AggregateStore(redis_client)
    coach = uuid.uuid4()
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.updates_channel(coach))
    subscribed = pubsub.get_message(timeout=5)  # the subscription is live from here on
    assert subscribed is not None and subscribed["type"] == "subscribe"
    store.write(
        "coach-stats", 1, 3, {coach: {}}, snapshot_at=NOW, computed_at=NOW, commit_ms={coach: 99}
    )
    store.write("coach-stats", 1, 2, {coach: {}}, snapshot_at=NOW, computed_at=NOW)  # stale
    store.write("coach-stats", 1, 4, {coach: {}}, snapshot_at=NOW, computed_at=NOW)

    def next_notice() -> Notice:
        message = pubsub.get_message(timeout=5)
        assert message is not None
        return Notice.decode(message["data"])

    notice = next_notice()
    assert (notice.coach_id, notice.aggregate, notice.version, notice.commit_ms) == (
        str(coach),
        "coach-stats",
        3,
        99,
    )
    # Notices arrive in order: had the stale write published one, it would be this one.
    assert next_notice().version == 4
    pubsub.close()


@settings(max_examples=25, deadline=None)
@given(versions=st.lists(st.integers(1, 10_000), min_size=2, max_size=40, unique=True),
       writers=st.integers(2, 8), seed=st.integers())  # fmt: skip
def test_concurrent_writers_in_any_order_leave_the_newest(
    redis_server, versions: list[int], writers: int, seed: int
) -> None:
    client = redis.Redis(port=redis_server.port)
    coach = uuid.uuid4()
    random.Random(seed).shuffle(versions)
    shares = [versions[i::writers] for i in range(writers)]
    barrier = threading.Barrier(writers)

    def writer(mine: list[int]) -> None:
        store = AggregateStore(redis.Redis(port=redis_server.port))
        barrier.wait()
        for version in mine:
            write(store, coach, version, {"version": version})

    threads = [threading.Thread(target=writer, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = read_aggregate(client, coach, "coach-stats")
    assert stored is not None
    assert stored.version == max(versions)
    assert stored.value == {"version": max(versions)}


def test_writes_survive_redis_forgetting_its_scripts(redis_client: redis.Redis) -> None:
    store = AggregateStore(redis_client)
    coach = uuid.uuid4()
    assert write(store, coach, 1, {"n": 1}) == 1
    redis_client.script_flush()  # a Redis restart empties the script cache
    assert write(store, coach, 2, {"n": 2}) == 1
    stored = read_aggregate(redis_client, coach, "coach-stats")
    assert stored is not None and stored.version == 2


def test_calls_queued_after_the_writes_see_them_in_the_same_round_trip(
    redis_client: redis.Redis,
) -> None:
    """`write_many(after=...)`: a drain marks freshness tickets behind its writes; each call
    runs after every write (a script Redis does not know yet is loaded and the pipeline
    replayed)."""
    store = AggregateStore(redis_client)
    coach = uuid.uuid4()
    version_of = Lua(redis_client, "return redis.call('HGET', KEYS[1], 'version')")
    redis_client.script_flush()
    key = keys.aggregate("coach-stats", coach)
    written = store.write_many(
        [("coach-stats", 1, {coach: {"n": 1}})],
        {coach: 9},
        snapshot_at=NOW,
        computed_at=NOW,
        after=[(version_of, [key], []), (version_of, [key], [])],
    )
    assert (written.stored, written.stale) == (1, 0)
    assert [int(found) for found in written.after] == [9, 9]
