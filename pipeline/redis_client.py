"""The one place a Redis client is built from `REDIS_URL`: one server, a Cluster or Sentinel.

- `redis://[user:pass@]host:port/db`, `rediss://…`, `unix:///path?db=N`: `redis.Redis`, from
  redis-py's own URL syntax.
- `redis+cluster://[user:pass@]host:port[,host:port…]` (`rediss+cluster://` with TLS):
  `redis.RedisCluster` with the listed nodes as startup nodes (one is enough; it discovers
  the others and follows failovers and resharding).
- `redis+sentinel://[user:pass@]host:port[,host:port…]/master-name[/db]`
  (`rediss+sentinel://` with TLS): `redis.Redis` on the master the sentinels name, found
  again after a failover.

The sentinel form is the one of the `redis-sentinel-url` package (and of Sidekiq and Laravel):
the hosts are the sentinels', the path names the monitored master and the database; the
userinfo is the data server's; `?sentinel_password=…` authenticates to the sentinels when they
have a password of their own. A cluster has only database 0, so its URL names none.

Every multi-key script of the pipeline touches keys of one hash slot (see `pipeline.keys`), so
the same code runs on all three.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

RedisClient: TypeAlias = redis.Redis | RedisCluster
"""What the pipeline's Redis code takes: a client of one server (Sentinel's included) or of a
Cluster. Both speak the same commands; a cluster pipeline spans nodes but is never a
MULTI/EXEC transaction."""
AsyncRedisClient: TypeAlias = aioredis.Redis | AsyncRedisCluster

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
"""scheme → TLS"""
MASTER_CHECK_S = 1.0
"""A Sentinel client asks the sentinels which server is the master at most this often."""
SENTINEL_TIMEOUT_S = 2.0
"""Socket timeouts of a question to one sentinel, when the URL's client sets none."""
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_PORT = 6379


@dataclass(frozen=True)
class Topology:
    """A parsed cluster or sentinel URL; `kind` is `cluster` or `sentinel`."""

    kind: str
    nodes: tuple[tuple[str, int], ...]
    tls: bool
    username: str | None = None
    password: str | None = None
    master: str | None = None
    db: int = 0
    sentinel_password: str | None = field(default=None, repr=False)

    def auth(self) -> dict[str, Any]:
        options: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.tls:
            options["ssl"] = True
        return options


def topology(url: str) -> Topology | None:
    """The cluster or sentinel `url` parsed; None for a URL redis-py reads itself.

    Raises `ValueError` naming what is wrong (never the URL: it may hold a password).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in CLUSTER_SCHEMES:
        kind, tls, default_port = "cluster", CLUSTER_SCHEMES[scheme], DEFAULT_REDIS_PORT
    elif scheme in SENTINEL_SCHEMES:
        kind, tls, default_port = "sentinel", SENTINEL_SCHEMES[scheme], DEFAULT_SENTINEL_PORT
    else:
        return None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = tuple(_node(host, default_port) for host in hosts.split(",") if host)
    if not nodes:
        raise ValueError(f"a {scheme} URL names at least one host:port")
    query = parse_qs(parts.query)
    path = [unquote(part) for part in parts.path.split("/") if part]
    master, db = None, 0
    if kind == "sentinel":
        if not path:
            raise ValueError(
                "a redis+sentinel URL names the master: redis+sentinel://host:port/mymaster"
            )
        master = path[0]
        if len(path) > 1:
            if not path[1].isdigit():
                raise ValueError("the database after the master name must be a number")
            db = int(path[1])
    elif path and path != ["0"]:
        raise ValueError("a Redis Cluster has database 0 only")
    return Topology(
        kind=kind,
        nodes=nodes,
        tls=tls,
        username=unquote(username) or None,
        password=unquote(password) or None,
        master=master,
        db=db,
        sentinel_password=next(iter(query.get("sentinel_password", [])), None),
    )


def _node(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
    if not host:
        raise ValueError("every host of the URL needs a name")
    if port and not port.isdigit():
        raise ValueError("a port must be a number")
    return host.strip("[]"), int(port) if port else default_port


def connect(url: str, **options: Any) -> RedisClient:
    """A blocking client for `url` (see the module's table); `options` are redis-py's
    connection options (`socket_timeout`, `decode_responses`, `health_check_interval`, …).
    Connects lazily: nothing is sent before the first command, except that a cluster client
    asks its startup nodes for the slot map when it is built."""
    found = topology(url)
    if found is None:
        return redis.Redis.from_url(url, **options)
    if found.kind == "cluster":
        return RedisCluster(
            startup_nodes=[
                ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in found.nodes
            ],
            **found.auth(),
            **options,
        )
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(found.nodes),
        sentinel_kwargs=_sentinel_options(found, options, Retry(NoBackoff(), 0)),
        **options,
    )
    assert found.master is not None
    master = sentinel.master_for(  # type: ignore[no-untyped-call]
        found.master, db=found.db, connection_pool_class=FollowingSentinelPool, **found.auth()
    )
    return cast(redis.Redis, master)


class FollowingSentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool asks the sentinels for the master only when it opens a
    connection, so pooled connections keep writing to a demoted master until it turns replica
    (about 10 s after a `SENTINEL FAILOVER`, when the sentinels next look at it): writes that
    the new master never sees. This pool asks again at most every `MASTER_CHECK_S` while it
    is in use; when the answer changed, redis-py drops its idle connections and each busy one
    when it comes back, so a process follows a failover within about a second."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._checked = time.monotonic()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._checked >= MASTER_CHECK_S:
            self._checked = now
            # no sentinel answers: go on with the master known so far
            with contextlib.suppress(MasterNotFoundError):
                self.get_master_address()  # type: ignore[no-untyped-call]
        return super().get_connection(*args, **kwargs)


def connect_async(url: str, **options: Any) -> AsyncRedisClient:
    """The asyncio twin of `connect` (the read API's streams)."""
    found = topology(url)
    if found is None:
        return aioredis.Redis.from_url(url, **options)
    if found.kind == "cluster":
        return AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(host, port) for host, port in found.nodes],
            **found.auth(),
            **options,
        )
    sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
        list(found.nodes),
        sentinel_kwargs=_sentinel_options(found, options, AsyncRetry(NoBackoff(), 0)),
        **options,
    )
    assert found.master is not None
    master = sentinel.master_for(found.master, db=found.db, **found.auth())
    return cast(aioredis.Redis, master)


def _sentinel_options(found: Topology, options: dict[str, Any], retry: Any) -> dict[str, Any]:
    """Sentinels are asked with the data server's timeouts (`SENTINEL_TIMEOUT_S` where it sets
    none), their own password, and `retry` (one attempt: redis-py's `discover_master` moves on
    to the next sentinel by itself, so a sentinel that does not answer costs one timeout, not
    redis-py's default of retries with backoff on every master check)."""
    sentinel: dict[str, Any] = {
        key: options.get(key) or SENTINEL_TIMEOUT_S
        for key in ("socket_timeout", "socket_connect_timeout")
    }
    sentinel["retry"] = retry
    if found.sentinel_password:
        sentinel["password"] = found.sentinel_password
    if found.tls:
        sentinel["ssl"] = True
    return sentinel


def is_cluster(client: RedisClient | AsyncRedisClient) -> bool:
    return isinstance(client, RedisCluster | AsyncRedisCluster)
