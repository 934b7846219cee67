"""Faults during load, end to end: every aggregate equals the oracle soon after the last one.

Real processes on a Redis of the test's own (restarted and paused) and the private Postgres: a
`postgres` listener, a worker and beat, each SIGKILLed at a seeded random moment and restarted
after a short random delay, while a seeded writer commits inserts, updates, deletes and
reassignments over a few dozen coaches. The run prints its seed and the convergence time; set
CHAOS_SEED to replay a schedule.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from coachpipe.embedded import PrivateRedis
from coachpipe.traffic import ChangeWriter, pace
from devtools.faults import Fault, FaultSchedule, Restartable, pause_redis, restart_redis
from devtools.processes import (
    Proc,
    listener_connected,
    running,
    start_beat,
    start_listener,
    start_worker,
    wait_for,
)
from pipeline import seed
from tests.pipeline_checks import coach_ids, idle, mismatches, settle

SEED = int(os.environ.get("CHAOS_SEED", "15"))
PLAN = seed.SeedPlan(coaches=30, clients_per_coach=3, sessions_per_client=2)
RATE = 40.0
"""Changes per second."""
LOAD_S = 14.0
CONVERGE_TIMEOUT_S = 60.0


@pytest.fixture
def chaos_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """Data and broker in one Redis of this test, restarted on its port (durable, as in
    production: a restart drops every connection, not the data)."""
    server = PrivateRedis(tmp_path / "chaos-redis", durable=True).start()
    yield server
    server.destroy()


@dataclass
class Load:
    """A seeded writer thread: `RATE` changes/s over the seeded coaches until `LOAD_S`."""

    database_url: str
    seed_value: int
    written: int = 0

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            writer = ChangeWriter(conn, coach_ids(self.database_url), self.seed_value)

            def counted(_: object) -> None:
                self.written += 1

            pace(writer.write, rate=RATE, duration=LOAD_S, on_change=counted)


def schedule(
    rng: random.Random, server: PrivateRedis, procs: dict[str, Restartable]
) -> list[Fault]:
    """One Redis restart, one Redis pause and a SIGKILL of each process (two of the listener
    and the worker), at random moments of the load, each over after a short random delay."""
    faults = [
        Fault(rng.uniform(1, 5), "redis restart", restart_redis(server), rng.uniform(0.3, 1.5)),
        Fault(rng.uniform(7, 10), "redis pause", pause_redis(server), rng.uniform(1, 3)),
    ]
    for name, kills in (("listener", 2), ("worker", 2), ("beat", 1)):
        faults += [
            Fault(
                rng.uniform(1, LOAD_S - 1),
                f"kill {name}",
                procs[name].kill_and_restart,
                rng.uniform(0.3, 2),
            )
            for _ in range(kills)
        ]
    return sorted(faults, key=lambda fault: fault.at)


def test_every_aggregate_equals_the_oracle_after_kills_and_redis_restarts(
    database_url: str,
    service_env: dict[str, str],
    tmp_path: Path,
    chaos_redis: PrivateRedis,
) -> None:
    print(f"\nchaos seed {SEED} (CHAOS_SEED={SEED} replays this schedule)")
    rng = random.Random(SEED)
    data_url, broker_url = chaos_redis.url, chaos_redis.url[:-1] + "1"
    env = {**service_env, "REDIS_URL": data_url, "BROKER_URL": broker_url}
    client = redis.Redis.from_url(data_url)
    seed.load(database_url, PLAN)
    worker = start_worker(env, tmp_path, broker_url=broker_url)
    listener = start_listener(env, tmp_path)
    beat = start_beat(env, tmp_path)
    procs = {"worker": Restartable(worker), "listener": Restartable(listener),
             "beat": Restartable(beat)}  # fmt: skip
    with running(listener, worker, beat):
        wait_for(lambda: listener_connected(client, listener), 30, message="listener to connect")
        settle(database_url, client)  # the new slot's position was unknown: a full refresh
        faults = FaultSchedule(schedule(rng, chaos_redis, procs))
        load = Load(database_url, SEED)
        load.thread.start()
        faults.run()
        load.thread.join()
        last_fault = faults.last_over()
        print(f"faults: {faults.summary()}; {load.written} changes written")
        converged = converge(database_url, client, faults.on_failure(SEED))
        print(f"converged {converged - last_fault:.2f} s after the last fault ended")
        for name, proc in procs.items():
            assert proc.proc.alive(), f"{name} is down at the end:\n{proc.proc.output()[-2000:]}"


def converge(database_url: str, client: redis.Redis, explain: Callable[[str], str]) -> float:
    """Wait until nothing is pending and every critical aggregate equals the oracle; returns
    when (time.time()). Redis may be answering slowly still: its errors count as not yet."""
    coaches = coach_ids(database_url)

    def correct() -> bool:
        try:
            return idle(client) and not mismatches(database_url, client, coaches)
        except redis.RedisError:
            return False

    try:
        wait_for(correct, CONVERGE_TIMEOUT_S, interval=0.1)
    except AssertionError:
        wrong = mismatches(database_url, client, coaches)
        raise AssertionError(
            explain(
                f"{len(wrong)} aggregates still wrong after {CONVERGE_TIMEOUT_S} s: {wrong[:5]}"
            )
        ) from None
    return time.time()


def test_a_stopped_restartable_is_not_started_again_by_a_pending_recovery(
    tmp_path: Path,
) -> None:
    """A run cut short stops its processes while a recovery timer sleeps: waking, it must
    not start an orphan (a bench stopped by SIGTERM left a beat running)."""
    proc = Proc("sleeper", ["sleep", "60"], dict(os.environ), tmp_path / "sleeper.log").start()
    restartable = Restartable(proc)
    recover = restartable.kill_and_restart()
    restartable.stop()
    recover()
    assert not proc.alive()
