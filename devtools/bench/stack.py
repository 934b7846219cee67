"""A private, production-like pipeline for one benchmark: services, data and processes.

Postgres runs durable (fsync and synchronous commit on, as in production) with
pg_stat_statements to count the queries the workers run. Pipeline processes are the real ones
(`python -m listeners`, `celery -A tasks worker`), started as subprocesses.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from coachpipe.embedded import PrivatePostgres, PrivateRedis, free_port
from config import Settings, load_settings
from devtools.bench.broker import BrokerQueues
from devtools.bench.measure import NoticeCollector
from devtools.processes import Proc, listener_connected, start_beat, start_worker, wait_for
from pipeline import keys, seed
from pipeline.aggregates import NAMES
from pipeline.coaches import active_coach_batches
from pipeline.db import make_engine
from pipeline.migrate import upgrade
from pipeline.redis_client import connect
from pipeline.refresh import refresh_everything
from pipeline.scheduler import idle, shards_in_use
from pipeline.store import AggregateStore

BROKER_DB = 1
ENV_DEFAULTS = {
    "LOG_FORMAT": "console",
    "LOG_LEVEL": "WARNING",
    "HEARTBEAT_S": "1",
    "HEARTBEAT_STALE_S": "5",
    "PYTHONUNBUFFERED": "1",
}
SELECTS = """
SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
WHERE query ILIKE 'select%%' AND (query ILIKE '%%coach_id%%' OR query ILIKE '%%clock_timestamp%%')
"""


@dataclass
class Stack:
    coaches: int
    clients_per_coach: int = 20
    sessions_per_client: int = 5
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="coachpipe-bench-")))
    procs: list[Proc] = field(default_factory=list)
    standin: Any = None
    env: dict[str, str] = field(default_factory=dict)
    seed_seconds: float = 0.0
    redis_server: PrivateRedis | None = None
    """Shared between stacks: the bench process's Celery app keeps its broker URL."""
    own_redis: PrivateRedis | None = None
    """The Redis this stack started itself (none given), stopped with it."""
    running_worker: Proc | None = None
    worker_config: tuple[object, ...] = ()
    broker_url: str | None = None
    """The Celery broker (a RabbitMQ vhost, say); the shared Redis's database 1 unless given."""
    redis_url: str | None = None
    """The data store (a private Redis Cluster's `redis+cluster://` URL, say); the shared
    Redis's database 0 unless given."""
    beat: bool = False
    """Run celery beat beside the worker, as deployed: its clock ticks, refreshes and audits
    share the worker's pool with the realtime drains."""
    running_beat: Proc | None = None

    def start(self) -> Stack:
        self.root.chmod(0o755)
        self.pg = PrivatePostgres(
            self.root / "pg",
            durable=True,
            output_plugins=("wal2json",),
            settings=(
                "shared_preload_libraries=pg_stat_statements",
                "max_connections=300",
                "track_commit_timestamp=on",  # exact commit brackets (`coachpipe.traffic`)
            ),
        ).start()
        if self.redis_server is None:
            self.own_redis = PrivateRedis(self.root / "redis", durable=False)
            self.redis_server = self.own_redis
        self.redis_server.start()
        base = f"redis://127.0.0.1:{self.redis_server.port}"
        self.env = {
            **os.environ,
            **ENV_DEFAULTS,
            "DATABASE_URL": self.pg.url,
            "REDIS_URL": self.redis_url or f"{base}/0",
            "BROKER_URL": self.broker_url or f"{base}/{BROKER_DB}",
        }
        os.environ.update({k: self.env[k] for k in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")})
        engine = make_engine(self.pg.url)
        upgrade(engine, "coachpipe")
        engine.dispose()
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        started = time.monotonic()
        seed.load(
            self.pg.url,
            seed.SeedPlan(
                coaches=self.coaches,
                clients_per_coach=self.clients_per_coach,
                sessions_per_client=self.sessions_per_client,
            ),
        )
        self.seed_seconds = time.monotonic() - started
        self.redis = connect(self.env["REDIS_URL"])
        self.broker = BrokerQueues(self.env["BROKER_URL"])
        self.redis.flushdb()
        self.broker.flush()
        return self

    @property
    def settings(self) -> Settings:
        return load_settings(_env_file=None)

    def coach_ids(self) -> list[str]:
        """Every coach of the dataset."""
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            rows = conn.execute("SELECT id FROM users WHERE role = 'coach'").fetchall()
        return [str(row[0]) for row in rows]

    def notices(self) -> NoticeCollector:
        """A started collector of every coach's update notices, on this stack's store."""
        return NoticeCollector(self.env["REDIS_URL"], self.coach_ids()).start()

    def refresh_now(self, names: tuple[str, ...] = NAMES, threads: int = 2) -> float:
        """Every aggregate of every coach, in this process; returns seconds."""
        engine = make_engine(self.pg.url, pool_size=threads, snapshots=True)
        store = AggregateStore(self.redis)
        started = time.monotonic()
        batches = list(active_coach_batches(engine, 500))
        refresh_everything(engine, store, names, batches, threads=threads)
        seconds = time.monotonic() - started
        engine.dispose()
        return seconds

    # --- processes ----------------------------------------------------------------------
    def worker(
        self,
        name: str = "worker",
        concurrency: int = 2,
        *,
        fresh: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        """The running worker if its configuration matches, else a fresh one. A worker keeps
        no state between runs (what it knows is in Redis), so one start serves a whole stack;
        `fresh` restarts it, for runs that measure the worker's own memory."""
        env = env or {}
        config = (concurrency, tuple(sorted(env.items())))
        worker = self.running_worker
        if worker is not None and self.worker_config == config and worker.alive() and not fresh:
            if self.beat and (self.running_beat is None or not self.running_beat.alive()):
                self.running_beat = start_beat({**self.env, **env}, self.root / "logs")
            return worker
        self.stop_worker()
        self.running_worker = start_worker(
            {**self.env, **env},
            self.root / "logs",
            name=name,
            concurrency=concurrency,
            broker_url=self.env["BROKER_URL"],
        )
        self.worker_config = config
        if self.beat:
            self.running_beat = start_beat({**self.env, **env}, self.root / "logs")
        return self.running_worker

    def stop_worker(self) -> None:
        for proc in (self.running_beat, self.running_worker):
            if proc is not None:
                proc.terminate(timeout=5)
        self.running_worker = self.running_beat = None

    def listener(self, source: str = "postgres", *, naive: bool = False, **env: str) -> Proc:
        port = free_port()
        extra = {"LISTENER_METRICS_PORT": str(port), **env}
        if source == "supabase":
            extra |= {"SUPABASE_URL": self.realtime().url, "SUPABASE_KEY": "bench"}
        module = "devtools.bench.naive_listener" if naive else "listeners"
        name = f"listener-{source}{'-naive' if naive else ''}-{len(self.procs)}"
        proc = Proc(
            name,
            [sys.executable, "-m", module, source],
            {**self.env, **extra},
            self.root / "logs" / f"{name}.log",
        ).start()
        proc.metrics_port = port  # type: ignore[attr-defined]
        self.procs.append(proc)
        wait_for(
            lambda: self.listener_connected(proc), 60, interval=0.1, message=f"{name} to connect"
        )
        return proc

    def realtime(self) -> Any:
        if self.standin is None:
            from devtools.realtime_standin import RealtimeStandIn

            self.standin = RealtimeStandIn(self.pg.url, poll_interval=0.02).start()
        return self.standin

    def listener_connected(self, proc: Proc, stale_after_s: float = 5) -> bool:
        """True once `proc` (a listener) reports itself connected (in a health record younger
        than `stale_after_s`); raises if it exited."""
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.output()[-2000:]}")
        return listener_connected(self.redis, proc, stale_after_s=stale_after_s)

    def stop_processes(self) -> None:
        """Stop the listeners (all at once; the worker stays), then skip what a slower
        listener left in the slot and the broker, so the next run starts from now."""
        if self.procs:
            # The naive listener would flush its whole backlog first: 5 s, then SIGKILL.
            with ThreadPoolExecutor(len(self.procs)) as pool:
                list(pool.map(lambda proc: proc.terminate(timeout=5), self.procs))
        self.procs.clear()
        self.skip_backlog()

    def skip_backlog(self) -> None:
        """Move the slot to the end of the WAL (once its listener is gone); drop queued tasks."""
        with psycopg.connect(self.pg.url, autocommit=True) as conn:

            def released() -> bool:
                row = conn.execute(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = 'coachpipe'"
                ).fetchone()
                return row is None or not row[0]

            wait_for(released, 30, interval=0.1, message="the slot to be released")
            conn.execute(
                "SELECT pg_replication_slot_advance(slot_name, pg_current_wal_lsn())"
                " FROM pg_replication_slots WHERE slot_name = 'coachpipe'"
            )
        self.drop_queued()

    def drop_queued(self) -> None:
        """Delete the queues' messages (kombu's bindings stay: the running worker and every
        producer rely on them), then let the worker finish the few it had taken; what a killed
        worker left unacknowledged is dropped too rather than redelivered into the next run."""
        if not self.broker.purge():
            self.stop_worker()  # still busy: its tasks must not store into the next run

    # --- state --------------------------------------------------------------------------
    def reset_pipeline(self) -> None:
        """Start a sub-run from a clean pipeline: listeners stopped and their backlog skipped,
        queues purged, the worker idle (or stopped), and no due, pending, claimed, throttle or
        freshness state left in Redis, so nothing one run left undone is judged by the next."""
        self.stop_processes()
        self.clear_pipeline_state()
        self.drop_queued()  # follow-up drains the last tasks enqueued (they now find nothing)

    def clear_pipeline_state(self) -> None:
        shards = range(shards_in_use(self.redis, self.settings.scheduler_shards))
        per_shard = [
            keys.due,
            keys.commits,
            keys.not_before,
            keys.coach_cost,
            keys.drain_scheduled,
            keys.claims,
        ]
        fixed = [key(shard) for shard in shards for key in per_shard]
        fixed += [keys.wide_pending(name) for name in NAMES]
        patterns = [keys.freshness_open("*"), keys.freshness_pending("*", "*")]
        patterns += [keys.claim(shard, "*") for shard in shards]
        found = [key for pattern in patterns for key in self.redis.scan_iter(pattern, count=1000)]
        self.redis.delete(*fixed, *found)

    def idle(self) -> bool:
        return (
            idle(self.redis, self.settings.scheduler_shards)
            and self.broker.queued() == 0
            and self.broker.unacked() == 0
        )

    def quiesce(self, timeout: float = 120) -> float:
        started = time.monotonic()
        wait_for(self.idle, timeout, interval=0.1, message="pipeline to go idle")
        return time.monotonic() - started

    def reset_counters(self) -> None:
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")

    def db_queries(self) -> int:
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            row = conn.execute(SELECTS).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.stop_processes()
        self.stop_worker()
        if self.standin is not None:
            self.standin.stop()
        self.pg.destroy()
        if self.own_redis is not None:
            self.own_redis.destroy()
        shutil.rmtree(self.root, ignore_errors=True)
