"""Fault scenarios (issue 15): how long after a fault every aggregate is right again.

`chaos`: 200 changes/s over 1,000 coaches while the listener and the worker are SIGKILLed at
random every 2 to 6 s and restarted after a short random delay. `redis-restart`: Redis stops
during load and starts again (its data kept, as a persistent Redis keeps it). `worker-kill`: the
worker is SIGKILLed while drains hold claims. Beat runs in all of them, as in production.
`soak-audit` (issue 17): `chaos` for 30 minutes with beat killed too, Redis restarted every
5 minutes, and beat's consistency audit visiting every coach every 5 minutes; it reports what
the audit found during the run and what a final `coachpipe audit --all` finds afterwards.

"Right" is what `coachpipe audit` judges: a recompute of every critical aggregate of every
coach in one snapshot, compared with what Redis holds (pipeline.audit.inspect). Rollbacks are
read from pg_stat_database around the run, beside the transactions the slot's walsender decoded
(one rollback each), and the server log's ERROR lines say what the others were.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import psycopg
import redis
from sqlalchemy import Engine

from coachpipe.status import gather
from config import load_settings
from devtools.bench.broker import BrokerQueues
from devtools.bench.scenarios import Profile, Written, bench_coaches, write_paced
from devtools.bench.stack import Stack
from devtools.faults import Fault, FaultSchedule, Restartable, restart_redis
from devtools.processes import Proc, start_beat, wait_for
from pipeline import keys
from pipeline.aggregates import CRITICAL
from pipeline.audit import inspect, last_audit
from pipeline.db import make_engine
from pipeline.freshness import summary as freshness_summary
from pipeline.scheduler import shards_in_use

RATE = 200.0
CONVERGE_TIMEOUT_S = 300.0
SEED = 15
SOAK_GAP_S = (20.0, 40.0)
"""Seconds between two kills of the soak: each process killed about every 90 s, 60 kills in
30 minutes. At 5 to 15 s on a shared 2-core machine (load 20) the worker spent most of the
run starting again, the queues grew and the audit's own tasks expired unrun."""
SOAK_REDIS_EVERY_S = 300.0
SOAK_AUDIT_CYCLE_S = 300.0
"""Every coach audited once per 5 minutes: six times in a 30-minute soak."""


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


def _pipeline(stack: Stack, env: Mapping[str, str] | None = None) -> dict[str, Proc]:
    """A fresh worker, a `postgres` listener and beat, as deployed (defaults but heartbeats);
    `env` adds settings to the worker and beat (the audit's, say)."""
    extra = dict(env or {})
    worker = stack.worker(fresh=True, env=extra)
    listener = stack.listener("postgres")
    beat = start_beat(stack.env | extra | {"LOG_LEVEL": "INFO"}, stack.root / "logs")
    stack.procs.append(beat)
    return {"worker": worker, "listener": listener, "beat": beat}


