"""`make bench` / `python -m devtools.bench SCENARIO`: scenarios on private stacks, results.

Scenarios on the 1,000-coach dataset share one stack (`dedup`, `steady`, `burst`, `hot`,
`intake`, `workers`, `soak`, and the fault scenarios `chaos`, `redis-restart`, `worker-kill`,
and `soak-audit`, which runs only when named);
the 10,000-coach / 1M-session ones share another (`aggregates`, `full-refresh`); `whale`
(a coach with 1M sessions beside 1,000 ordinary ones) has a stack of its own and runs only
when named (`python -m devtools.bench whale`), not in `all`; `whale-fairness` runs only its
load runs (the whale seeded alone). `--quick` shrinks sizes and
durations (a few minutes); `smoke` (used by the test suite) only proves the harness runs, and
leaves the fault scenarios out of `all`. Several scenarios: `steady,burst`.

`--stacks redis+redis,rabbitmq+cluster` runs the scenarios on each combination of broker and
data store in turn, in one run, into one results file (`results` keyed by combination): the
broker is the shared private Redis (database 1) or a private RabbitMQ node (a vhost per
stack), the store the shared private Redis (database 0) or a private Redis Cluster of 3
masters and 3 replicas (`devtools.redis_topologies`). The fault scenarios and `whale` restart
or measure the one private Redis, so they run on a `redis` store only.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from coachpipe.embedded import PrivateRedis
from config import load_settings
from config.logging import configure_logging
from devtools.bench import report
from devtools.bench.chaos import chaos, redis_restart, soak_audit, worker_kill
from devtools.bench.link_faults import link_faults
from devtools.bench.measure import machine
from devtools.bench.noisy import NoisyNeighbour
from devtools.bench.scenarios import (
    PROFILES,
    Profile,
    aggregates_micro,
    burst,
    dedup_micro,
    full_refresh,
    intake,
    soak,
    steady,
    workers,
)
from devtools.bench.stack import Stack
from devtools.bench.whale import fairness_scenario, whale_scenario
from devtools.rabbitmq import PrivateRabbitMQ
from devtools.redis_topologies import PrivateRedisCluster

Run = Callable[[Stack, Profile], Any]


def _variants(stack: Stack, profile: Profile, **runs: Callable[[], Any]) -> dict[str, Any]:
    """Run each variant from a clean pipeline; the smoke profile keeps the first and the naive
    one only."""
    keep = [name for name in runs if profile.name != "smoke" or name in {next(iter(runs)), "naive"}]
    results = {}
    for name in keep:
        stack.reset_pipeline()
        results[name] = runs[name]()
    return results


SMALL_STACK: dict[str, Run] = {
    "dedup": dedup_micro,
    "steady": lambda s, p: _variants(
        s,
        p,
        postgres=lambda: steady(s, p, "postgres", naive=False),
        supabase=lambda: steady(s, p, "supabase", naive=False),
        naive=lambda: steady(s, p, "postgres", naive=True),
    ),
    "burst": lambda s, p: _variants(
        s, p, pipeline=lambda: burst(s, p, naive=False), naive=lambda: burst(s, p, naive=True)
    ),
    "hot": lambda s, p: _variants(
        s,
        p,
        pipeline=lambda: burst(s, p, naive=False, hot=True),
        naive=lambda: burst(s, p, naive=True, hot=True),
    ),
    "intake": lambda s, p: _variants(
        s,
        p,
        postgres=lambda: intake(s, p, "postgres", naive=False),
        supabase=lambda: intake(s, p, "supabase", naive=False),
        naive=lambda: intake(s, p, "postgres", naive=True),
    ),
    "workers": workers,
    "link-faults": link_faults,
    "soak": lambda s, p: _variants(
        s, p, pipeline=lambda: soak(s, p, naive=False), naive=lambda: soak(s, p, naive=True)
    ),
    "chaos": chaos,
    "redis-restart": redis_restart,
    "worker-kill": worker_kill,
    "soak-audit": soak_audit,
}
FAULT_SCENARIOS = ("chaos", "redis-restart", "worker-kill", "soak-audit")
# full-refresh first: the micro benchmarks then measure a warm cache, as a live system has.
BIG_STACK: dict[str, Run] = {"full-refresh": full_refresh, "aggregates": aggregates_micro}
SCENARIOS = (*SMALL_STACK, *BIG_STACK)
NAMED_ONLY = ("whale", "whale-fairness", "soak-audit")
"""Scenarios that run only when named: `all` leaves them out (their own stack and long
seeding; a 30-minute load)."""
SINGLE_REDIS_ONLY = (*FAULT_SCENARIOS, "whale", "whale-fairness")
"""Scenarios that restart or measure the one private Redis: skipped on a cluster store."""
BROKERS = ("redis", "rabbitmq")
STORES = ("redis", "cluster")


@dataclass(frozen=True)
class Services:
    """The broker and data store one stack of a run uses (`--stacks redis+redis,…`)."""

    broker: str
    """`redis` (the shared private Redis, database 1) or `rabbitmq` (a private node)."""
    store: str
    """`redis` (the shared private Redis, database 0) or `cluster` (a private Redis Cluster,
    3 masters and 3 replicas)."""

    @property
    def id(self) -> str:
        return f"{self.broker}+{self.store}"

    @classmethod
    def parse(cls, text: str) -> Services:
        """`BROKER+STORE`, e.g. `rabbitmq+cluster`; ValueError naming the choices otherwise."""
        broker, _, store = text.strip().partition("+")
        if broker not in BROKERS or store not in STORES:
            raise ValueError(
                f"{text!r} is not BROKER+STORE (broker: {', '.join(BROKERS)}; "
                f"store: {', '.join(STORES)})"
            )
        return cls(broker, store)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _run_group(
    group: dict[str, Run], names: list[str], stack: Stack, profile: Profile, console: Console
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        if name not in group:
            continue
        console.print(f"[bold]{name}[/] …")
        stack.reset_pipeline()
        started = time.monotonic()
        results[name] = group[name](stack, profile)
        console.print(f"  {name} done in {time.monotonic() - started:.0f} s")
    return results


def run_bench(
    scenario: str,
    *,
    quick: bool,
    output: str,
    console: Console,
    smoke: bool = False,
    noisy_neighbour: float = 0.0,
    broker: str = "redis",
    duration: float | None = None,
    rate: float | None = None,
    stacks: Sequence[Services] = (),
    beat: bool = False,
) -> int:
    """Run `scenario` (a name, `a,b`, or `all`) and write the results; the exit status.

    Without `stacks`, one stack with `broker` and the private Redis as store, and results
    keyed by scenario; with `stacks`, each in turn, and results keyed by `Services.id`.
    """
    names = [name.strip() for name in scenario.split(",") if name.strip()]
    if names == ["all"]:  # the smoke run proves the harness: faults wait out recoveries
        names = [
            n for n in SCENARIOS if n not in NAMED_ONLY and not (smoke and n in FAULT_SCENARIOS)
        ]
    unknown = [n for n in names if n not in (*SCENARIOS, *NAMED_ONLY)]
    if unknown or not names:
        choices = ", ".join(dict.fromkeys((*SCENARIOS, *NAMED_ONLY)))
        console.print(f"[red]unknown scenario {scenario!r}[/]; choose from: all, {choices}")
        return 2
    profile = PROFILES["smoke" if smoke else "quick" if quick else "full"]
    if duration is not None:
        profile = replace(profile, chaos_s=duration, soak_audit_s=duration)
    if rate is not None:
        profile = replace(profile, chaos_rate=rate, whale_rate=rate)
    configure_logging(load_settings(_env_file=None, log_level="WARNING", log_format="console"))
    started = time.monotonic()
    results: dict[str, Any] = {}
    signal.signal(signal.SIGTERM, _exit_cleanly)  # run the finally blocks: no orphan processes
    noisy = NoisyNeighbour(noisy_neighbour).start() if noisy_neighbour else None
    combinations = list(stacks) or [Services(broker, "redis")]
    shared = Path(tempfile.mkdtemp(prefix="coachpipe-bench-redis-"))
    rabbitmq = (
        PrivateRabbitMQ(shared / "rabbitmq")
        if any(c.broker == "rabbitmq" for c in combinations)
        else None
    )
    cluster = (
        PrivateRedisCluster(shared / "cluster")
        if any(c.store == "cluster" for c in combinations)
        else None
    )
    try:
        redis_server = PrivateRedis(shared, durable=False).start()
        try:
            if rabbitmq is not None:
                rabbitmq.start()
            if cluster is not None:
                cluster.start()
            for services in combinations:
                if stacks:
                    console.print(f"[bold]== stack {services.id} ==[/]")
                found = _run_stacks(
                    _runnable(names, services, console),
                    profile,
                    redis_server,
                    console,
                    rabbitmq=rabbitmq if services.broker == "rabbitmq" else None,
                    store_url=cluster.url if cluster and services.store == "cluster" else None,
                    beat=beat,
                )
                if stacks:
                    results[services.id] = found
                else:
                    results = found
        finally:
            if cluster is not None:
                cluster.stop()
            if rabbitmq is not None:
                rabbitmq.destroy()
            redis_server.destroy()
    finally:
        if noisy is not None:
            noisy.stop()
    extra: dict[str, Any] = {"noisy_neighbour": noisy.as_json() if noisy else None, "beat": beat}
    if stacks:
        extra["stacks"] = [services.id for services in stacks]
    else:
        extra["broker"] = broker
    report_and_print(results, profile, started, output, console, extra=extra)
    return 0


def _runnable(names: list[str], services: Services, console: Console) -> list[str]:
    if services.store == "redis":
        return names
    skipped = [name for name in names if name in SINGLE_REDIS_ONLY]
    if skipped:
        console.print(f"[yellow]{', '.join(skipped)}: on a redis store only, skipped[/]")
    return [name for name in names if name not in SINGLE_REDIS_ONLY]


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_stacks(
    names: list[str],
    profile: Profile,
    redis_server: PrivateRedis,
    console: Console,
    *,
    rabbitmq: PrivateRabbitMQ | None = None,
    store_url: str | None = None,
    beat: bool = False,
) -> dict[str, Any]:
    """Each stack on the shared Redis; with `rabbitmq`, each on a vhost of its own there;
    with `store_url` (a cluster's), its data there; with `beat`, beat beside each worker."""
    results: dict[str, Any] = {}

    def broker_url() -> str | None:
        return rabbitmq.new_vhost() if rabbitmq is not None else None

    if any(n in SMALL_STACK for n in names):
        stack = Stack(
            coaches=profile.coaches,
            redis_server=redis_server,
            broker_url=broker_url(),
            redis_url=store_url,
            beat=beat,
        ).start()
        console.print(f"{profile.coaches:,} coaches seeded in {stack.seed_seconds:.0f} s")
        try:
            stack.refresh_now()
            results |= _run_group(SMALL_STACK, names, stack, profile, console)
        finally:
            stack.close()
    if any(n in BIG_STACK for n in names):
        stack = Stack(
            coaches=profile.big_coaches,
            redis_server=redis_server,
            broker_url=broker_url(),
            redis_url=store_url,
            beat=beat,
        ).start()
        console.print(f"{profile.big_coaches:,} coaches seeded in {stack.seed_seconds:.0f} s")
        results["seed"] = {"coaches": profile.big_coaches, "seconds": round(stack.seed_seconds, 1)}
        try:
            results |= _run_group(BIG_STACK, names, stack, profile, console)
        finally:
            stack.close()
    whale_runs = {"whale": whale_scenario, "whale-fairness": fairness_scenario}
    for name in (name for name in whale_runs if name in names):  # a stack of its own each
        stack = Stack(
            coaches=profile.coaches, redis_server=redis_server, broker_url=broker_url(), beat=beat
        ).start()
        try:
            stack.refresh_now()
            results[name.replace("-", "_")] = whale_runs[name](stack, profile)
        finally:
            stack.close()
    return results


def report_and_print(
    results: dict[str, Any],
    profile: Profile,
    started: float,
    output: str,
    console: Console,
    *,
    extra: dict[str, Any],
) -> None:
    settings = load_settings(_env_file=None)
    now = datetime.now(UTC)
    meta = {
        "date": now.isoformat(timespec="seconds"),
        "commit": _commit(),
        "profile": profile.name,
        "machine": machine(),
        "settings": {
            "debounce_ms": settings.debounce_ms,
            "batch": settings.recompute_batch_size,
            "scheduler_shards": settings.scheduler_shards,
        },
        "seconds": round(time.monotonic() - started, 1),
        **extra,
    }
    stem = f"bench-{now:%Y%m%d-%H%M%S}-{profile.name}"
    paths = report.write(Path(output), stem, meta, results)
    console.print(report.markdown(meta, results))
    for path in paths:
        console.print(f"wrote {path}")
