"""Has the data store failed over since we last looked? Writes may have been lost if so.

Redis replicates asynchronously: a master that fails (or, under Sentinel, a demoted master
that clients still wrote to for a moment) can take its last writes with it, among them
aggregates stored, versions taken, and recomputes requested but not yet claimed. Nothing in
the pipeline would redo them until the hourly reconcile, so beat's status check watches the
store's *epoch* and, when it changes, the caller refreshes every aggregate of every active
coach (`tasks.jobs.check_realtime`).

The epoch is the replication id of the master (`master_replid`: a promoted replica takes a new
one, and a replica reports its master's), or on a Redis Cluster the cluster's configuration
epoch (`cluster_current_epoch`, raised by every failover of any master). Both also change when
a master restarts without its replication state: a refresh then is what we want too.
"""

from __future__ import annotations

from typing import Any, cast

from pipeline import keys
from pipeline.redis_client import RedisClient, is_cluster
from pipeline.redis_values import as_text


def current_epoch(client: RedisClient) -> str:
    """`cluster:<current epoch>` on a Cluster, else `replid:<master replication id>`."""
    if is_cluster(client):
        found: dict[str, Any] = cast(Any, client).cluster_info()
        return f"cluster:{found['cluster_current_epoch']}"
    replication = client.info("replication")
    return f"replid:{replication['master_replid']}"


def record_epoch(client: RedisClient) -> str | None:
    """Remember the current epoch; return the one remembered before if it differs (None when
    it is the same, or none was remembered). GETSET makes exactly one caller see each change."""
    epoch = current_epoch(client)
    previous = client.getset(keys.REDIS_EPOCH, epoch)
    if previous is None or as_text(previous) == epoch:
        return None
    return as_text(previous)
