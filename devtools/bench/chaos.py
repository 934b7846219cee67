"""Fault scenarios (issue 15): how long after a fault every aggregate is right again.

`chaos`: 200 changes/s over 1,000 coaches while the listener and the worker are SIGKILLed at
random every 2 to 6 s and restarted after a short random delay. `redis-restart`: Redis stops
during load and starts again (its data kept, as a persistent Redis keeps it). `worker-kill`: the
worker is SIGKILLed while drains hold claims. Beat runs in all three, as in production.

"Right" is what `coachpipe audit` judges: a recompute of every critical aggregate of every
coach in one snapshot, compared with what Redis holds (pipeline.audit.inspect). Rollbacks are
read from pg_stat_database around the run, beside the transactions the slot's walsender decoded
(one rollback each), and the server log's ERROR lines say what the others were.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import redis
from sqlalchemy import Engine

from coachpipe.status import gather
from devtools.bench.scenarios import Profile, Written, bench_coaches, write_paced
from devtools.bench.stack import Stack
from devtools.faults import Fault, FaultSchedule, Restartable, restart_redis
from devtools.processes import Proc, start_beat, wait_for
from pipeline import keys
from pipeline.aggregates import CRITICAL
from pipeline.audit import inspect
from pipeline.db import make_engine

RATE = 200.0
CONVERGE_TIMEOUT_S = 300.0
SEED = 15


class Judge:
    """Wrong keys and fields now: every critical aggregate of `coaches`, fresh against stored."""

    def __init__(self, stack: Stack, coaches: list[UUID]) -> None:
        self.engine: Engine = make_engine(stack.pg.url, snapshots=True)
        self.client = redis.Redis.from_url(stack.env["REDIS_URL"])
        self.coaches = coaches

    def wrong(self, coaches: list[UUID] | None = None) -> dict[str, Any] | None:
        """{keys, fields, coaches, by_aggregate, at, judged_in_s}: what was wrong among
        `coaches` (all by default) at `at` (time.time() when the comparison's snapshot was
        taken); None while Redis does not answer. `suspects` lists the wrong coaches."""
        at = time.time()
        try:
            inspection = inspect(self.engine, self.client, CRITICAL, coaches or self.coaches)
        except redis.RedisError:
            return None
        suspects = sorted({s.coach_id for s in inspection.suspects})
        return {
            "keys": len(inspection.suspects),
            "fields": sum(len(s.fields) for s in inspection.suspects),
            "coaches": len(suspects),
            "by_aggregate": dict(Counter(s.aggregate for s in inspection.suspects)),
            "at": at,
            "judged_in_s": round(time.time() - at, 2),
            "suspects": suspects,
        }

    def converge(
        self, since: float, quiet_from: float, sample_at: float | None = None
    ) -> dict[str, Any]:
        """Seconds from `since` (time.time()) until a comparison finds nothing wrong, timed by
        its snapshot; with `sample_at`, also what was wrong `sample_at` s after `since` (every
        coach judged). A comparison of every coach takes seconds at 1,000 coaches, so once a
        snapshot is later than the last write (`quiet_from`) only the coaches it found wrong
        are judged again: a value right after the last write stays right (versioned writes)."""
        sample: dict[str, Any] | None = None
        converged: float | None = None
        candidates: list[UUID] | None = None
        deadline = since + CONVERGE_TIMEOUT_S
        while converged is None and time.time() < deadline:
            due = sample_at is not None and sample is None and time.time() >= since + sample_at
            found = self.wrong(None if due else candidates)
            if found is None:
                time.sleep(0.1)
                continue
            if due:
                sample = found
            if found["keys"] == 0:
                converged = found["at"] - since
            elif found["at"] > quiet_from:
                candidates = found["suspects"]
        if sample_at is not None and sample is None:
            time.sleep(max(0.0, since + sample_at - time.time()))
            sample = self.wrong()
        result: dict[str, Any] = {
            "converged_s": None if converged is None else round(max(converged, 0.0), 2),
            "wrong_at_end": None if converged is not None else _public(self.wrong(candidates)),
        }
        if sample_at is not None:
            result[f"wrong_at_plus_{sample_at:g}s"] = _public(sample)
        return result

    def close(self) -> None:
        self.engine.dispose()
        self.client.close()


class Transactions:
    """pg_stat_database's commits and rollbacks, and the server log's ERROR lines, over a run."""

    PATTERNS = (
        ("duplicate or foreign key (writer conflict)", r"violates (unique|foreign key)"),
        ("serialization failure", r"could not serialize"),
        ("deadlock", r"deadlock detected"),
        ("session killed or cut", r"terminating connection|connection to client lost"),
        ("statement canceled", r"canceling statement"),
    )

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.log: Path = stack.pg.log_file
        self.log_start = self._log_size()
        self.commits, self.rollbacks, self.decoded = self._counts()

    def _log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def _counts(self) -> tuple[int, int, int]:
        """Commits, rollbacks, and transactions decoded for replication slots (the walsender
        decodes each inside a transaction it rolls back: one rollback each)."""
        with psycopg.connect(self.stack.pg.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit, xact_rollback, (SELECT coalesce(sum(total_txns), 0)"
                " FROM pg_stat_replication_slots) FROM pg_stat_database"
                " WHERE datname = current_database()"
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def report(self) -> dict[str, Any]:
        """Call once the run's sessions ended (a backend reports its counts when it exits)."""
        commits, rollbacks, decoded = self._counts()
        with self.log.open("rb") as handle:
            handle.seek(self.log_start)
            text = handle.read().decode(errors="replace")
        errors = [line for line in text.splitlines() if "ERROR:" in line or "FATAL:" in line]
        kinds: Counter[str] = Counter()
        for line in errors:
            kind = next((k for k, p in self.PATTERNS if re.search(p, line)), "other")
            kinds[kind] += 1
        return {
            "xact_commit": commits - self.commits,
            "xact_rollback": rollbacks - self.rollbacks,
            "decoded_for_slots": decoded - self.decoded,
            "rollbacks_not_decoding": (rollbacks - self.rollbacks) - (decoded - self.decoded),
            "server_errors": dict(kinds),
            "other_examples": [
                e[-200:] for e in errors if not any(re.search(p, e) for _, p in self.PATTERNS)
            ][:3],
        }


