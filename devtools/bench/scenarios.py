"""The benchmark scenarios. Each returns a dict of measured figures (never estimates).

Latency is commit → stored: each stored write's notice carries the commit time of the oldest
change it answers (from the change event, i.e. the database's commit timestamp), and the time
it was computed and stored. The floor (commit → event received) is measured by a second
consumer of the same source, with the same code the listener uses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psutil
import psycopg

from coachpipe.traffic import Change, ChangeWriter, pace, pick_coaches
from config import load_settings
from devtools.bench.freshness import (
    every_change_stored_after_last_commit,
    per_change,
    routed_keys,
    tail_seconds,
)
from devtools.bench.measure import (
    NoticeCollector,
    Observed,
    machine,
    percentiles,
    tree_pss_mb,
    tree_rss_mb,
)
from devtools.bench.stack import Stack
from devtools.processes import Proc, wait_for
from devtools.scrape import scrape
from listeners.source import Batch
from pipeline.aggregates import CRITICAL, get
from pipeline.read import read_aggregate
from pipeline.recompute import compute_snapshot
from pipeline.routing import TABLE_AGGREGATES


@dataclass
class Profile:
    """Sizes and durations of one run (`full`, `quick` or `smoke`)."""

    name: str
    coaches: int
    big_coaches: int
    steady_s: float
    steady_other_s: float
    burst_changes: int
    hot_changes: int
    intake_s: float
    soak_s: float
    naive_soak_s: float
    micro_samples: int
    naive_drain_s: float
    """How long a naive run's backlog is waited for after its writers stop."""
    naive_refresh_coaches: int
    """Coaches of the full-refresh comparison (in one process, pipeline against naive)."""
    chaos_s: float = 120
    """Load time of the `chaos` scenario, with kills all along."""
    fault_load_s: float = 20
    """Load before the fault of `redis-restart` and `worker-kill`."""
    soak_audit_s: float = 1800
    """Load time of the `soak-audit` scenario: `chaos` with beat's audit running."""
    chaos_rate: float = 200
    """Changes/s of `chaos` and `soak-audit`."""
    whale_rate: float = 100
    """Changes/s of each stream of `whale` and `whale-fairness`: the others', the hot coach's
    and the whale's (the issue's load: 100 each, `devtools.bench.whale.ISSUE_RATE`)."""


PROFILES = {
    "full": Profile("full", 1000, 10_000, 120, 15, 2000, 1000, 8, 600, 20, 200, 20, 2000),
    "quick": Profile("quick", 300, 1000, 6, 3, 500, 300, 2, 10, 3, 50, 3, 300, 20, 6, 120),
    "smoke": Profile("smoke", 30, 60, 2, 2, 100, 50, 2, 3, 2, 20, 5, 60, 6, 2, 30),
}


# --- writers ------------------------------------------------------------------------------
@dataclass
class Written:
    changes: list[Change] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    behind_s: float = 0.0
    conflicts: int = 0
    """Changes that failed on a constraint (another writer moved or deleted the row) and were
    replaced by another change: each is a rolled-back transaction on the server."""

    @property
    def last_commit_ms(self) -> float:
        return max(change.commit_ms for change in self.changes)


def write_paced(
    stack: Stack,
    *,
    rate: float,
    duration: float,
    coaches: list[UUID],
    hot: UUID | None = None,
    threads: int = 1,
    seed: int = 7,
    stop: threading.Event | None = None,
    ready: threading.Barrier | None = None,
) -> Written:
    """`rate` changes/s for `duration` s (or until `stop` is set) from `threads` connections
    (one ChangeWriter each). Every writer loads its book of rows first, and the pacing starts
    once all have (`ready`: a barrier shared with other calls, one party per writer thread):
    loading a whale's book (a million sessions, seconds of the bench process's CPU) inside
    another writer's paced window held that writer back, which then caught up in a burst."""
    written = Written()
    lock = threading.Lock()
    loaded = ready or threading.Barrier(threads)
    failures: list[BaseException] = []

    def one(index: int) -> None:
        try:
            with psycopg.connect(stack.pg.url, autocommit=True) as conn:
                writer = ChangeWriter(
                    conn, [hot] if hot else coaches, seed + index, server_clock=True
                )
                loaded.wait(timeout=600)
                with lock:
                    written.started = written.started or time.time()

                def record(change: Change) -> None:
                    with lock:
                        written.changes.append(change)

                stats = pace(
                    writer.write,
                    rate=rate / threads,
                    duration=duration,
                    on_change=record,
                    stop=stop,
                )
                with lock:
                    written.behind_s = max(written.behind_s, stats.behind_s)
                    written.conflicts += writer.conflicts
        except BaseException as error:  # re-raised by the caller's thread below
            loaded.abort()  # writers waiting at the barrier stop waiting (BrokenBarrierError)
            failures.append(error)

    workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]
    written.finished = time.time()
    return written


