"""The data store on a Redis Cluster (3 masters, 3 replicas): every script stays in one slot.

Unit level: the versioned store, its sharded notices, the freshness tickets, listener health,
the read API's sharded subscriptions and the client factory, against a real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis

from api.broadcast import Broadcaster
from pipeline import keys
from pipeline.events import ChangeEvent, ChangeType
from pipeline.freshness import Freshness, summary
from pipeline.health import HealthBoard, ListenerHealth, ListenerState
from pipeline.read import read_aggregate, read_all
from pipeline.redis_client import connect, connect_async, is_cluster, topology
from pipeline.redis_fencing import unfenced
from pipeline.routing import TABLE_AGGREGATES
from pipeline.scheduler import RecomputeScheduler
from pipeline.store import AggregateStore, Notice
from tests.recording_sender import RecordingSender

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def nodes_holding(client: redis.RedisCluster, coaches: list[uuid.UUID]) -> set[str]:
    return {client.get_node_from_key(keys.aggregate("coach-stats", c)).name for c in coaches}


@pytest.mark.parametrize(
    ("url", "kind", "nodes", "master", "db"),
    [
        ("redis+cluster://10.0.0.1:7000", "cluster", (("10.0.0.1", 7000),), None, 0),
        (
            "redis+cluster://a:7000,b:7001,c",
            "cluster",
            (("a", 7000), ("b", 7001), ("c", 6379)),
            None,
            0,
        ),
        ("rediss+cluster://u:p@a:7000/0", "cluster", (("a", 7000),), None, 0),
        (
            "redis+sentinel://s1:26379,s2:26380/mymaster",
            "sentinel",
            (("s1", 26379), ("s2", 26380)),
            "mymaster",
            0,
        ),
        ("redis+sentinel://:pw@s1/cache/3", "sentinel", (("s1", 26379),), "cache", 3),
    ],
)
def test_cluster_and_sentinel_urls_are_parsed(
    url: str, kind: str, nodes: tuple[tuple[str, int], ...], master: str | None, db: int
) -> None:
    found = topology(url)
    assert found is not None
    assert (found.kind, found.nodes, found.master, found.db) == (kind, nodes, master, db)


def test_credentials_and_tls_of_a_topology_url() -> None:
    found = topology("rediss+sentinel://app:s%40cret@s1:1/m?sentinel_password=other")
    assert found is not None
    assert (found.username, found.password, found.sentinel_password) == ("app", "s@cret", "other")
    assert found.auth()["ssl"] is True
    assert topology("redis://localhost:6379/0") is None  # redis-py reads its own URLs


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://s1:26379", "names the master"),
        ("redis+sentinel://s1/m/x", "must be a number"),
        ("redis+cluster://a:7000/2", "database 0 only"),
        ("redis+cluster://a:port", "port must be a number"),
        ("redis+cluster://", "at least one host"),
    ],
)
def test_bad_topology_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        topology(url)


def test_coaches_spread_over_every_master(cluster_client: redis.RedisCluster) -> None:
    coaches = [uuid.uuid4() for _ in range(60)]
    assert len(nodes_holding(cluster_client, coaches)) == 3


def test_versioned_writes_on_the_cluster(cluster_client: redis.RedisCluster) -> None:
    store = AggregateStore(cluster_client)
    coaches = [uuid.uuid4() for _ in range(30)]
    first = store.next_versions(coaches)
    second = store.next_versions(coaches)
    assert all(second[coach] == first[coach] + 1 for coach in coaches)
    values = {coach: {"n": 2} for coach in coaches}
    written = store.write_many(
        [("coach-stats", 1, values), ("coach-insights", 1, values)],
        second,
        snapshot_at=NOW,
        computed_at=NOW,
    )
    assert (written.stored, written.stale) == (60, 0)
    stale = store.write("coach-stats", 1, first, {c: {"n": 1} for c in coaches},
                        snapshot_at=NOW, computed_at=NOW)  # fmt: skip
    assert (stale.stored, stale.stale) == (0, 30)
    for coach in coaches:
        found = read_all(cluster_client, coach, ["coach-stats", "coach-insights"])
        assert found is not None
        assert {name: s.value for name, s in found.items()} == {
            "coach-stats": {"n": 2},
            "coach-insights": {"n": 2},
        }


def test_a_write_raises_each_coach_counter_in_its_own_slot(
    cluster_client: redis.RedisCluster,
) -> None:
    """The store script's third key (the coach's counter) shares the coach's slot; a Cluster
    has no former master to wait for after a failover (its demoted masters redirect writes)."""
    store = AggregateStore(cluster_client)
    coaches = [uuid.uuid4() for _ in range(30)]
    ahead = {coach: version + 10 for coach, version in store.next_versions(coaches).items()}
    written = store.write("coach-stats", 1, ahead, {c: {"n": 1} for c in coaches},
                          snapshot_at=NOW, computed_at=NOW)  # fmt: skip
    assert written.stored == 30
    assert all(version > ahead[c] for c, version in store.next_versions(coaches).items())
    assert unfenced(cluster_client) == []


def test_scripts_are_reloaded_on_every_primary_when_a_node_forgot_them(
    cluster_client: redis.RedisCluster,
) -> None:
    """A replica promoted by a failover has no scripts: NOSCRIPT, load everywhere, replay."""
    store = AggregateStore(cluster_client)
    coaches = [uuid.uuid4() for _ in range(20)]
    store.write("coach-stats", 1, 1, {c: {} for c in coaches}, snapshot_at=NOW, computed_at=NOW)
    cluster_client.script_flush()  # redis-py sends it to every primary
    written = store.write(
        "coach-stats", 1, 2, {c: {"n": 1} for c in coaches}, snapshot_at=NOW, computed_at=NOW
    )
    assert written.stored == 20
    stored = read_aggregate(cluster_client, coaches[0], "coach-stats")
    assert stored is not None and stored.value == {"n": 1}


def test_a_replay_after_one_primary_forgot_the_scripts_keeps_what_the_others_answered(
    cluster_client: redis.RedisCluster,
) -> None:
    """After a failover only the promoted replica answers NOSCRIPT; the other primaries ran
    their part of the pipeline. The replay runs it all again, and a compare-and-set run twice
    answers "not newer" the second time: those writes were reported stale (and a recompute
    request "already pending", its drain never sent). Each call keeps its first answer."""
    store = AggregateStore(cluster_client)
    coaches = [uuid.uuid4() for _ in range(30)]
    assert len(nodes_holding(cluster_client, coaches)) == 3
    store.write("coach-stats", 1, 1, {c: {} for c in coaches}, snapshot_at=NOW, computed_at=NOW)
    forgetful = cluster_client.get_primaries()[0]
    cluster_client.execute_command("SCRIPT", "FLUSH", target_nodes=forgetful)
    written = store.write(
        "coach-stats", 1, 2, {c: {"n": 1} for c in coaches}, snapshot_at=NOW, computed_at=NOW
    )
    assert (written.stored, written.stale) == (30, 0)


def test_a_stored_write_is_announced_on_the_coach_shard_channel(
    cluster_client: redis.RedisCluster,
) -> None:
    store = AggregateStore(cluster_client)
    coach = uuid.uuid4()
    pubsub = cluster_client.pubsub()
    pubsub.ssubscribe(keys.updates_channel(coach))
    subscribed = pubsub.get_sharded_message(timeout=5)
    assert subscribed is not None and subscribed["type"] == "ssubscribe"
    store.write("coach-stats", 1, 4, {coach: {}}, snapshot_at=NOW, computed_at=NOW,
                commit_ms={coach: 77})  # fmt: skip
    message = pubsub.get_sharded_message(timeout=5)
    assert message is not None and message["type"] == "smessage"
    notice = Notice.decode(message["data"])
    assert (notice.coach_id, notice.version, notice.commit_ms) == (str(coach), 4, 77)
    pubsub.close()


def test_freshness_tickets_on_the_cluster(cluster_client: redis.RedisCluster) -> None:
    store, freshness = AggregateStore(cluster_client), Freshness(cluster_client)
    coaches = [uuid.uuid4() for _ in range(12)]
    assert len(nodes_holding(cluster_client, coaches)) > 1
    events = [ChangeEvent("goals", ChangeType.INSERT, {"coach_id": str(c)}, None, NOW)
              for c in coaches]  # fmt: skip
    assert freshness.register(events) == 12
    names = sorted(TABLE_AGGREGATES["goals"])
    versions = store.next_versions(coaches)
    store.write_many([(name, 1, {c: {} for c in coaches}) for name in names], versions,
                     snapshot_at=NOW, computed_at=NOW)  # fmt: skip
    stored_at = NOW + timedelta(milliseconds=40)
    latencies = freshness.stored(dict.fromkeys(names, coaches), versions, stored_at)
    assert latencies == [0.04] * 12
    assert summary(cluster_client, now=stored_at.timestamp())["changes"] == 12


def test_listener_health_on_the_cluster(cluster_client: redis.RedisCluster) -> None:
    board = HealthBoard(cluster_client, stale_after_s=30)
    now = datetime.now(UTC).timestamp()
    for index in range(3):
        board.report(
            ListenerHealth(f"postgres:{index}:host", "postgres", ListenerState.CONNECTED, now)
        )
    assert len(board.listeners()) == 3
    assert board.status(now).color.value == "green"


def test_the_read_api_follows_the_shard_channels_of_watched_coaches(cluster_url: str) -> None:
    async def scenario() -> None:
        client = connect_async(cluster_url)
        assert is_cluster(client)
        broadcaster = Broadcaster(client)
        await broadcaster.start()
        writer = AggregateStore(connect(cluster_url))
        coaches = [uuid.uuid4() for _ in range(6)]
        try:
            async with contextlib.AsyncExitStack() as stack:
                queues = [
                    await stack.enter_async_context(broadcaster.watch(str(c))) for c in coaches
                ]
                for version in range(1, 4):  # until the subscriptions are live
                    await asyncio.to_thread(
                        writer.write, "coach-stats", 1, version, {c: {} for c in coaches},
                        snapshot_at=NOW, computed_at=NOW,
                    )  # fmt: skip
                    if all(not q.empty() for q in queues):
                        break
                    await asyncio.sleep(0.5)
                for coach, queue in zip(coaches, queues, strict=True):
                    event = await asyncio.wait_for(queue.get(), 5)
                    assert Notice.decode(event.data).coach_id == str(coach)
        finally:
            await broadcaster.stop()
            await client.aclose()

    asyncio.run(scenario())


def test_the_scheduler_scripts_run_on_the_cluster(cluster_client: redis.RedisCluster) -> None:
    """What `pipeline.scheduler` must keep: each script's keys (and those it builds from its
    arguments) in one slot, the slot of its shard's `{s<N>}` tag; the shards spread over the
    masters. Request, claim, renew, release (with costs) and sweep over every shard at once."""
    sender = RecordingSender()
    scheduler = RecomputeScheduler(
        cluster_client, sender, window_ms=50, stale_ms=30_000, lease_ms=3_000, shards=8
    )
    slots = {cluster_client.keyslot(keys.due(shard)) for shard in range(scheduler.shards)}
    owners = {cluster_client.get_node_from_key(keys.due(shard)).name for shard in range(8)}
    assert len(slots) == 8 and len(owners) == 3
    coaches = [uuid.uuid4() for _ in range(10)]
    pairs = [(name, coach) for name in ("coach-stats", "coach-clients") for coach in coaches]
    scheduler.request(pairs)
    shards = {scheduler.shard_of(coach) for coach in coaches}
    assert {shard for shard, _ in sender.drains} == shards
    claimed = []
    for shard in sorted(shards):
        claim = scheduler.claim(shard, f"task-{shard}", 100)
        assert scheduler.renew(shard, f"task-{shard}")
        claimed += claim.pairs
        scheduler.release(shard, f"task-{shard}", claim.coaches, 1.0)  # a second: costly
    assert sorted(claimed) == sorted(pairs)
    assert set(scheduler.widened()) == set(coaches)
    assert scheduler.sweep() == {}
    assert scheduler.due_pairs() == set()