def _pipeline(stack: Stack) -> dict[str, Proc]:
    """A fresh worker, a `postgres` listener and beat, as deployed (defaults but heartbeats)."""
    worker = stack.worker(fresh=True)
    listener = stack.listener("postgres")
    beat = start_beat(stack.env | {"LOG_LEVEL": "INFO"}, stack.root / "logs")
    stack.procs.append(beat)
    return {"worker": worker, "listener": listener, "beat": beat}


def _load(
    stack: Stack, coaches: list[UUID], duration: float, stop: threading.Event | None = None
) -> tuple[threading.Thread, list[Written]]:
    out: list[Written] = []
    thread = threading.Thread(
        target=lambda: out.append(
            write_paced(stack, rate=RATE, duration=duration, coaches=coaches, threads=2, stop=stop)
        ),
        daemon=True,
    )
    thread.start()
    return thread, out


def _finish(stack: Stack, procs: dict[str, Proc], judge: Judge) -> dict[str, Any]:
    alive = {name: proc.alive() for name, proc in procs.items()}
    judge.close()
    stack.stop_processes()
    stack.stop_worker()  # its sessions end: their transactions are counted
    return alive


def chaos(stack: Stack, profile: Profile) -> dict[str, Any]:
    rng = random.Random(SEED)
    procs = _pipeline(stack)
    coaches = bench_coaches(stack, min(1000, stack.coaches))
    judge = Judge(stack, coaches)
    restartable = {name: Restartable(procs[name]) for name in ("listener", "worker")}
    faults: list[Fault] = []
    at = rng.uniform(2, 6)
    targets = sorted(restartable)
    turn = rng.randrange(2)  # the listener and the worker take turns, at random moments
    while at < profile.chaos_s:
        target = targets[turn % 2]
        delay = rng.uniform(0.2, 1.5)
        faults.append(Fault(at, f"kill {target}", restartable[target].kill_and_restart, delay))
        at += rng.uniform(2, 6)
        turn += 1
    transactions = Transactions(stack)
    load, written = _load(stack, coaches, profile.chaos_s)
    schedule = FaultSchedule(faults)
    schedule.run()
    load.join()
    last_kill = max(fault.started or 0.0 for fault in faults)
    result = {
        "rate": RATE,
        "coaches": len(coaches),
        "seconds": profile.chaos_s,
        "seed": SEED,
        "changes": len(written[0].changes),
        "writer_conflicts": written[0].conflicts,
        "kills": {name: proc.kills for name, proc in restartable.items()},
        "last_kill_before_last_write_s": round(written[0].finished - last_kill, 2),
        "faults": schedule.summary(),
        **judge.converge(last_kill, written[0].finished, sample_at=5),
    }
    result["alive_at_end"] = _finish(stack, procs, judge)
    result["transactions"] = transactions.report()
    return result