def affected_keys(changes: Iterable[Change]) -> int:
    return sum(len(TABLE_AGGREGATES[c.table]) * len(c.coaches) for c in changes)


# --- floor probe ----------------------------------------------------------------------------
class FloorProbe:
    """A second consumer of the source, recording commit → event received."""

    def __init__(self, stack: Stack, source: str) -> None:
        overrides: dict[str, Any] = {"slot_name": "bench_floor"}
        if source == "supabase":
            overrides |= {"supabase_url": stack.realtime().url, "supabase_key": "bench"}
        self.settings = load_settings(_env_file=None, **overrides)
        self.source_name = source
        self.latencies: list[tuple[float, float]] = []
        self.stack = stack
        self._source: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="floor")
        self._ready = threading.Event()

    def start(self) -> FloorProbe:
        self._thread.start()
        self._ready.wait(30)
        return self

    def _run(self) -> None:
        asyncio.run(self._consume())

    async def _consume(self) -> None:
        from pipeline.health import ListenerState

        if self.source_name == "postgres":
            from listeners.postgres_source import PostgresSource

            self._source = PostgresSource(self.settings)
        else:
            from listeners.supabase_source import SupabaseSource

            self._source = SupabaseSource(self.settings)
        self._loop = asyncio.get_running_loop()
        items = self._source.items()

        async def watch_ready() -> None:
            while self._source.status.state is not ListenerState.CONNECTED:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            self._ready.set()

        watcher = asyncio.create_task(watch_ready())
        async for item in items:
            if isinstance(item, Batch):
                now = time.time()
                for event in item.events:
                    if event.commit_ts is not None:
                        self.latencies.append((now, (now - event.commit_ts.timestamp()) * 1000))
            await self._source.confirm(getattr(item, "position", None))
        watcher.cancel()

    def stop(self) -> None:
        if self._loop is not None and self._source is not None:
            closing = asyncio.run_coroutine_threadsafe(self._source.close(), self._loop)
            with contextlib.suppress(concurrent.futures.CancelledError, TimeoutError):
                closing.result(30)  # the loop may finish (and cancel this) once items() ends
        self._thread.join(30)
        if self.source_name == "postgres":
            with psycopg.connect(self.stack.pg.url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_drop_replication_slot('bench_floor') "
                    "WHERE EXISTS (SELECT 1 FROM pg_replication_slots "
                    "WHERE slot_name = 'bench_floor')"
                )

    def figures(self, start: float) -> dict[str, Any]:
        """p50/p95/p99/max of commit → received (ms) since `start` (wall clock, s), and when
        its tail happened (`tail_seconds`, by second from `start`, as the run's per-change
        figures count them): a stall of the database's own delivery shows in the same seconds
        as the pipeline's."""
        timed = [(at * 1000 - latency, latency) for at, latency in self.latencies if at >= start]
        return {
            **percentiles([latency for _, latency in timed]),
            "tail": tail_seconds(timed, start * 1000),
        }


# --- own drain and correctness -----------------------------------------------------------------
def drain_own(
    stack: Stack, collector: NoticeCollector, start: float, written: Written, timeout: float
) -> float | None:
    """Seconds until every aggregate routed from every change of this run was stored including
    it and nothing is pending, queued or running; None if that did not happen in `timeout`."""
    started = time.monotonic()

    def done() -> bool:
        if not stack.idle():
            return False
        notices = collector.since(start)
        return every_change_stored_after_last_commit(written.changes, notices) is not None

    try:
        wait_for(done, timeout, interval=0.25)
    except AssertionError:
        return None
    return time.monotonic() - started


