"""Is a failover of the data store over for the writers: does a former master still take writes?

Under Sentinel the old master is not told at once that it was replaced: the sentinels turn it
into a replica of the new master only when they next look at it, 8 s or more after the
promotion (`+convert-to-slave`; the sentinels' INFO period is 10 s, and they wait for the
instance to report the wrong role for 4 publish periods of 2 s first). Until then it takes
the writes of every process that still talks to it (a pool that has not asked the sentinels
again, a sentinel that names the new master late), and the new master never sees them. Only
once it answers as a replica do such writes fail loudly (`READONLY`) instead of vanishing:
the failover is *fenced*, and a refresh sent after that redoes whatever was lost before
(`tasks.jobs.check_realtime`).

One server has no former master; a Redis Cluster's demoted master learns of the promotion
from the bus within a node timeout and redirects writes (MOVED) from then on, which the
Cluster clients follow: for both, nothing waits.
"""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.connection import Connection, SSLConnection
from redis.exceptions import RedisError

from pipeline.redis_client import RedisClient, is_cluster

PROBE_TIMEOUT_S = 2.0
"""Socket timeout of a probe of one sentinel or server when the client sets none."""


def unfenced(client: RedisClient) -> list[str]:
    """What still lets writes to a former master through, one line each (no address is
    secret, no password is shown): a sentinel naming another master than the one `client`
    follows (`sentinel host:port names host:port`), a server the sentinels list as a replica
    that answers as a master (`host:port answers as a master`). Empty when nothing does, and
    always for one server or a Cluster (module docstring).

    A sentinel or server that does not answer is left out: it takes no writes from us
    either. The sentinels' replicas flagged down (`s_down`, `o_down`) are left out too.
    Raises `redis.sentinel.MasterNotFoundError` when no sentinel names a master."""
    if is_cluster(client):
        return []
    pool = cast(Any, client).connection_pool
    manager = getattr(pool, "sentinel_manager", None)
    if manager is None:
        return []
    service: str = pool.service_name
    master = pool.get_master_address()
    waiting: list[str] = []
    replicas: set[tuple[str, int]] = set()
    for sentinel in manager.sentinels:
        try:
            named = sentinel.sentinel_master(service)
            listed = sentinel.sentinel_slaves(service)
        except RedisError:
            continue
        if (named["ip"], int(named["port"])) != (master[0], int(master[1])):
            waiting.append(f"sentinel {_address(sentinel)} names {named['ip']}:{named['port']}")
        replicas.update(
            (replica["ip"], int(replica["port"]))
            for replica in listed
            if not (replica["is_sdown"] or replica["is_odown"])
        )
    waiting.extend(
        f"{host}:{port} answers as a master"
        for host, port in sorted(replicas)
        if (host, port) != (master[0], int(master[1])) and _answers_as_master(pool, host, port)
    )
    return waiting


def _answers_as_master(pool: Any, host: str, port: int) -> bool:
    """Whether the server at host:port says `role:master`, asked with the credentials and
    options of the master's pool; False when it does not answer."""
    options = {
        key: value for key, value in pool.connection_kwargs.items() if key != "connection_pool"
    }
    for timeout in ("socket_timeout", "socket_connect_timeout"):
        if options.get(timeout) is None:
            options[timeout] = PROBE_TIMEOUT_S
    secure = issubclass(pool.connection_class, SSLConnection)
    probe = redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=SSLConnection if secure else Connection,
            host=host,
            port=port,
            **options,
        )
    )
    try:
        return bool(probe.info("replication").get("role") == "master")
    except RedisError:
        return False
    finally:
        probe.close()
        probe.connection_pool.disconnect()


def _address(client: Any) -> str:
    options = client.connection_pool.connection_kwargs
    return f"{options.get('host')}:{options.get('port')}"
