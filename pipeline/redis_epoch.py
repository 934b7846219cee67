"""Has the data store failed over since we last looked? Writes may have been lost if so.

Redis replicates asynchronously: a master that fails (or, under Sentinel, a demoted master
that clients still wrote to for a moment) can take its last writes with it, among them
aggregates stored, versions taken, and recomputes requested but not yet claimed. Nothing in
the pipeline would redo them until the hourly reconcile, so beat's status check watches the
store's *epoch* and, when it changes, the caller refreshes every aggregate of every active
coach (`tasks.jobs.check_realtime`).

The epoch of a master is its replication id (`master_replid`): a promoted replica takes a new
one, and a restart without the replication state gives a new one too (a refresh then is what
we want as well). One server or a Sentinel-guarded master has one epoch, remembered under
`keys.REDIS_EPOCH`. A Redis Cluster has one per master, each remembered *on that master*
(`keys.shard_epoch` with a hash tag that lands in one of its slots), so a failover of any
shard is seen, whichever shard it is.

The remembered epoch is itself a replicated write: when a check writes it to a master that is
being replaced (or no check ran before the failover), the new master holds none, so a promoted
master's own record of its former master (`master_replid2`, kept by Redis's PSYNC2 on a
Cluster's masters too) stands in for it (`record_epoch`). Keeping each shard's epoch on its own
master is what makes that work on a Cluster: the shard that lost its key is the shard whose
master was promoted.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, cast

import structlog
from redis.crc import key_slot
from redis.exceptions import ReadOnlyError, RedisClusterException, RedisError

from pipeline import keys
from pipeline.metrics import EPOCH_CHECK_ERRORS
from pipeline.redis_client import RedisClient, is_cluster
from pipeline.redis_values import as_text

MAX_TAGS_TRIED = 16_384 * 8
"""Enough to find a tag in the slots of even a master that serves a single slot."""

SLOT_MAP_READS = 3
"""Reads of a Cluster's slot map in one check before a shard whose supposed master answers as
a replica is left for the next check."""

SLOT_MAP_PAUSE_S = 0.2
"""Seconds between two reads of the slot map: the nodes learn of a promotion from its pings
(every 100 ms or so), so a read at once may meet a node that has not yet."""

REPLICA = "answered as a replica"
"""The reason a server the slot map took for a master was skipped (`_shard_epochs`)."""

log = structlog.get_logger("pipeline.redis_epoch")


def current_epoch(client: RedisClient) -> str:
    """`replid:<master replication id>`; on a Cluster one `<node> replid:<id>` per master,
    joined by `, ` in node order."""
    if is_cluster(client):
        return ", ".join(
            f"{node.name} {epoch}" for node, (epoch, _) in _shard_epochs(client).values()
        )
    return _epochs(_master_replication(client))[0]


def record_epoch(client: RedisClient) -> str | None:
    """Remember the current epoch; return the one remembered before if it differs (None when
    it is the same). GETSET makes exactly one caller see each change. On a Cluster every
    master's epoch is recorded on that master, and the changed ones are returned
    (`<node> replid:<id>`, joined by `, `); None when no master changed. A master that does
    not answer, or that the client's slot map still names after a failover, is logged
    (`redis_epoch_master_skipped`, with the reason), counted
    (`coachpipe_redis_epoch_check_errors_total`) and left for the next check, so one dead
    master never hides another's failover; on one server or Sentinel a RedisError is raised.
    On a Cluster the GETSET goes to the very node whose INFO was read, not wherever the slot
    map routes the key: a failover between the two fails the write (MOVED: skipped) instead of
    recording one server's epochs on another.

    The remembered epoch is a write like any other, so a failover can lose it too: a new
    master that never received it holds none. Nothing remembered on a promoted master then
    reads as a change from its former master's epoch (`master_replid2`); nothing remembered
    on any other server is a first sight (None). A store that once failed over before the
    pipeline first ran gets one refresh more, at its first check.
    """
    if not is_cluster(client):
        return _record(client, keys.REDIS_EPOCH, _epochs(_master_replication(client)))
    cluster = cast(Any, client)
    changed = []
    for key, (node, epochs) in _shard_epochs(client).items():
        try:
            previous = _record(cluster.get_redis_connection(node), key, epochs)
        except RedisError as error:
            _skipped(node.name, type(error).__name__)
            continue
        if previous is not None:
            changed.append(f"{node.name} {previous}")
    return ", ".join(changed) or None


def _record(client: RedisClient, key: str, epochs: tuple[str, str | None]) -> str | None:
    epoch, former = epochs
    previous = client.getset(key, epoch)
    if previous is None:
        return former
    if as_text(previous) == epoch:
        return None
    return as_text(previous)


def _master_replication(client: RedisClient) -> dict[str, Any]:
    """INFO replication of one server or a Sentinel-guarded master; a ReadOnlyError when the
    server answering is a replica (a pooled connection to a demoted master): its replication
    id is its new master's, and recording it would hide the failover."""
    replication: dict[str, Any] = client.info("replication")
    if replication.get("role") != "master":
        raise ReadOnlyError(f"the store's master answered as a {replication.get('role')}")
    return replication