def verify(stack: Stack, changes: Iterable[Change]) -> dict[str, Any]:
    """The run's own keys (every aggregate routed from its changes) hold a fresh computation at
    their own `as_of` (the SQL the oracle tests prove equal to the plain-Python oracle)."""
    from pipeline.db import make_engine

    engine = make_engine(stack.pg.url)
    wrong = []
    own = sorted({key for change in changes for key in routed_keys(change)})
    for name, coach in own:
        aggregate = get(name)
        stored = read_aggregate(stack.redis, UUID(coach), name)
        with engine.connect() as conn:
            fresh = (
                aggregate.compute(conn, [UUID(coach)], stored.as_of)[UUID(coach)]
                if stored
                else None
            )
        if stored is None or stored.value != fresh:
            wrong.append(f"{name}:{coach} {_difference(stored, fresh)}")
    checked = len(own)
    engine.dispose()
    return {"checked": checked, "wrong": len(wrong), "examples": wrong[:5]}


def _difference(stored: Any, fresh: Any) -> str:
    """Which fields differ (stored → fresh), to tell a stale value from a comparison artefact."""
    if stored is None:
        return "never stored"
    if not isinstance(stored.value, dict) or not isinstance(fresh, dict):
        return f"{stored.value!r} → {fresh!r}"[:300]
    fields = sorted(set(stored.value) | set(fresh))
    changed = {
        f: (stored.value.get(f), fresh.get(f))
        for f in fields
        if stored.value.get(f) != fresh.get(f)
    }
    return f"as_of {stored.as_of.isoformat()} {changed!r}"[:600]


def _latencies(notices: list[Observed]) -> list[float]:
    return [lat for o in notices if (lat := o.latency_ms) is not None]


def _timeline(notices: list[Observed], start: float) -> list[tuple[float, float]]:
    return [
        (round(o.received - start, 3), round(lat, 2))
        for o in notices
        if (lat := o.latency_ms) is not None
    ]


def listener_metric(listener: Proc, name: str) -> float:
    """One metric of a listener `Stack.listener` started (it serves them on `metrics_port`)."""
    return scrape(listener.metrics_port, name)  # type: ignore[attr-defined]


def bench_coaches(stack: Stack, count: int, seed: int = 7) -> list[UUID]:
    with psycopg.connect(stack.pg.url, autocommit=True) as conn:
        return pick_coaches(conn, count, seed)


# --- scenarios ----------------------------------------------------------------------------
def steady(stack: Stack, profile: Profile, source: str, naive: bool) -> dict[str, Any]:
    duration = profile.steady_s if (source == "postgres" and not naive) else profile.steady_other_s
    stack.worker()
    listener = stack.listener(source, naive=naive)
    floor = FloorProbe(stack, source).start() if not naive else None
    collector = stack.notices()
    coaches = bench_coaches(stack, min(1000, stack.coaches))
    stack.reset_counters()
    start = time.time()
    written = write_paced(stack, rate=200, duration=duration, coaches=coaches, threads=2)
    # The naive mode's backlog is not waited for long: what it has stored so far counts.
    drained = drain_own(
        stack, collector, start, written, min(10, profile.naive_drain_s) if naive else 60
    )
    notices = collector.since(start)
    collector.stop()
    result = {
        "source": source,
        "mode": "naive" if naive else "pipeline",
        "rate": 200,
        "seconds": duration,
        "changes": len(written.changes),
        "writer_behind_s": round(written.behind_s, 3),
        "commit_to_all_stored_ms": per_change(written.changes, notices, start * 1000),
        "commit_to_stored_ms": percentiles(_latencies(notices)),
        "recomputes": len(notices),
        "naive_recomputes": affected_keys(written.changes),
        "db_queries": stack.db_queries(),
        "drain_after_last_write_s": None if drained is None else round(drained, 2),
        "events_seen": listener_metric(listener, "coachpipe_events_total"),
        "batches_held_until_visible": listener_metric(listener, "coachpipe_visibility_waits_total"),
        "timeline": _timeline(notices, start),
    }
    if floor is not None:
        result["commit_to_listener_ms"] = floor.figures(start)
        floor.stop()
    stack.stop_processes()
    return result