def redis_restart(stack: Stack, profile: Profile) -> dict[str, Any]:
    """Load; Redis stops (its data saved) and starts after `REDIS_DOWN_S`; the load stops when
    it answers again. From then: every aggregate right, `coachpipe status` green, the first
    task beat sent after the restart run (the status task rewrites a key the bench deleted)."""
    assert stack.redis_server is not None
    procs = _pipeline(stack)
    coaches = bench_coaches(stack, min(1000, stack.coaches))
    judge = Judge(stack, coaches)
    transactions = Transactions(stack)
    stop = threading.Event()
    load, written = _load(stack, coaches, profile.fault_load_s * 4, stop)
    time.sleep(profile.fault_load_s)
    schedule = FaultSchedule(
        [Fault(0, "redis restart", restart_redis(stack.redis_server, keep_data=True), 2.0)]
    )
    schedule.run()
    back = schedule.last_over()
    stop.set()
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    _quietly(lambda: client.delete(keys.REALTIME_STATUS))
    for connected in (stack.redis, stack.broker):  # drop the connections the restart cut
        _quietly(connected.ping)
    load.join()
    with ThreadPoolExecutor(2) as watchers:  # while the judge compares, from the same moment
        green = watchers.submit(
            _seconds_until, lambda: gather(stack.settings)["status"] == "green", back
        )
        beat_again = watchers.submit(
            _seconds_until, lambda: client.exists(keys.REALTIME_STATUS) == 1, back
        )
        converged = judge.converge(back, written[0].finished)
    result = {
        "rate": RATE,
        "coaches": len(coaches),
        "changes": len(written[0].changes),
        "redis_down_s": round(back - (schedule.faults[0].started or back), 2),
        **converged,
        "status_green_after_s": green.result(),
        "first_beat_task_after_s": beat_again.result(),
        "beat_exits": 0 if procs["beat"].alive() else 1,
    }
    client.close()
    result["alive_at_end"] = _finish(stack, procs, judge)
    result["transactions"] = transactions.report()
    return result


def worker_kill(stack: Stack, profile: Profile) -> dict[str, Any]:
    """Load until drains hold claims past half the load time; SIGKILL the worker (the load
    stops), start it again after 0.5 s; every aggregate right how long after the kill."""
    procs = _pipeline(stack)
    coaches = bench_coaches(stack, min(1000, stack.coaches))
    judge = Judge(stack, coaches)
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    stop = threading.Event()
    load, written = _load(stack, coaches, profile.fault_load_s * 4, stop)
    time.sleep(profile.fault_load_s / 2)

    def claimed() -> int:
        shards = range(stack.settings.scheduler_shards)
        return sum(int(client.zcard(keys.claims(shard))) for shard in shards)

    held = wait_for(claimed, profile.fault_load_s * 3, interval=0.002, message="a drain's claim")
    worker = Restartable(procs["worker"])
    schedule = FaultSchedule([Fault(0, "kill worker", worker.kill_and_restart, 0.5)])
    schedule.run()
    killed = schedule.faults[0].started or time.time()
    stop.set()
    load.join()
    result = {
        "rate": RATE,
        "coaches": len(coaches),
        "changes": len(written[0].changes),
        "claims_held_at_kill": held,
        **judge.converge(killed, written[0].finished),
    }
    client.close()
    result["alive_at_end"] = _finish(stack, procs, judge)
    return result


def _public(found: dict[str, Any] | None) -> dict[str, Any] | None:
    """`found` for the JSON report: suspect coaches as a count and a few examples."""
    if found is None:
        return None
    examples = [str(coach) for coach in found["suspects"][:5]]
    return {k: v for k, v in found.items() if k != "suspects"} | {"examples": examples}


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except redis.RedisError:
        return


def _seconds_until(condition: Callable[[], bool], since: float) -> float | None:
    def holds() -> bool:
        try:
            return condition()
        except (redis.RedisError, psycopg.Error):
            return False

    try:
        wait_for(holds, CONVERGE_TIMEOUT_S, interval=0.1)
    except AssertionError:
        return None
    return round(time.time() - since, 2)
