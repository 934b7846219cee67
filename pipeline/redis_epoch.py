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

The remembered epoch is itself a replicated write: when the first status check writes it to a
master that is being replaced, the new master holds none, so a promoted master's own record
of its former master (`master_replid2`) stands in for it (`record_epoch`).
"""

from __future__ import annotations

from typing import Any, cast

from pipeline import keys
from pipeline.redis_client import RedisClient, is_cluster
from pipeline.redis_values import as_text


def current_epoch(client: RedisClient) -> str:
    """`cluster:<current epoch>` on a Cluster, else `replid:<master replication id>`."""
    return _epochs(client)[0]


def _epochs(client: RedisClient) -> tuple[str, str | None]:
    """The current epoch, and the one before it when the server itself knows it: a promoted
    replica keeps its former master's replication id as `master_replid2` (Redis's PSYNC2; a
    Cluster keeps no such trace, nor does a master that never followed another)."""
    if is_cluster(client):
        found: dict[str, Any] = cast(Any, client).cluster_info()
        return f"cluster:{found['cluster_current_epoch']}", None
    replication = client.info("replication")
    # -1 (and a replid2 of zeros) until the server changes replication id
    followed = int(replication.get("second_repl_offset", -1)) >= 0
    return f"replid:{replication['master_replid']}", (
        f"replid:{replication['master_replid2']}" if followed else None
    )


def record_epoch(client: RedisClient) -> str | None:
    """Remember the current epoch; return the one remembered before if it differs (None when
    it is the same). GETSET makes exactly one caller see each change.

    The remembered epoch is a write like any other, so a failover can lose it too: a new
    master that never received it holds none. Nothing remembered on a promoted master then
    reads as a change from its former master's epoch (`master_replid2`); nothing remembered
    on any other server is a first sight (None). A store that once failed over before the
    pipeline first ran gets one refresh more, at its first check.
    """
    epoch, former = _epochs(client)
    previous = client.getset(keys.REDIS_EPOCH, epoch)
    if previous is None:
        return former
    if as_text(previous) == epoch:
        return None
    return as_text(previous)