def burst(stack: Stack, profile: Profile, naive: bool, hot: bool = False) -> dict[str, Any]:
    """`burst`: N changes in 1 s over 100 coaches; `hot`: N changes to one coach in 1 s."""
    stack.refresh_now()  # the correctness check below judges values this run did not write too
    worker = stack.worker(fresh=not naive and not hot)  # the burst measures worker memory
    listener = stack.listener("postgres", naive=naive)
    collector = stack.notices()
    coaches = bench_coaches(stack, 100)
    stack.reset_counters()
    rss: list[float] = []
    pss: list[float] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            rss.append(tree_rss_mb(worker.pid))
            pss.append(tree_pss_mb(worker.pid))
            sampling.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.time()
    changes = profile.hot_changes if hot else profile.burst_changes
    written = write_paced(
        stack,
        rate=changes,
        duration=1.0,
        coaches=coaches,
        hot=coaches[0] if hot else None,
        threads=4,
    )
    # The naive mode's backlog is waited for a while only: what it left undone counts as wrong.
    drain_own(stack, collector, start, written, profile.naive_drain_s if naive else 300)
    notices = collector.since(start)
    collector.stop()
    sampling.set()
    sampler.join()
    touched = sorted({c for change in written.changes for c in change.coaches})
    result = {
        "mode": "naive" if naive else "pipeline",
        "changes": len(written.changes),
        "write_seconds": round(written.finished - written.started, 3),
        "coaches": len(touched),
        "recomputes": len(notices),
        "naive_recomputes": affected_keys(written.changes),
        "changes_per_recompute_of_hot_coach": None,
        "db_queries": stack.db_queries(),
        "visible_after_last_commit_s": every_change_stored_after_last_commit(
            written.changes, notices
        ),
        "commit_to_all_stored_ms": per_change(written.changes, notices, start * 1000),
        "commit_to_stored_ms": percentiles(_latencies(notices)),
        "worker_rss_mb_max": max(rss, default=0.0),
        "worker_pss_mb_max": max(pss, default=0.0),
        "correct": verify(stack, written.changes),
        "batches_held_until_visible": listener_metric(listener, "coachpipe_visibility_waits_total"),
    }
    if hot:
        per_aggregate: defaultdict[str, int] = defaultdict(int)
        for observed in notices:
            if observed.notice.coach_id == str(coaches[0]):
                per_aggregate[observed.notice.aggregate] += 1
        result["hot_recomputes_per_aggregate"] = dict(per_aggregate)
        most = max(per_aggregate.values(), default=0)
        result["changes_per_recompute_of_hot_coach"] = (
            round(len(written.changes) / most, 1) if most else None
        )
    stack.stop_processes()
    return result