def _load(
    stack: Stack,
    coaches: list[UUID],
    duration: float,
    stop: threading.Event | None = None,
    rate: float = RATE,
) -> tuple[threading.Thread, list[Written]]:
    out: list[Written] = []
    thread = threading.Thread(
        target=lambda: out.append(
            write_paced(stack, rate=rate, duration=duration, coaches=coaches, threads=2, stop=stop)
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


@dataclass(frozen=True)
class Plan:
    """What a chaos run does: how long and fast it writes, what it kills how often, whether
    Redis restarts, and the settings of the worker and beat."""

    seconds: float
    rate: float = RATE
    targets: tuple[str, ...] = ("listener", "worker")
    """Processes SIGKILLed in turn, of `listener`, `worker` and `beat`."""
    gap_s: tuple[float, float] = (2.0, 6.0)
    """Seconds between two kills, uniformly at random."""
    redis_every_s: float | None = None
    """One Redis restart (data kept) in each period of this length, at a random moment."""
    redis_down_s: float = 2.0
    env: Mapping[str, str] = field(default_factory=dict)


def _faults(
    stack: Stack, plan: Plan, restartable: dict[str, Restartable], rng: random.Random
) -> list[Fault]:
    """Kills of `plan.targets` in turn at random moments (at least one), then the Redis
    restarts."""
    faults: list[Fault] = []
    # the first kill inside the load even when it is shorter than a gap (`--duration 1`)
    at = min(rng.uniform(*plan.gap_s), plan.seconds / 2)
    targets = sorted(plan.targets)
    turn = rng.randrange(len(targets))  # the targets take turns, at random moments
    while at < plan.seconds:
        target = targets[turn % len(targets)]
        delay = rng.uniform(0.2, 1.5)
        faults.append(Fault(at, f"kill {target}", restartable[target].kill_and_restart, delay))
        at += rng.uniform(*plan.gap_s)
        turn += 1
    if plan.redis_every_s is not None:
        assert stack.redis_server is not None
        restart = restart_redis(stack.redis_server, keep_data=True)
        for period in range(int(plan.seconds // plan.redis_every_s)):
            moment = (period + rng.uniform(0.2, 0.8)) * plan.redis_every_s
            faults.append(Fault(moment, "redis restart", restart, plan.redis_down_s))
    return faults


def chaos(stack: Stack, profile: Profile) -> dict[str, Any]:
    return run_chaos(stack, Plan(seconds=profile.chaos_s, rate=profile.chaos_rate))


def soak_audit(stack: Stack, profile: Profile) -> dict[str, Any]:
    """`chaos` for `profile.soak_audit_s` with beat killed too, a Redis restart every
    `SOAK_REDIS_EVERY_S`, and beat auditing every coach once per `SOAK_AUDIT_CYCLE_S`: what
    the audit found during the run, and a final `coachpipe audit --all` after convergence."""
    plan = Plan(
        seconds=profile.soak_audit_s,
        rate=profile.chaos_rate,
        targets=("beat", "listener", "worker"),
        gap_s=SOAK_GAP_S,
        redis_every_s=min(SOAK_REDIS_EVERY_S, profile.soak_audit_s / 2),
        env={"AUDIT_CYCLE_S": f"{min(SOAK_AUDIT_CYCLE_S, profile.soak_audit_s / 3):g}"},
    )
    return run_chaos(stack, plan, audited=True)


def run_chaos(stack: Stack, plan: Plan, *, audited: bool = False) -> dict[str, Any]:
    """Load at `plan.rate` for `plan.seconds` with the plan's faults, then how long until
    every aggregate is right (the judge). `audited`: also what beat's audit found during the
    run (`AuditWatch`) and a final `coachpipe audit --all --json` once all is right."""
    rng = random.Random(SEED)
    procs = _pipeline(stack, plan.env)
    coaches = bench_coaches(stack, min(1000, stack.coaches))
    judge = Judge(stack, coaches)
    restartable = {name: Restartable(procs[name]) for name in plan.targets}
    faults = _faults(stack, plan, restartable, rng)
    transactions = Transactions(stack)
    watch = AuditWatch(stack.env["REDIS_URL"], stack.broker).start() if audited else None
    load, written = _load(stack, coaches, plan.seconds, rate=plan.rate)
    schedule = FaultSchedule(faults)
    try:
        schedule.run()
    finally:  # cut short: no recovery timer still asleep may start a process after cleanup
        for proc in restartable.values():
            proc.stop()
    load.join()
    last = max(faults, key=lambda fault: fault.started or 0.0)
    last_fault = last.started or 0.0
    result = {
        "rate": plan.rate,
        "coaches": len(coaches),
        "seconds": plan.seconds,
        "seed": SEED,
        "changes": len(written[0].changes),
        "writer_behind_s": round(written[0].behind_s, 2),
        "writer_conflicts": written[0].conflicts,
        "kills": {name: proc.kills for name, proc in restartable.items()},
        "redis_restarts": sum(1 for fault in faults if fault.name == "redis restart"),
        "last_kill_before_last_write_s": round(written[0].finished - last_fault, 2),
        "last_fault": f"{last.name} for {(last.over or last_fault) - last_fault:.1f} s",
        "faults": schedule.summary(),
        **judge.converge(last_fault, written[0].finished, sample_at=5),
    }
    if watch is not None:
        result["audit_settings"] = _audit_settings(stack, plan)
        result["audit_during_run"] = watch.stop(schedule.began)
        result["final_audit"] = final_audit(stack.env | dict(plan.env))
    result["alive_at_end"] = _finish(stack, procs, judge)
    result["transactions"] = transactions.report()
    return result


def _audit_settings(stack: Stack, plan: Plan) -> dict[str, float]:
    settings = load_settings(_env_file=None, **{k.lower(): v for k, v in plan.env.items()})
    return {
        "audit_cycle_s": settings.audit_cycle_s,
        "audit_interval_s": settings.audit_interval_s,
        "audit_grace_s (the SLO)": settings.audit_grace_s,
        "passes_over_every_coach": round(plan.seconds / settings.audit_cycle_s, 1),
    }


class AuditWatch:
    """Every audit pass beat's audit records during a run (`pipeline.audit.record` keeps the
    last one in Redis; this polls it twice a second, well inside `AUDIT_INTERVAL_S`), summed:
    the audit's own counters survive neither a worker kill nor a Redis restart."""

    def __init__(self, redis_url: str, broker: BrokerQueues) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.broker = broker
        self.passes: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self.minutes: list[tuple[float, dict[str, Any]]] = []
        """Each minute: that minute's freshness (commit → every routed aggregate stored) and
        the queued tasks, to read the audit's findings beside the pipeline's lag."""
        self.unanswered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> AuditWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        next_minute = time.time() + 60
        while not self._stop.wait(0.5):
            try:
                summary = last_audit(self.client)
                if time.time() >= next_minute:
                    next_minute += 60
                    lag = freshness_summary(self.client, minutes=1, now=time.time() - 60)
                    self.minutes.append((time.time(), lag | {"queued": self.broker.queued()}))
            except redis.RedisError:
                self.unanswered += 1
                continue
            if summary is not None:
                key = (summary["snapshot_at"], summary["confirmed_at"])
                self.passes.setdefault(key, (time.time(), summary))

    def stop(self, began: float) -> dict[str, Any]:
        """The passes seen so far, summed: checked values and mismatches (still stale after
        the grace period: stale beyond the SLO) per aggregate, the oldest stale age; each
        pass with mismatches with its moment (s after `began`, time.time())."""
        self._stop.set()
        self._thread.join()
        self.client.close()
        checked: Counter[str] = Counter()
        found: Counter[str] = Counter()
        clock: Counter[str] = Counter()
        lowest: dict[str, float] = {}
        totals = Counter[str]()
        flagged: list[dict[str, Any]] = []
        oldest = 0.0
        for seen, summary in sorted(self.passes.values(), key=lambda p: p[0]):
            checked.update(summary["checked"])
            clock.update(summary["clock"])
            for name, ratio in summary["consistency"].items():
                lowest[name] = min(lowest.get(name, 1.0), ratio)
            for key in ("settled", "repaired", "newer"):
                totals[key] += summary[key]
            for mismatch in summary["mismatches"]:
                found[f"{mismatch['aggregate']} {mismatch['kind']}"] += 1
            if summary["mismatches"]:
                oldest = max(oldest, summary["oldest_stale_s"])
                flagged.append({"at_s": round(seen - began, 1)} | summary)
        return {
            "passes": len(self.passes),
            "checked": dict(checked),
            "mismatches_by_aggregate": dict(found),
            "stale_beyond_slo": sum(found.values()),
            "oldest_stale_s": round(oldest, 2),
            "lowest_consistency": lowest,
            "clock": dict(clock),
            **totals,
            "redis_unanswered_polls": self.unanswered,
            "freshness_by_minute": [
                {"at_s": round(seen - began, 1)} | {k: v for k, v in lag.items() if k != "minutes"}
                for seen, lag in self.minutes
            ],
            "passes_with_mismatches": flagged[:20],
        }


def final_audit(env: Mapping[str, str]) -> dict[str, Any]:
    """`coachpipe audit --all --json` as an operator runs it: exit code, checked values,
    mismatches (still stale after the grace period) and repairs."""
    done = subprocess.run(
        [sys.executable, "-m", "coachpipe", "audit", "--all", "--json"],
        env=dict(env), capture_output=True, text=True, timeout=CONVERGE_TIMEOUT_S, check=False,
    )  # fmt: skip
    try:
        reports: list[dict[str, Any]] = orjson.loads(done.stdout)
    except orjson.JSONDecodeError:
        return {"exit_code": done.returncode, "error": done.stderr[-500:]}
    return {
        "exit_code": done.returncode,
        "checked": sum(sum(r["checked"].values()) for r in reports),
        "mismatches": [m for r in reports for m in r["mismatches"]],
        "settled": sum(r["settled"] for r in reports),
        "clock": sum(sum(r["clock"].values()) for r in reports),
        "repaired": sum(r["repaired"] for r in reports),
    }


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
        shards = range(shards_in_use(client, stack.settings.scheduler_shards))
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
