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

import enum
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.connection import Connection, SSLConnection
from redis.exceptions import RedisError
from redis.retry import Retry

from pipeline import keys
from pipeline.lua import Lua
from pipeline.redis_client import RedisClient, is_cluster

PROBE_TIMEOUT_S = 2.0
"""Socket timeouts of the question to one server the sentinels list (one attempt)."""

FENCE_WAIT_MAX_S = 120.0
"""How long a failover may stay unfenced before the refresh goes out anyway: Sentinel demotes
a former master it reaches within about 20 s; one it cannot reach, or a sentinel that does not
answer, would otherwise hold the refresh back for as long as that lasts."""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
"""Delete the armed fence only if it is still the one read: a failover seen meanwhile re-arms
it, and its own fence must not be released by a check of the one before."""


class Fence(enum.Enum):
    """What a check of the armed fence found (`check`)."""

    NONE = "none"
    """Nothing is armed: no failover waits."""
    WAITING = "waiting"
    """Something still lets writes through to a former master (`FenceCheck.waiting`)."""
    FENCED = "fenced"
    """Nothing does any longer: refresh now."""
    FENCED_AT_ONCE = "fenced_at_once"
    """Nothing did when the failover was seen: the refresh sent then comes after the fence."""
    TIMED_OUT = "timed_out"
    """Still waiting after `FENCE_WAIT_MAX_S`: refresh now all the same."""


@dataclass(frozen=True)
class FenceCheck:
    fence: Fence
    waited_s: float = 0.0
    """Seconds since the failover was seen (0 when nothing is armed)."""
    waiting: tuple[str, ...] = ()
    """What still lets writes through (`unfenced`)."""


def arm(client: RedisClient, now: float) -> None:
    """Remember that a failover was seen at `now` (Unix seconds), until `check` releases it."""
    client.set(keys.FAILOVER_FENCE, repr(now))


def check(client: RedisClient, now: float, just_seen: bool = False) -> FenceCheck:
    """Whether the failover armed by `arm` is fenced (see the module's docstring); a fenced or
    timed-out one is released, by exactly one of two overlapping checks (the other finds
    `Fence.NONE`). `just_seen`: the failover was armed by this very check, after the refresh
    of its detection was sent. Raises RedisError when the store or every sentinel fails."""
    raw = client.get(keys.FAILOVER_FENCE)
    if raw is None:
        return FenceCheck(Fence.NONE)
    waited = max(now - float(raw), 0.0)
    waiting = tuple(unfenced(client)) if waited < FENCE_WAIT_MAX_S else ()
    if waiting:
        return FenceCheck(Fence.WAITING, waited, waiting)
    if not Lua(client, RELEASE)(keys=[keys.FAILOVER_FENCE], args=[raw]):
        return FenceCheck(Fence.NONE)
    if waited >= FENCE_WAIT_MAX_S:
        return FenceCheck(Fence.TIMED_OUT, waited)
    return FenceCheck(Fence.FENCED_AT_ONCE if just_seen else Fence.FENCED, waited)


def unfenced(client: RedisClient) -> list[str]:
    """What still lets writes through to a former master, one line each (addresses only, never
    a credential): a sentinel of the URL that names another master than the one `client`
    follows (`sentinel host:port names host:port`) or does not answer (`sentinel host:port
    does not answer`: it may name the old one to some process), and a server the sentinels
    list as a replica that answers as a master (`host:port answers as a master`), whatever
    flags the sentinels give it. A listed server that does not answer this process is not
    counted: a dead one takes no writes, and one cut off from this process alone cannot be
    told from it. Empty when nothing does, and always for one server or a Cluster (module
    docstring). Raises `redis.sentinel.MasterNotFoundError` when no sentinel names a master.

    Every sentinel and server is asked once, with short timeouts (`PROBE_TIMEOUT_S`, and the
    sentinel clients of `pipeline.redis_client.connect`), so the check takes seconds at most
    even when hosts are gone."""
    if is_cluster(client):
        return []
    pool = cast(Any, client).connection_pool
    manager = getattr(pool, "sentinel_manager", None)
    if manager is None:
        return []
    service: str = pool.service_name
    host, port = pool.get_master_address()
    master = (host, int(port))
    waiting: list[str] = []
    replicas: set[tuple[str, int]] = set()
    for sentinel in manager.sentinels:
        try:
            named = sentinel.sentinel_master(service)
            listed = sentinel.sentinel_slaves(service)
        except RedisError:
            waiting.append(f"sentinel {_address(sentinel)} does not answer")
            continue
        if (named["ip"], int(named["port"])) != master:
            waiting.append(f"sentinel {_address(sentinel)} names {named['ip']}:{named['port']}")
        replicas.update((replica["ip"], int(replica["port"])) for replica in listed)
    waiting.extend(
        f"{host}:{port} answers as a master"
        for host, port in sorted(replicas - {master})
        if _answers_as_master(pool, host, port)
    )
    return waiting


def _answers_as_master(pool: Any, host: str, port: int) -> bool:
    """Whether the server at host:port says `role:master`, asked once with the credentials and
    options of the master's pool; False when it does not answer."""
    options = dict(pool.connection_kwargs)
    options.pop("connection_pool", None)  # redis-py's proxy back to the master's pool
    options |= {
        "socket_timeout": PROBE_TIMEOUT_S,
        "socket_connect_timeout": PROBE_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),
    }
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
        probe.connection_pool.disconnect()


def _address(client: Any) -> str:
    options = client.connection_pool.connection_kwargs
    return f"{options.get('host')}:{options.get('port')}"