def intake(stack: Stack, profile: Profile, source: str, naive: bool) -> dict[str, Any]:
    """Writers commit as fast as they can (100 rows per transaction); the listener's sustained
    event rate and the slot lag over time."""
    stack.worker()
    listener = stack.listener(source, naive=naive)
    coaches = bench_coaches(stack, min(1000, stack.coaches))
    with psycopg.connect(stack.pg.url, autocommit=True) as conn:
        pairs = conn.execute(
            "SELECT coach_id, id FROM users WHERE role = 'client' AND coach_id = ANY(%s)",
            (coaches,),
        ).fetchall()
    stop = threading.Event()
    written = [0]
    lock = threading.Lock()

    def writer(index: int) -> None:
        rows = [pairs[(index * 7919 + i) % len(pairs)] for i in range(100)]
        coach_ids = [r[0] for r in rows]
        client_ids = [r[1] for r in rows]
        with psycopg.connect(stack.pg.url, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(
                    "INSERT INTO sessions (coach_id, client_id, status, scheduled_at, price_cents)"
                    " SELECT c, k, 'scheduled', now() + interval '3 days', 9900"
                    " FROM unnest(%s::uuid[], %s::uuid[]) AS t(c, k)",
                    (coach_ids, client_ids),
                )
                with lock:
                    written[0] += len(rows)

    def lag() -> int:
        with psycopg.connect(stack.pg.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)),"
                " 0)"
                "::bigint FROM pg_replication_slots WHERE slot_name = 'coachpipe'"
            ).fetchone()
        return int(row[0]) if row else 0

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    seen_before = listener_metric(listener, "coachpipe_events_total")
    listener_cpu = psutil.Process(listener.pid)
    listener_cpu.cpu_percent()
    walsender_cpu = _walsender(stack)
    start = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[dict[str, Any]] = []
    while time.monotonic() - start < profile.intake_s:
        time.sleep(1)
        samples.append(
            {
                "t": round(time.monotonic() - start, 1),
                "written": written[0],
                "seen": listener_metric(listener, "coachpipe_events_total") - seen_before,
                "slot_lag_bytes": lag(),
                # 100 = one core busy: the listener decodes and enqueues in one Python thread.
                "listener_cpu_percent": listener_cpu.cpu_percent(),
                # The server side of the slot: the walsender decodes the WAL for it.
                "walsender_cpu_percent": walsender_cpu.cpu_percent() if walsender_cpu else None,
            }
        )
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    seen = listener_metric(listener, "coachpipe_events_total") - seen_before
    half: dict[str, Any] = samples[len(samples) // 2] if samples else {"t": 0, "seen": 0}
    late_rate = (seen - half["seen"]) / max(elapsed - half["t"], 1e-9)
    caught_up_at = time.monotonic()
    caught_up = True
    try:
        wait_for(
            lambda: listener_metric(listener, "coachpipe_events_total") - seen_before >= written[0],
            max(10, 4 * profile.intake_s) if source == "postgres" and not naive else 3,
            interval=0.5,
            message="listener to catch up",
        )
    except AssertionError:
        caught_up = False  # reported below; Realtime may drop changes, a slot never does
    result = {
        "source": source,
        "mode": "naive" if naive else "pipeline",
        "seconds": round(elapsed, 1),
        "written": written[0],
        "writer_rate": round(written[0] / elapsed),
        "listener_rate": round(seen / elapsed),
        "listener_rate_second_half": round(late_rate),
        "catch_up_after_writers_stopped_s": round(time.monotonic() - caught_up_at, 1),
        "caught_up": caught_up,
        "events_seen_total": listener_metric(listener, "coachpipe_events_total") - seen_before,
        "listener_cpu_percent_avg": _average(samples, "listener_cpu_percent"),
        "walsender_cpu_percent_avg": _average(samples, "walsender_cpu_percent"),
        "samples": samples,
    }
    stack.stop_processes()
    return result


def _walsender(stack: Stack) -> psutil.Process | None:
    """The server process streaming the `coachpipe` slot (CPU primed), if one is active."""
    with psycopg.connect(stack.pg.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'coachpipe'"
        ).fetchone()
    if not row or row[0] is None:
        return None
    try:
        process = psutil.Process(row[0])
        process.cpu_percent()
    except psutil.Error:
        return None
    return process


def _average(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [sample[key] for sample in samples if sample.get(key) is not None]
    return round(sum(values) / len(values)) if values else None


def soak(stack: Stack, profile: Profile, naive: bool) -> dict[str, Any]:
    duration = profile.naive_soak_s if naive else profile.soak_s
    worker = stack.worker(fresh=not naive)  # memory over time, from a worker's start
    listener = stack.listener("postgres", naive=naive)
    collector = stack.notices()
    coaches = bench_coaches(stack, min(1000, stack.coaches))
    samples: list[dict[str, float]] = []
    done = threading.Event()
    start = time.time()

    def sample() -> None:
        while not done.is_set():
            samples.append(
                {
                    "t": round(time.time() - start, 1),
                    "worker_rss_mb": tree_rss_mb(worker.pid),
                    "worker_pss_mb": tree_pss_mb(worker.pid),
                    "listener_rss_mb": tree_rss_mb(listener.pid),
                    "queued": stack.broker.queued(),
                }
            )
            done.wait(max(1.0, duration / 60))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    written = write_paced(stack, rate=100, duration=duration, coaches=coaches, threads=1)
    done.set()
    sampler.join()
    with contextlib.suppress(AssertionError):  # naive: latencies of what it stored so far
        stack.quiesce(min(30, profile.naive_drain_s) if naive else 300)
    notices = collector.since(start)
    collector.stop()
    third = max(1, len(samples) // 3)

    def trend(key: str) -> dict[str, float]:
        first = [s[key] for s in samples[:third]]
        last = [s[key] for s in samples[-third:]]
        return {
            "first_third_avg": round(sum(first) / len(first), 1),
            "last_third_avg": round(sum(last) / len(last), 1),
            "max": max(s[key] for s in samples),
        }

    result = {
        "mode": "naive" if naive else "pipeline",
        "seconds": duration,
        "changes": len(written.changes),
        "commit_to_stored_ms": percentiles(_latencies(notices)),
        "worker_rss_mb": trend("worker_rss_mb"),
        "worker_pss_mb": trend("worker_pss_mb"),
        "listener_rss_mb": trend("listener_rss_mb"),
        "queued": trend("queued"),
        "samples": samples,
    }
    stack.stop_processes()
    return result


def dedup_micro(stack: Stack, profile: Profile) -> dict[str, Any]:
    """Issue-4 figures: enqueue → stored on loopback (idle keys: no debounce wait), recomputes
    per second of one worker process, batched and not."""
    from tasks.celery import create_app

    app = create_app(stack.settings)

    collector = stack.notices()
    coaches = bench_coaches(stack, stack.coaches)
    stack.worker(concurrency=1)
    latencies = []
    for coach in coaches[: profile.micro_samples]:
        observed = len(collector.notices)
        started = time.time()
        app.runtime.scheduler.request([("coach-stats", coach)])

        def arrived(seen: int = observed) -> bool:
            return len(collector.notices) > seen

        wait_for(arrived, 10, interval=0.0005)
        latencies.append((collector.notices[-1].received - started) * 1000)
    stack.quiesce(60)

    keys_ = [("coach-stats", coach) for coach in coaches]
    batched = recompute_throughput(stack, app, collector, keys_, processes=1, batch_env={})
    single = recompute_throughput(
        stack, app, collector, keys_, processes=1, batch_env={"RECOMPUTE_BATCH_SIZE": "1"}
    )
    collector.stop()
    stack.stop_processes()
    return {
        "enqueue_to_stored_ms": percentiles(latencies),
        "one_worker_recomputes_per_s_batched": batched,
        "one_worker_recomputes_per_s_batch_of_1": single,
    }


def recompute_throughput(
    stack: Stack,
    app: Any,
    collector: NoticeCollector,
    keys_: list[tuple[str, UUID]],
    *,
    processes: int,
    batch_env: dict[str, str],
) -> dict[str, Any]:
    """Recomputes per second of one worker with `processes` pool processes: every key requested
    at once (idle keys, due now), until every one is stored."""
    stack.stop_processes()
    stack.worker(name=f"pool{processes}", concurrency=processes, env=batch_env)
    collector.clear()
    started = time.time()
    app.runtime.scheduler.request(keys_)
    wait_for(
        lambda: len(collector.notices) >= len(keys_),
        600,
        interval=0.05,
        message="all recomputes stored",
    )
    seconds = time.time() - started
    return {
        "processes": processes,
        "recomputes": len(keys_),
        "seconds": round(seconds, 2),
        "per_second": round(len(keys_) / seconds),
    }


WORKER_PROCESSES = (1, 2, 4)
WORKER_BATCHES = {"batched": {}, "batch_of_20": {"RECOMPUTE_BATCH_SIZE": "20"}}


def workers(stack: Stack, profile: Profile) -> dict[str, Any]:
    """Issue-19 figures: what the workers absorb. Every critical aggregate of every coach is
    requested at once, drained by one worker with 1, 2 and 4 pool processes, with the default
    batch size and with batches of 20 coaches (more, smaller drains to spread)."""
    from tasks.celery import create_app

    app = create_app(stack.settings)
    collector = stack.notices()
    coaches = bench_coaches(stack, stack.coaches)
    keys_ = [(aggregate.name, coach) for coach in coaches for aggregate in CRITICAL]
    results: dict[str, Any] = {"cpus": machine().get("cpus")}
    for label, batch_env in WORKER_BATCHES.items():
        results[label] = []
        # The smoke profile only proves the harness: one pool size.
        for processes in WORKER_PROCESSES[:1] if profile.name == "smoke" else WORKER_PROCESSES:
            stack.quiesce(60)
            results[label].append(
                recompute_throughput(
                    stack, app, collector, keys_, processes=processes, batch_env=batch_env
                )
            )
    collector.stop()
    stack.stop_processes()
    return results


def aggregates_micro(stack: Stack, profile: Profile) -> dict[str, Any]:
    """Issue-3 figures on the big dataset: recompute (version, snapshot, store) of every critical
    aggregate for 1 coach and for 100 coaches; a full refresh of everything for all coaches."""
    from pipeline.db import make_engine
    from pipeline.recompute import recompute
    from pipeline.store import AggregateStore

    engine = make_engine(stack.pg.url, snapshots=True)
    store = AggregateStore(stack.redis)
    coaches = bench_coaches(stack, stack.coaches)
    samples = coaches[: profile.micro_samples]

    def timed(run: Callable[[UUID], object], coaches_: list[UUID]) -> list[float]:
        out = []
        for coach in coaches_:
            started = time.perf_counter()
            run(coach)
            out.append((time.perf_counter() - started) * 1000)
        return out

    for coach in samples[:20]:  # warm the pool and the plans
        recompute(engine, store, CRITICAL, [coach])
    one_snapshot = timed(lambda c: recompute(engine, store, CRITICAL, [c]), samples)
    separate = timed(lambda c: [recompute(engine, store, a, [c]) for a in CRITICAL], samples)
    hundred: dict[str, Any] = {}
    for aggregate in (*CRITICAL, None):
        batches_ = [coaches[i * 100 : i * 100 + 100] for i in range(min(10, len(coaches) // 100))]
        runs = []
        for batch in batches_:
            started = time.perf_counter()
            recompute(engine, store, aggregate or CRITICAL, batch)
            runs.append((time.perf_counter() - started) * 1000)
        hundred[aggregate.name if aggregate else "all critical, one snapshot"] = percentiles(runs)
    stats_only = timed(lambda c: compute_snapshot(engine, [get("coach-stats")], [c]), samples)
    engine.dispose()
    return {
        "one_coach_all_critical_ms": percentiles(one_snapshot),
        "one_coach_all_critical_separate_snapshots_ms": percentiles(separate),
        "one_coach_stats_snapshot_only_ms": percentiles(stats_only),
        "hundred_coaches_ms": hundred,
        "coaches": stack.coaches,
    }


def full_refresh(stack: Stack, profile: Profile) -> dict[str, Any]:
    """Every aggregate of every coach through the workers (beat's reconcile path), and the naive
    way (one coach per query) in-process on the same data."""
    from pipeline.aggregates import NAMES
    from pipeline.coaches import active_coach_batches
    from pipeline.db import make_engine
    from pipeline.refresh import refresh_everything
    from pipeline.store import AggregateStore

    stack.worker(concurrency=2)
    collector = stack.notices()
    stack.reset_counters()
    from tasks.celery import create_app

    started = time.time()
    # beat's hourly path: every aggregate, one snapshot per batch of coaches
    create_app(stack.settings).sender.send_reconcile()
    expected = stack.coaches * len(NAMES)
    wait_for(
        lambda: len(collector.since(started)) >= expected,
        900,
        interval=0.2,
        message="every aggregate of every coach",
    )
    workers_s = time.time() - started
    pipeline_queries = stack.db_queries()
    collector.stop()
    stack.stop_processes()
    stack.stop_worker()  # the in-process comparison below gets both cores
    engine = make_engine(stack.pg.url, pool_size=2, snapshots=True)
    store = AggregateStore(stack.redis)
    # The comparison runs on a subset: the naive way takes minutes for every coach.
    subset = [c for batch in active_coach_batches(engine, 1000) for c in batch]
    subset = subset[: profile.naive_refresh_coaches]

    def in_process(batches: list[list[UUID]]) -> tuple[float, int]:
        stack.reset_counters()
        started = time.time()
        refresh_everything(engine, store, NAMES, batches, threads=2)
        return time.time() - started, stack.db_queries()

    in_process_s, in_process_queries = in_process(
        [subset[i : i + 500] for i in range(0, len(subset), 500)]
    )
    naive_s, naive_queries = in_process([[c] for c in subset])
    engine.dispose()
    return {
        "coaches": stack.coaches,
        "aggregates": len(NAMES),
        "pipeline_workers_s": round(workers_s, 2),
        "pipeline_db_queries": pipeline_queries,
        "compared_coaches": len(subset),
        "pipeline_in_process_s": round(in_process_s, 2),
        "pipeline_in_process_db_queries": in_process_queries,
        "naive_one_coach_per_query_s": round(naive_s, 2),
        "naive_db_queries": naive_queries,
    }