def _epochs(replication: dict[str, Any]) -> tuple[str, str | None]:
    """A server's epoch, and the one before it when the server itself knows it: a promoted
    replica keeps its former master's replication id as `master_replid2` (a master that
    never followed another has none)."""
    # -1 (and a replid2 of zeros) until the server changes replication id
    followed = int(replication.get("second_repl_offset", -1)) >= 0
    return f"replid:{replication['master_replid']}", (
        f"replid:{replication['master_replid2']}" if followed else None
    )


ShardEpochs = dict[str, tuple[Any, tuple[str, str | None]]]
"""Epoch key → (the `redis.cluster.ClusterNode` serving it as master, its epochs)."""


def _shard_epochs(client: RedisClient) -> ShardEpochs:
    """For each master of a Cluster, in node order: its epoch key (`keys.shard_epoch` with
    the first tag `epoch-0`, `epoch-1`, … whose slot it serves) → (its node, its epochs).
    The tags are found again at every call, so a resharding moves them along; a master that
    gains a tag reads it as a first sight; a master serving no slot has none.

    The client's slot map is only as fresh as its last redirection: when the check is the
    first command after a failover, the map still names the demoted master, which now
    answers as a replica with its new master's replication id. Recording that would store
    the promoted master's own epoch as the remembered one and hide the failover. So a server
    the map takes for a master must say so itself (`role:master`); when one does not, the map
    is read again from the nodes, `SLOT_MAP_PAUSE_S` apart, up to `SLOT_MAP_READS` times.
    What is still skipped after that (a replica, an error) is reported once
    (`_skipped`) and left for the next check; a slot map that cannot be read at all leaves
    every shard of it for the next check."""
    cluster = cast(Any, client)
    found: ShardEpochs = {}
    skipped: dict[str, str] = {}
    for read in range(1, SLOT_MAP_READS + 1):
        if read > 1:
            time.sleep(SLOT_MAP_PAUSE_S)
        try:
            if read > 1:
                cluster.nodes_manager.initialize()
            found, skipped = _read_shards(cluster)
        except RedisClusterException as error:  # no node gave a whole map: next check
            _skipped("slot map", type(error).__name__)
            return {}
        if REPLICA not in skipped.values():
            break
    for name, reason in skipped.items():
        _skipped(name, reason)
    return found


def _read_shards(cluster: Any) -> tuple[ShardEpochs, dict[str, str]]:
    """One pass of `_shard_epochs` over the client's slot map as it is: the shards read, and
    the servers it takes for masters that were not read → why (`REPLICA`, or the error's
    type). Raises RedisClusterException when the map leaves a slot uncovered."""
    primaries = {node.name: node for node in cluster.get_primaries()}
    tags: dict[str, str] = {}
    for index in itertools.count():
        if len(tags) == len(primaries) or index > MAX_TAGS_TRIED:
            break
        key = keys.shard_epoch(f"epoch-{index}")
        owner = cluster.nodes_manager.get_node_from_slot(key_slot(key.encode())).name
        tags.setdefault(owner, key)
    found: ShardEpochs = {}
    skipped: dict[str, str] = {}
    for name in sorted(tags):
        try:
            replication = cluster.info("replication", target_nodes=primaries[name])
        except RedisError as error:  # one master down must not hide the others' failovers
            skipped[name] = type(error).__name__
            continue
        if replication.get("role") != "master":
            skipped[name] = REPLICA
            continue
        found[tags[name]] = (primaries[name], _epochs(replication))
    return found, skipped


def _skipped(node_name: str, reason: str) -> None:
    """A master left out of this check; the next check reads it (and, if it was replaced
    meanwhile, its successor's `master_replid2` shows the failover)."""
    EPOCH_CHECK_ERRORS.inc()
    log.warning("redis_epoch_master_skipped", node=node_name, reason=reason)
