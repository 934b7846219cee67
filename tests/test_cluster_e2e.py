"""End to end on a Redis Cluster: slot → listener → real worker → cluster → oracle, and a master
failover (`CLUSTER FAILOVER` on its replica) in the middle of a burst.

`cluster_url` is a data-store URL like `redis_url`: the broker stays the private Redis.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis

from coachpipe.embedded import free_port
from devtools.processes import (
    Proc,
    listener_connected,
    running,
    start_beat,
    start_listener,
    start_worker,
    wait_for,
)
from devtools.redis_topologies import PrivateRedisCluster
from devtools.scrape import scrape
from pipeline import keys, seed
from pipeline.redis_client import connect
from tests.pipeline_checks import coach_ids, mismatches, settle
from tests.test_beat import lock_holders
from tests.test_listener_postgres import burst

T = TypeVar("T")
SMALL = seed.SeedPlan(coaches=6, clients_per_coach=3, sessions_per_client=2)


def keep_writing(database_url: str, stop: threading.Event, seed_value: int) -> None:
    """Bursts of 50 changes (`burst`) until `stop` is set: load across a failover."""
    for round_number in itertools.count():
        if stop.is_set():
            return
        burst(database_url, 50, seed_value * 1000 + round_number)


def through_failover(
    database_url: str, client: Any, metrics_port: int, seed_value: int, failover: Callable[[], T]
) -> tuple[T, dict[str, float]]:
    """Changes stream in (`keep_writing`), `failover()` runs once the listener took 100 of
    them, and 100 more come after it. Returns what `failover` returned and the seconds: the
    failover itself, then from the last change to every aggregate equal to the oracle
    (`values`), and to nothing pending or claimed either (`settled`)."""
    events = lambda: scrape(metrics_port, "coachpipe_events_total")  # noqa: E731
    stop = threading.Event()
    writer = threading.Thread(target=keep_writing, args=(database_url, stop, seed_value))
    writer.start()
    wait_for(lambda: events() >= 100 or not writer.is_alive(), 60, interval=0.02,
             message="the listener to take in 100 changes")  # fmt: skip
    started = time.monotonic()
    outcome = failover()
    seconds = {"failover": time.monotonic() - started}
    during = events()
    wait_for(lambda: events() >= during + 100, 60, interval=0.02,
             message="100 more changes after the failover")  # fmt: skip
    stop.set()
    writer.join()
    done = time.monotonic()
    coaches = coach_ids(database_url)
    # The promise: every aggregate correct within seconds of the fault (DESIGN.md).
    wait_for(lambda: not mismatches(database_url, client, coaches), 30, interval=0.1,
             message="every aggregate to equal the oracle")  # fmt: skip
    seconds["values"] = time.monotonic() - done
    settle(database_url, client, timeout=90)
    seconds["settled"] = time.monotonic() - done
    return outcome, seconds


@contextlib.contextmanager
def failover_stack(
    env: dict[str, str],
    client: Any,
    database_url: str,
    broker_url: str,
    tmp_path: Path,
    broker_options: dict[str, Any] | None = None,
) -> Iterator[tuple[Proc, int, tuple[Proc, Proc]]]:
    """Seeded data, a worker, a slot listener (metrics on the port yielded) and two beats on
    the store of `env`'s REDIS_URL (`client`), running, settled, one beat active: what a
    failover test starts before its fault. Yields (worker, listener metrics port, beats).
    A `redis://` broker is emptied first (a `sentinel://` one, with its `broker_options`,
    is a fresh trio)."""
    if broker_url.startswith("redis"):
        redis.Redis.from_url(broker_url).flushdb()
    seed.load(database_url, SMALL)
    worker = start_worker(env, tmp_path, broker_url=broker_url, broker_options=broker_options)
    port = free_port()
    listener = start_listener(env, tmp_path, metrics_port=port)
    first, second = start_beat(env, tmp_path, "beat-1"), start_beat(env, tmp_path, "beat-2")
    with running(worker), running(listener), running(first, second):
        wait_for(lambda: listener_connected(client, listener), 20, message="listener to connect")
        settle(database_url, client)
        wait_for(lambda: len(lock_holders(first, second)) == 1, 20, message="one beat active")
        yield worker, port, (first, second)


def test_committed_rows_end_as_correct_aggregates_on_a_cluster(
    database_url: str,
    cluster_url: str,
    broker_url: str,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    env = service_env | {"REDIS_URL": cluster_url}
    client = connect(cluster_url)
    redis.Redis.from_url(broker_url).flushdb()
    seed.load(database_url, SMALL)
    worker = start_worker(env, tmp_path, broker_url=broker_url)
    listener = start_listener(env, tmp_path)
    with running(worker), running(listener):
        wait_for(lambda: listener_connected(client, listener), 20, message="listener to connect")
        settle(database_url, client)
        burst(database_url, 200)
        settle(database_url, client)


def test_a_master_failover_during_a_burst_loses_no_update(
    database_url: str,
    cluster_url: str,
    redis_cluster: PrivateRedisCluster,
    broker_url: str,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A master hands over to its replica while changes stream in; every aggregate still ends
    equal to the oracle, and of two beats (redbeat's schedule and the lock in the cluster,
    under the `{redbeat}` tag) one stays active."""
    client = connect(cluster_url)
    env = service_env | {"REDIS_URL": cluster_url}
    with failover_stack(env, client, database_url, broker_url, tmp_path) as stack:
        worker, port, (first, second) = stack
        # No wait for beat's first status check: a failover before it is seen too (the
        # promoted master's `master_replid2`, `pipeline.redis_epoch`).
        coach = coach_ids(database_url)[0]
        victim = redis_cluster.master_port_of(keys.aggregate("coach-stats", coach))
        _, seconds = through_failover(
            database_url, client, port, 23, lambda: redis_cluster.failover(victim)
        )
        print(  # the figure the issue asks for (run with -s)
            f"\ncluster failover: handover {seconds['failover']:.2f} s; last change → every "
            f"aggregate equal to the oracle {seconds['values']:.2f} s, nothing pending or "
            f"claimed {seconds['settled']:.2f} s"
        )
        assert redis_cluster.role(victim) == "slave"
        wait_for(lambda: "redis_failover_detected" in worker.output(), 30,
                 message="beat's status check to notice the new configuration epoch")  # fmt: skip
        assert first.alive() and second.alive()
        assert len(lock_holders(first, second)) == 1
