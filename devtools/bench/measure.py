"""What the benchmarks measure with: update notices, percentiles, process memory, metrics."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psutil
import redis

from pipeline import keys
from pipeline.redis_client import connect, is_cluster
from pipeline.store import Notice


def nearest_rank(count: int, q: float) -> int:
    """The index of the `q` quantile (0 < q <= 1) in `count` values sorted ascending, by the
    nearest-rank rule; `count` > 0."""
    return min(count - 1, max(0, math.ceil(q * count) - 1))


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max (nearest rank) and the count; None when there is nothing to rank."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[nearest_rank(len(ordered), q)]

    return {
        "count": len(ordered),
        "p50": round(rank(0.50), 2),
        "p95": round(rank(0.95), 2),
        "p99": round(rank(0.99), 2),
        "max": round(ordered[-1], 2),
    }


@dataclass
class Observed:
    notice: Notice
    received: float
    """Wall clock (s) when the bench received the notice."""

    @property
    def stored_ms(self) -> float:
        return datetime.fromisoformat(self.notice.computed_at).timestamp() * 1000

    @property
    def latency_ms(self) -> float | None:
        """Commit of the oldest change this write answers → stored in Redis."""
        if self.notice.commit_ms is None:
            return None
        return self.stored_ms - self.notice.commit_ms


@dataclass
class NoticeCollector:
    """Keeps every update notice the pipeline publishes while it runs.

    On one Redis it pattern-subscribes to every coach's channel. A Redis Cluster's notices
    are sharded (`SPUBLISH` in the coach's slot, `pipeline.store`) and shard channels take no
    patterns, so there it `SSUBSCRIBE`s to the channel of each coach of `coaches`, on the
    master that owns its slot (redis-py's cluster pubsub keeps one connection per node), and
    starts only once every subscription is confirmed.
    """

    url: str
    """`REDIS_URL` of the stack: a plain Redis URL or `redis+cluster://`."""
    coaches: Sequence[str] = ()
    """Coach ids to watch: needed on a cluster (every coach of the dataset), unused elsewhere."""
    notices: list[Observed] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> NoticeCollector:
        """Subscribe in a thread; returns once subscribed. RuntimeError if that takes > 30 s."""
        self._thread = threading.Thread(target=self._run, name="notices", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the notice collector did not subscribe within 30 s")
        return self

    def _run(self) -> None:
        client = connect(self.url)
        if is_cluster(client):
            self._run_sharded(client.pubsub())  # type: ignore[no-untyped-call]
            return
        pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.psubscribe(keys.UPDATES_PATTERN)
        self._ready.set()
        while not self._stop.is_set():
            try:
                message = pubsub.get_message(timeout=0.2)
            except redis.RedisError:
                break
            if message is not None:
                self.notices.append(Observed(Notice.decode(message["data"]), time.time()))
        pubsub.close()

    def _run_sharded(self, pubsub: Any) -> None:
        channels = {keys.updates_channel(coach) for coach in self.coaches}
        if not channels:
            raise ValueError("a Redis Cluster's notices need the coaches to watch")
        pubsub.ssubscribe(*channels)
        confirmed = 0
        while not self._stop.is_set():
            try:  # a short wait per node: an idle node must not hold up a busy one
                message = pubsub.get_sharded_message(timeout=0.01)
            except redis.RedisError:
                break
            if message is None:
                continue
            if message["type"] == "ssubscribe":
                confirmed += 1
                if confirmed == len(channels):
                    self._ready.set()
            elif message["type"] == "smessage":
                self.notices.append(Observed(Notice.decode(message["data"]), time.time()))
        pubsub.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def since(self, start: float) -> list[Observed]:
        return [n for n in self.notices if n.received >= start]

    def clear(self) -> None:
        self.notices.clear()


def _tree_mb(pid: int, read: Callable[[psutil.Process], int]) -> float:
    try:
        process = psutil.Process(pid)
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for member in members:
        try:
            total += read(member)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return round(total / 1024 / 1024, 1)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (a prefork worker and its pool), MB."""
    return _tree_mb(pid, lambda p: int(p.memory_info().rss))


def tree_pss_mb(pid: int) -> float:
    """Proportional set size of a process and its children, MB: shared pages (a prefork
    pool shares most of its parent's) are split between the processes instead of counted
    once per process as RSS does."""
    return _tree_mb(pid, lambda p: int(p.memory_full_info().pss))


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": psutil.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
    }
