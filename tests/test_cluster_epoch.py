"""The failover epoch on a Redis Cluster: one per master, kept on that master, so a failover of
any shard is seen, also when it lost that shard's remembered epoch or came before the first
check (`pipeline.redis_epoch`). Real `CLUSTER FAILOVER`s on the private 3+3 cluster."""

from __future__ import annotations

import itertools

import pytest
import redis

from devtools.redis_topologies import PrivateRedisCluster, server
from pipeline import keys
from pipeline.metrics import EPOCH_CHECK_ERRORS
from pipeline.redis_client import connect
from pipeline.redis_epoch import SLOT_MAP_READS, current_epoch, record_epoch


def epoch_key_on(cluster: PrivateRedisCluster, port: int) -> str:
    """The epoch key that the master on `port` serves (the first `epoch-N` tag in its slots)."""
    return next(
        key
        for key in (keys.shard_epoch(f"epoch-{index}") for index in itertools.count())
        if cluster.master_port_of(key) == port
    )


def promote_a_replica(
    cluster: PrivateRedisCluster, client: redis.RedisCluster, *, tell_the_client: bool = True
) -> int:
    """`CLUSTER FAILOVER` of the master serving the first epoch tag; returns the new master's
    port once every node sees it. With `tell_the_client`, once the client's slot map has it
    too (what a MOVED redirection does in the pipeline); without, the client's map still
    names the former master, as in a beat whose first command after a failover is the check."""
    victim = cluster.master_port_of(keys.shard_epoch("epoch-0"))
    promoted = cluster.failover(victim)
    if tell_the_client:
        client.nodes_manager.initialize()
    return promoted


def assert_seen_once(client: redis.RedisCluster, promoted: int) -> None:
    """The next check reports the failover, naming the promoted master, without a master
    left out as unreachable or misnamed; the one after reports none."""
    errors = EPOCH_CHECK_ERRORS._value.get()
    changed = record_epoch(client)
    assert changed is not None and f":{promoted} " in changed, changed
    assert record_epoch(client) is None
    assert EPOCH_CHECK_ERRORS._value.get() == errors


def test_every_master_keeps_its_own_epoch(
    cluster_client: redis.RedisCluster, redis_cluster: PrivateRedisCluster
) -> None:
    record_epoch(cluster_client)  # first sight (a master promoted by an earlier test: a change)
    assert record_epoch(cluster_client) is None
    masters = {node.port for node in cluster_client.get_primaries()}
    assert len(masters) == 3
    for port in masters:  # each master holds its own epoch, under a key of its slots
        assert cluster_client.get(epoch_key_on(redis_cluster, port)) is not None
    assert current_epoch(cluster_client).count("replid:") == 3


def test_a_cluster_failover_is_seen_once(
    cluster_client: redis.RedisCluster, redis_cluster: PrivateRedisCluster
) -> None:
    record_epoch(cluster_client)
    assert record_epoch(cluster_client) is None
    promoted = promote_a_replica(redis_cluster, cluster_client)
    assert_seen_once(cluster_client, promoted)


def test_a_cluster_failover_that_lost_the_shards_epoch_still_reads_as_one(
    cluster_client: redis.RedisCluster, redis_cluster: PrivateRedisCluster
) -> None:
    """The promoted replica never got its shard's epoch key (asynchronous replication): its
    own record of the master it followed (`master_replid2`) stands in."""
    record_epoch(cluster_client)
    promoted = promote_a_replica(redis_cluster, cluster_client)
    cluster_client.delete(epoch_key_on(redis_cluster, promoted))  # the write that was lost
    assert_seen_once(cluster_client, promoted)


def test_a_cluster_failover_before_the_first_check_reads_as_one(
    cluster_client: redis.RedisCluster, redis_cluster: PrivateRedisCluster
) -> None:
    """No epoch was ever recorded (the cluster was just emptied) when a master failed over."""
    promoted = promote_a_replica(redis_cluster, cluster_client)
    assert_seen_once(cluster_client, promoted)


def test_a_failover_the_clients_slot_map_has_not_seen_reads_as_one(
    cluster_client: redis.RedisCluster, redis_cluster: PrivateRedisCluster
) -> None:
    """The check is the first command after a failover, so the client's slot map still names
    the demoted master as the shard's master. Reading that server's replication id (now its
    new master's) used to store the promoted master's own epoch as remembered: the failover
    was never reported, or reported under the demoted server's name. The check now reads
    the map again when a server it took for a master answers as a replica."""
    record_epoch(cluster_client)
    assert record_epoch(cluster_client) is None
    promoted = promote_a_replica(redis_cluster, cluster_client, tell_the_client=False)
    assert_seen_once(cluster_client, promoted)


def test_a_master_that_does_not_answer_hides_no_other_failover(
    cluster_url: str, redis_cluster: PrivateRedisCluster
) -> None:
    """One master silent (CLIENT PAUSE: its clients wait, the cluster bus goes on, so no
    failover) while another shard fails over: the check still sees that failover, counts the
    silent master and leaves it for the next check; it used to raise, and beat's status check
    then never ran."""
    # Long enough for a loaded host to answer INFO from the promoted master; the silent one
    # costs this much per try.
    client = connect(cluster_url, socket_timeout=2)
    assert isinstance(client, redis.RedisCluster)
    try:
        record_epoch(client)
        promoted = promote_a_replica(redis_cluster, client)
        silent = next(
            int(node.port) for node in client.get_primaries() if int(node.port) != promoted
        )
        errors = EPOCH_CHECK_ERRORS._value.get()
        server(silent).execute_command("CLIENT", "PAUSE", 20_000, "ALL")
        try:
            changed = record_epoch(client)
        finally:
            server(silent).execute_command("CLIENT", "UNPAUSE")
        assert changed is not None and f":{promoted} " in changed
        assert EPOCH_CHECK_ERRORS._value.get() > errors
        assert record_epoch(client) is None  # the silent master answers again: no change
    finally:
        client.close()


def test_a_slot_map_still_stale_after_every_reread_leaves_the_shard_for_the_next_check(
    cluster_client: redis.RedisCluster,
    redis_cluster: PrivateRedisCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client's slot map still names the demoted master after all `SLOT_MAP_READS`
    readings (the nodes' own maps lag, held here by a map reading that changes nothing).
    The check must not record the replica's replication id (the promoted master's own
    epoch) as the shard's: it counts the shard as skipped, reports the other shards'
    state, and the next check, with a fresh map, still reports the failover."""
    record_epoch(cluster_client)
    assert record_epoch(cluster_client) is None
    shard_key = keys.shard_epoch("epoch-0")  # the tag of the master about to fail over
    remembered = cluster_client.get(shard_key)
    promoted = promote_a_replica(redis_cluster, cluster_client, tell_the_client=False)
    errors = EPOCH_CHECK_ERRORS._value.get()
    rereads: list[None] = []
    with monkeypatch.context() as patch:
        patch.setattr(cluster_client.nodes_manager, "initialize", lambda: rereads.append(None))
        assert record_epoch(cluster_client) is None  # the other two shards: unchanged
    assert len(rereads) == SLOT_MAP_READS - 1
    assert EPOCH_CHECK_ERRORS._value.get() == errors + 1
    cluster_client.nodes_manager.initialize()
    # nothing was recorded for that shard: it still remembers its former master's epoch
    assert cluster_client.get(shard_key) == remembered
    assert_seen_once(cluster_client, promoted)
