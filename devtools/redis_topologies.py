"""Private Redis topologies for tests and the bench: a Redis Cluster and a Sentinel-guarded pair.

Both run local `redis-server` binaries on free loopback ports, keep their files under one
directory, and stop every process they started. Failure detection is shortened
(`cluster-node-timeout` and `down-after-milliseconds` of 1 s) so a failover fits in a test.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from coachpipe.embedded import PrivateRedis, free_port
from pipeline.redis_values import as_text

NODE_TIMEOUT_MS = 1000
SENTINEL_DOWN_MS = 1000
VOTE_INTERVAL_S = 2 * NODE_TIMEOUT_MS / 1000 + 0.2
MASTER_NAME = "mymaster"
CREATE_OPTIONS = ("--cluster-replicas", "1", "--cluster-yes")
REPLICATION = ("--repl-diskless-sync-delay", "0")
"""A replica (re)syncs at once, not after Redis's default 5 s wait for more replicas."""


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` every 50 ms until it holds; RuntimeError naming `what` after timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(redis.RedisError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def server(port: int) -> Any:
    """A client of the one server on loopback `port` (typed loosely: redis-py leaves the
    admin commands used here untyped)."""
    return redis.Redis(port=port, socket_timeout=5)


def info(port: int, section: str) -> dict[str, Any]:
    """`INFO section` of the server on `port`, as redis-py parses it."""
    client = server(port)
    try:
        return dict(client.info(section))
    finally:
        client.close()


@dataclass
class PrivateRedisCluster:
    """`masters` masters with one replica each, slots spread by `redis-cli --cluster create`."""

    root: Path
    masters: int = 3
    nodes: list[PrivateRedis] = field(default_factory=list, init=False)
    _last_promotion: float = field(default=0.0, init=False)

    @property
    def url(self) -> str:
        """`redis+cluster://` with every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> PrivateRedisCluster:
        for index in range(self.masters * 2):
            node_dir = self.root / f"node-{index}"
            options = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--cluster-port",
                str(free_port()),
                # a replica may be promoted though it lost its master's link a moment ago
                "--cluster-replica-validity-factor",
                "0",
                *REPLICATION,
            )
            self.nodes.append(PrivateRedis(node_dir, durable=False, options=options).start())
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [_binary("redis-cli"), "--cluster", "create", *addresses, *CREATE_OPTIONS],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self.healthy, 30, "cluster_state:ok on every node, replicas in sync")
        return self

    def healthy(self) -> bool:
        """Every node sees the cluster ok, and every replica's link to its master is up."""
        for node in self.nodes:
            replication = info(node.port, "replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False
            if server(node.port).cluster("info").get("cluster_state") != "ok":
                return False
        return True

    def role(self, port: int) -> str:
        return str(info(port, "replication")["role"])

    def replica_of(self, master_port: int) -> int:
        """The port of a replica of the master on `master_port`."""
        for node in self.nodes:
            fields = info(node.port, "replication")
            if fields["role"] == "slave" and int(fields["master_port"]) == master_port:
                return node.port
        raise LookupError(f"no replica of 127.0.0.1:{master_port}")

    def master_port_of(self, key: str) -> int:
        """The port of the master that serves `key`'s slot now."""
        client: Any = redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)
        try:
            return int(client.get_node_from_key(key).port)
        finally:
            client.close()

    def failover(self, master_port: int) -> int:
        """`CLUSTER FAILOVER` on a replica of `master_port` (the coordinated, lossless kind):
        returns the promoted replica's port once every node's slot map names it, and no longer
        the old master, and the cluster is ok (so a client that reads the map from any node
        after this sees the failover).

        A manual failover the master did not join within 5 s is dropped, and one asked of a
        replica within a moment of its own previous promotion can "win" an election that
        gave it no new config epoch: it says role:master for a few ms, then reverts to
        replica (Redis 7.0 logs "Failover election won" without "configEpoch set"). Either
        way, the failover is asked again until the promotion has spread."""
        replica = self.replica_of(master_port)
        # A master grants no vote for a replica of the same master within 2 node timeouts of
        # its last one (`clusterSendFailoverAuthIfNeeded`): back to back, the ask would fail.
        time.sleep(max(0.0, self._last_promotion + VOTE_INTERVAL_S - time.monotonic()))
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(redis.ResponseError):  # already promoted, not yet seen
                server(replica).execute_command("CLUSTER", "FAILOVER")
            try:
                wait_until(
                    lambda: self._seen_as_master(replica) and not self._serves_a_slot(master_port),
                    8,
                    "every node to see the promotion",
                )
                break
            except RuntimeError as error:  # which node lags, and how it sees the two servers
                if time.monotonic() > deadline:
                    views = self._views_of(replica, master_port)
                    raise RuntimeError(f"{error}: {views}") from error
        self._last_promotion = time.monotonic()
        wait_until(self.healthy, 30, "the cluster to settle after the failover")
        return replica

    def _views_of(self, *ports: int) -> str:
        """How each node's `CLUSTER NODES` shows the servers on `ports` (flags, epoch, slots)."""
        return "; ".join(
            f"{node} sees {fields[1].split('@')[0]} {fields[2]} {' '.join(fields[6:])}"
            for node, fields in self._cluster_nodes()
            if any(f":{port}@" in fields[1] for port in ports)
        )

    def _cluster_nodes(self) -> Iterator[tuple[int, list[str]]]:
        """Every node's `CLUSTER NODES`, one (the node's port, a line's fields) per line."""
        for node in self.nodes:
            text = as_text(server(node.port).execute_command("CLUSTER", "NODES"))
            for line in text.splitlines():
                yield node.port, line.split()

    def _serves_a_slot(self, port: int) -> bool:
        """Whether any node's `CLUSTER SLOTS` still gives the server on `port` a slot."""
        for node in self.nodes:
            for entry in server(node.port).execute_command("CLUSTER", "SLOTS"):
                if int(entry[2][1]) == port:
                    return True
        return False

    def _seen_as_master(self, port: int) -> bool:
        """Whether every node's `CLUSTER NODES` flags the server on `port` as a master."""
        return all(
            "master" in fields[2].split(",")
            for _, fields in self._cluster_nodes()
            if f":{port}@" in fields[1]
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.destroy()
        self.nodes.clear()


@dataclass
class PrivateSentinel:
    """A master, one replica and three sentinels (quorum 2) watching `MASTER_NAME`."""

    root: Path
    master: PrivateRedis | None = field(default=None, init=False)
    replica: PrivateRedis | None = field(default=None, init=False)
    sentinel_ports: list[int] = field(default_factory=list, init=False)
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    @property
    def broker_env(self) -> dict[str, str]:
        """BROKER_URL (Celery's `sentinel://` form, one per sentinel joined by `;`) and
        BROKER_MASTER_NAME for a Celery broker on this master."""
        hosts = ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports)
        return {"BROKER_URL": hosts, "BROKER_MASTER_NAME": MASTER_NAME}

    def start(self) -> PrivateSentinel:
        self.master = PrivateRedis(self.root / "master", durable=False, options=REPLICATION)
        self.master.start()
        self.replica = PrivateRedis(
            self.root / "replica",
            durable=False,
            options=(*REPLICATION, "--replicaof", "127.0.0.1", str(self.master.port)),
        ).start()
        replica_port = self.replica.port
        wait_until(
            lambda: info(replica_port, "replication").get("master_link_status") == "up",
            30,
            "the replica to sync",
        )
        for index in range(3):
            port = free_port()
            directory = self.root / f"sentinel-{index}"
            directory.mkdir(parents=True, exist_ok=True)
            config = directory / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"logfile {directory / 'sentinel.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {SENTINEL_DOWN_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [_binary("redis-server"), str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            self.sentinel_ports.append(port)
        wait_until(self._sentinels_agree, 30, "every sentinel to see the master and its replica")
        return self

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            client = server(port)
            fields = client.sentinel_master(MASTER_NAME)
            client.close()
            if int(fields["num-slaves"]) < 1 or int(fields["num-other-sentinels"]) < 2:
                return False
        return True

    def master_port(self) -> int:
        """The port of the master the sentinels name now."""
        client = server(self.sentinel_ports[0])
        try:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        finally:
            client.close()
        return int(port)

    def failover(self) -> tuple[int, int]:
        """`SENTINEL FAILOVER`: (old, new master's port) once the sentinels name the new one
        and it serves as master. The old master goes on taking writes from whoever still
        talks to it until the sentinels demote it, ~10 s later (`demoted`)."""
        before = self.master_port()
        server(self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        wait_until(lambda: self.master_port() != before, 30, "the sentinels to name a new master")
        after = self.master_port()
        wait_until(lambda: info(after, "replication")["role"] == "master", 30, "the promotion")
        return before, after

    @contextlib.contextmanager
    def demotion_held(self, port: int) -> Iterator[None]:
        """While inside, the server on `port` refuses `REPLICAOF` (an ACL rule of its default
        user), so after a failover the sentinels cannot demote it: a former master that goes
        on taking writes for as long as a test needs. On exit they demote it at their next
        look (up to 10 s)."""
        server(port).execute_command("ACL", "SETUSER", "default", "-replicaof", "-slaveof")
        try:
            yield
        finally:
            server(port).execute_command("ACL", "SETUSER", "default", "+replicaof", "+slaveof")

    def demoted(self, port: int) -> bool:
        """Whether the server on `port` now follows the current master."""
        fields = info(port, "replication")
        return bool(fields["role"] == "slave" and fields.get("master_link_status") == "up")

    def stop(self) -> None:
        for process in self.sentinels:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.sentinels.clear()
        for server in (self.replica, self.master):
            if server is not None:
                server.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: apt-get install redis-server (it ships {name})")
    return found
