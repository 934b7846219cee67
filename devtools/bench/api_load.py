"""Load run of the read API (a measurement, not a test): SSE fan-out and GET throughput.

    python -m devtools.bench.api_load [--workers 2] [--subscribers 1000] [--quick]

Starts a private Redis, stores synthetic aggregates for 100 coaches with `AggregateStore` (no
Postgres: the API never reads it), and serves the API with uvicorn in a subprocess. Then:

* **GET throughput**: `wrk` (one thread, a Lua script adds the bearer token and cycles over
  the coaches) against `GET /coaches/{id}/aggregates/coach-stats` at a few fixed concurrencies;
  requests/s and latency percentiles. Without `wrk`, an httpx client at fixed concurrency.
* **SSE fan-out**: 1,000 subscribers on 100 coaches (10 each) in a separate process, while this
  process stores coach-stats updates at a steady rate. Each `update` event carries the write's
  `computed_at` (taken just before the write), so write → client latency is measured per
  received event; received events are counted against expected ones.

The load generator shares the machine's cores with the API and Redis; the figures say so.
Results go to `bench/results/api-<date>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import jwt
import orjson
import psutil
import redis

from coachpipe.embedded import PrivateRedis, free_port
from devtools.bench.measure import percentiles
from pipeline.store import AggregateStore

SECRET = "api-load-bench-only-hs256-secret-0123456789"  # noqa: S105 - the private API's
STATS = "coach-stats"
PATH = "/coaches/{coach}/aggregates/" + STATS


@dataclass(frozen=True)
class Options:
    coaches: int = 100
    subscribers: int = 1000
    write_rate: float = 100.0
    """Stored coach-stats writes per second during the SSE run (each fans out to 10 streams)."""
    write_seconds: float = 15.0
    get_seconds: float = 10.0
    concurrency: tuple[int, ...] = (4, 8, 16, 32, 64)
    workers: int = 2
    profile: bool = False
    output: str = "bench/results"


# --- data and tokens ------------------------------------------------------------------------
def synthetic_stats(rng: random.Random) -> dict[str, Any]:
    """A coach-stats value shaped like the real one (pipeline.aggregates.stats)."""
    completed = rng.randint(20, 400)
    return {
        "clients": {"total": 20, "active": 15, "paused": 3, "archived": 2},
        "sessions": {
            "total": completed + 40,
            "scheduled": 20,
            "completed": completed,
            "cancelled": 12,
            "no_show": 8,
        },
        "upcoming": rng.randint(0, 20),
        "completed_30d": rng.randint(0, 40),
        "minutes_coached": completed * 55,
        "rating": {"average": round(rng.uniform(3, 5), 2), "count": rng.randint(10, 200)},
        "feedback_count": rng.randint(5, 100),
    }


def store_stats(client: redis.Redis, coach: UUID, value: dict[str, Any]) -> None:
    writer = AggregateStore(client)
    now = datetime.now(UTC)  # the notice's computed_at: when this write was made
    writer.write(
        STATS, 1, writer.next_version(coach), {coach: value}, snapshot_at=now, computed_at=now
    )


@dataclass(frozen=True)
class Target:
    """What the GET load reads: every coach's coach-stats, with an admin token."""

    coaches: list[UUID]
    admin_token: str

    def paths(self) -> list[str]:
        return [PATH.format(coach=coach) for coach in self.coaches]


def token(subject: str | None, role: str) -> str:
    claims: dict[str, Any] = {"role": role, "exp": int(time.time()) + 3600}
    if subject is not None:
        claims["sub"] = subject
    return jwt.encode(claims, SECRET, algorithm="HS256")


# --- the API process ------------------------------------------------------------------------
@dataclass
class Api:
    redis_url: str
    workers: int
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Api:
        env = os.environ | {
            "REDIS_URL": self.redis_url,
            "SUPABASE_JWT_SECRET": SECRET,
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "console",
        }
        args = [sys.executable, "-m", "uvicorn", "api.server:app_from_environment"]
        args += ["--factory", "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--workers", str(self.workers), "--no-access-log", "--log-level", "warning"]
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                args, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {self.log}")
            time.sleep(0.2)
        if self.workers > 1:  # every worker answers before the run starts
            while len(self.worker_pids()) < self.workers and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1)
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the workers, or the one process."""
        assert self.process is not None
        parent = psutil.Process(self.process.pid)
        if self.workers == 1:
            return [parent.pid]
        return [child.pid for child in parent.children() if "spawn_main" in _cmd(child)]

    def rss_mb(self) -> float:
        assert self.process is not None
        parent = psutil.Process(self.process.pid)
        members = [parent, *parent.children(recursive=True)]
        return round(float(sum(m.memory_info().rss for m in members)) / 1024 / 1024, 1)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        parent = psutil.Process(self.process.pid)
        members = [parent, *parent.children(recursive=True)]
        return float(sum(m.cpu_times().user + m.cpu_times().system for m in members))

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 15)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(5)


def _cmd(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline())
    return ""


# --- other work on the machine --------------------------------------------------------------
class OtherLoad:
    """The share of the machine's CPU that work other than this run took while a phase ran.

    This run's CPU is this process, its children (wrk, the subscriber process, once waited for)
    and its live descendants (Redis, the API and its workers); the rest is someone else's.
    """

    def __init__(self) -> None:
        self._start = self._sample()
        self.percent: float | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        system = psutil.cpu_times()
        busy = system.user + system.nice + system.system + system.irq + system.softirq
        busy += getattr(system, "steal", 0.0)
        own = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            own += usage.ru_utime + usage.ru_stime
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                own += times.user + times.system
        return float(busy), own, time.monotonic()

    def stop(self) -> float:
        busy, own, now = self._sample()
        capacity = (now - self._start[2]) * (os.cpu_count() or 1)
        other = (busy - self._start[0]) - (own - self._start[1])
        self.percent = round(max(0.0, 100 * other / capacity), 1)
        return self.percent


# --- GET throughput -------------------------------------------------------------------------
WRK_SCRIPT = """
local paths = {%(paths)s}
local i = 0
wrk.headers["Authorization"] = "Bearer %(token)s"
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"bytes\\":%%d,"
    .. "\\"connect_errors\\":%%d,\\"read_errors\\":%%d,\\"write_errors\\":%%d,"
    .. "\\"non_2xx_3xx\\":%%d,\\"timeouts\\":%%d,\\"mean_us\\":%%.1f,"
    .. "\\"p50_us\\":%%d,\\"p90_us\\":%%d,\\"p99_us\\":%%d,\\"p999_us\\":%%d,\\"max_us\\":%%d}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


def wrk_run(
    api: Api, target: Target, concurrency: int, seconds: float, work: Path
) -> dict[str, Any]:
    script = work / "auth.lua"
    paths = ", ".join(f'"{path}"' for path in target.paths())
    script.write_text(WRK_SCRIPT % {"paths": paths, "token": target.admin_token})
    cpu_before = api.cpu_seconds()
    other = OtherLoad()
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            api.base_url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    api_cpu = api.cpu_seconds() - cpu_before
    other.stop()
    match = re.search(r"WRK_JSON (\{.*\})", output)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    raw = json.loads(match.group(1))
    duration = raw["duration_us"] / 1e6
    failed = raw["non_2xx_3xx"] + raw["connect_errors"] + raw["read_errors"]
    failed += raw["write_errors"] + raw["timeouts"]
    return {
        "tool": "wrk",
        "concurrency": concurrency,
        "seconds": round(duration, 1),
        "requests": raw["requests"],
        "requests_per_s": round(raw["requests"] / duration),
        "failed": failed,
        "latency_ms": {
            "mean": round(raw["mean_us"] / 1000, 2),
            "p50": round(raw["p50_us"] / 1000, 2),
            "p90": round(raw["p90_us"] / 1000, 2),
            "p99": round(raw["p99_us"] / 1000, 2),
            "p99.9": round(raw["p999_us"] / 1000, 2),
            "max": round(raw["max_us"] / 1000, 2),
        },
        "api_cpu_us_per_request": round(api_cpu / max(raw["requests"], 1) * 1e6),
        "other_load_percent": other.percent,
    }


def httpx_run(api: Api, target: Target, concurrency: int, seconds: float) -> dict[str, Any]:
    """The fallback load generator: `concurrency` closed-loop clients (slower than wrk)."""

    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        failed = 0
        deadline = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=concurrency)
        headers = {"Authorization": f"Bearer {target.admin_token}"}
        paths = target.paths()
        async with httpx.AsyncClient(base_url=api.base_url, limits=limits, headers=headers) as http:

            async def client(offset: int) -> None:
                nonlocal failed
                i = offset
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    response = await http.get(paths[i % len(paths)])
                    latencies.append((time.perf_counter() - started) * 1000)
                    failed += response.status_code != 200
                    i += 1

            await asyncio.gather(*(client(n) for n in range(concurrency)))
        return latencies, failed

    latencies, failed = asyncio.run(run())
    summary = percentiles(latencies)
    return {
        "tool": "httpx",
        "concurrency": concurrency,
        "seconds": seconds,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds),
        "failed": failed,
        "latency_ms": {k: summary[k] for k in ("p50", "p95", "p99", "max")},
    }


# --- SSE fan-out ----------------------------------------------------------------------------
@dataclass
class StreamResults:
    latencies_ms: list[float] = field(default_factory=list)
    received: int = 0
    connected: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def subscribe_all(
    base_url: str,
    watches: list[tuple[str, str]],
    ready: EventType,
    stop: EventType,
    results: multiprocessing.Queue[dict[str, Any]],
) -> None:
    """Subscriber process: one stream per (coach, token), until `stop`; results on `results`."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    outcome = StreamResults()

    async def stream(http: httpx.AsyncClient, coach: str, bearer: str, opened: Any) -> None:
        headers = {"Authorization": f"Bearer {bearer}"}
        try:
            async with http.stream("GET", f"/coaches/{coach}/events", headers=headers) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"status {response.status_code}")
                outcome.connected += 1
                kind = ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        if kind == "status":
                            opened.release()
                        elif kind == "update":
                            received = time.time()
                            notice = orjson.loads(line[5:])
                            written = datetime.fromisoformat(notice["computed_at"]).timestamp()
                            outcome.latencies_ms.append((received - written) * 1000)
                            outcome.received += 1
        except asyncio.CancelledError:
            raise
        except Exception as error:
            outcome.failed += 1
            if len(outcome.errors) < 5:
                outcome.errors.append(f"{type(error).__name__}: {error}")
            opened.release()

    async def run() -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        timeout = httpx.Timeout(30, read=None)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as http:
            opened = asyncio.Semaphore(0)
            tasks = []
            for index, (coach, bearer) in enumerate(watches):
                tasks.append(asyncio.create_task(stream(http, coach, bearer, opened)))
                if index % 50 == 49:
                    await asyncio.sleep(0.05)  # a ramp, not a thundering herd of connects
            for _ in watches:
                await asyncio.wait_for(opened.acquire(), 60)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.1)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(run())
    except Exception as error:
        outcome.errors.append(f"{type(error).__name__}: {error}")
    results.put(asdict(outcome))


def sse_run(api: Api, client: redis.Redis, coaches: list[UUID], options: Options) -> dict[str, Any]:
    per_coach = max(1, options.subscribers // len(coaches))
    watches = [
        (str(coach), token(str(coach), "authenticated"))
        for _ in range(per_coach)
        for coach in coaches
    ]
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    results: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    subscribers = context.Process(
        target=subscribe_all, args=(api.base_url, watches, ready, stop, results), daemon=True
    )
    rss_before = api.rss_mb()
    started = time.monotonic()
    subscribers.start()
    if not ready.wait(120):
        stop.set()
        raise RuntimeError("subscribers did not connect within 120 s")
    connect_s = time.monotonic() - started
    rss_connected = api.rss_mb()

    rng = random.Random(3)
    writes: dict[UUID, int] = dict.fromkeys(coaches, 0)
    interval = 1 / options.write_rate
    total = round(options.write_rate * options.write_seconds)
    behind = 0
    other = OtherLoad()
    t0 = time.monotonic()
    for n in range(total):
        due = t0 + n * interval
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        elif pause < -0.01:
            behind += 1
        coach = coaches[n % len(coaches)]
        store_stats(client, coach, synthetic_stats(rng))
        writes[coach] += 1
    write_s = time.monotonic() - t0
    other.stop()
    time.sleep(2)  # stragglers
    stop.set()
    outcome = results.get(timeout=60)
    subscribers.join(30)

    expected = sum(writes.values()) * per_coach
    return {
        "subscribers": len(watches),
        "coaches": len(coaches),
        "subscribers_per_coach": per_coach,
        "connected": outcome["connected"],
        "stream_failures": outcome["failed"],
        "errors": outcome["errors"],
        "connect_all_s": round(connect_s, 2),
        "writes": sum(writes.values()),
        "write_rate_per_s": round(sum(writes.values()) / write_s, 1),
        "writes_behind_schedule": behind,
        "events_expected": expected,
        "events_received": outcome["received"],
        "latency_ms": percentiles(outcome["latencies_ms"]),
        "api_rss_mb": {"idle": rss_before, "with_streams": rss_connected},
        "other_load_percent": other.percent,
    }


# --- profile --------------------------------------------------------------------------------
def profile_run(
    api: Api, target: Target, concurrency: int, seconds: float, work: Path
) -> dict[str, Any] | None:
    """py-spy samples every API worker under wrk load; where their time goes, merged."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists() or shutil.which("wrk") is None:
        return None
    recorders = []
    for pid in api.worker_pids():
        raw = work / f"profile-{pid}.txt"
        command = [spy, "record", "--pid", str(pid), "--duration", str(round(seconds))]
        command += ["--rate", "200", "--format", "raw", "--output", str(raw), "--nonblocking"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        recorders.append((process, raw))
    time.sleep(0.5)
    wrk_run(api, target, concurrency, seconds, work)
    collapsed = []
    for process, raw in recorders:
        process.wait(60)
        if raw.exists():
            collapsed.append(raw.read_text())
    return summarize_profile("\n".join(collapsed)) if collapsed else None


def summarize_profile(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Self time by function and cumulative time by package, from py-spy's collapsed stacks."""
    self_time: dict[str, int] = {}
    by_area: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = re.sub(r" \(.*/site-packages/", " (", frames[-1])
        self_time[leaf] = self_time.get(leaf, 0) + count
        areas = {_area(frame) for frame in frames}
        for area in areas:
            by_area[area] = by_area.get(area, 0) + count

    def share(items: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(items.items(), key=lambda item: -item[1])[:top]
        return [(name, round(100 * count / max(total, 1), 1)) for name, count in ranked]

    return {"samples": total, "self_percent": share(self_time), "inclusive_percent": share(by_area)}


AREAS = (
    ("jwt", "PyJWT"),
    ("cryptography", "PyJWT"),
    ("redis", "redis-py"),
    ("fastapi", "FastAPI"),
    ("starlette", "Starlette"),
    ("pydantic", "pydantic"),
    ("uvicorn", "uvicorn"),
    ("coachpipe", "coachpipe"),
    ("asyncio", "asyncio"),
    ("anyio", "anyio"),
)


def _area(frame: str) -> str:
    for needle, name in AREAS:
        if f"/{needle}/" in frame or f"({needle}/" in frame:
            return name
    return "other"


# --- report ---------------------------------------------------------------------------------
def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "busy_percent_before": psutil.cpu_percent(interval=2),
    }


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Read API load run, {result['date']}",
        "",
        f"Machine: {result['machine']['nproc']} x {result['machine']['cpu_model']}, "
        f"{result['machine']['memory_gb']} GB; commit `{result['commit'][:12]}`; "
        f"uvicorn workers: {result['options']['workers']}. The load generators run on the same "
        "cores as the API and Redis.",
        "",
        f"Before the run the machine was {result['machine']['busy_percent_before']} % busy "
        f"(load average {result['machine']['load_average_1m']}); other work on the machine "
        "takes CPU from the figures below.",
        "",
        "## GET /coaches/{id}/aggregates/coach-stats (target ≥ 2,000 req/s, p99 ≤ 10 ms)",
        "",
        "| connections | req/s | p50 ms | p90 ms | p99 ms | max ms | failed "
        "| API CPU µs/req | other load % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["get"]:
        latency = run["latency_ms"]
        lines.append(
            f"| {run['concurrency']} | {run['requests_per_s']:,} | {latency['p50']} | "
            f"{latency.get('p90', '-')} | {latency['p99']} | {latency['max']} | {run['failed']} | "
            f"{run.get('api_cpu_us_per_request', '-')} | {run.get('other_load_percent', '-')} |"
        )
    sse = result["sse"]
    latency = sse["latency_ms"]
    lines += [
        "",
        f"## SSE fan-out: {sse['subscribers']:,} subscribers on {sse['coaches']} coaches",
        "",
        "| writes | writes/s | events expected | events received | p50 ms | p95 ms | p99 ms "
        "| max ms | connect all s | API RSS MB idle → streams | other load % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        f"| {sse['writes']:,} | {sse['write_rate_per_s']} | {sse['events_expected']:,} | "
        f"{sse['events_received']:,} | {latency['p50']} | {latency['p95']} | {latency['p99']} | "
        f"{latency['max']} | {sse['connect_all_s']} | {sse['api_rss_mb']['idle']} → "
        f"{sse['api_rss_mb']['with_streams']} | {sse['other_load_percent']} |",
        "",
        "Latency: `computed_at` (taken just before `AggregateStore.write`) → the subscriber "
        "process parsed the `update` event. *Other load*: CPU taken by processes outside this "
        "run during the phase, in % of the whole machine.",
    ]
    if sse["stream_failures"] or sse["errors"]:
        lines.append(f"Stream failures: {sse['stream_failures']}; {sse['errors']}")
    if result.get("profile"):
        profile = result["profile"]
        lines += [
            "",
            f"## Where the API workers spend their time ({profile['samples']} py-spy samples)",
            "",
            "| inclusive | % |",
            "|---|---:|",
            *(f"| {name} | {pct} |" for name, pct in profile["inclusive_percent"]),
            "",
            "| self (leaf function) | % |",
            "|---|---:|",
            *(f"| `{name}` | {pct} |" for name, pct in profile["self_percent"]),
        ]
    return "\n".join(lines) + "\n"


# --- the run --------------------------------------------------------------------------------
@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    root = Path(tempfile.mkdtemp(prefix="coachpipe-api-load-"))
    server = PrivateRedis(root / "redis", durable=False).start()
    try:
        yield server
    finally:
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)


def run(options: Options) -> dict[str, Any]:
    host = machine()  # first: how busy the machine is before anything of ours runs
    with private_redis() as server, tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        client = redis.Redis.from_url(server.url)
        coaches = [uuid4() for _ in range(options.coaches)]
        rng = random.Random(1)
        for coach in coaches:
            store_stats(client, coach, synthetic_stats(rng))
        target = Target(coaches, token(None, "service_role"))
        api = Api(server.url, options.workers, work / "api.log").start()
        try:
            get = []
            for concurrency in options.concurrency:
                if shutil.which("wrk"):
                    get.append(wrk_run(api, target, concurrency, options.get_seconds, work))
                else:
                    get.append(httpx_run(api, target, concurrency, options.get_seconds))
                say(f"GET c={concurrency}: {get[-1]['requests_per_s']:,} req/s")
            profile = None
            if options.profile:
                best = max(get, key=lambda r: r["requests_per_s"])["concurrency"]
                profile = profile_run(api, target, best, options.get_seconds, work)
            sse = sse_run(api, client, coaches, options)
        finally:
            api.stop()
            client.close()
    return {
        "kind": "api-load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": host,
        "options": asdict(options),
        "get": get,
        "sse": sse,
        "profile": profile,
    }


def write(result: dict[str, Any], output: str) -> tuple[Path, Path]:
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"api-{result['date'][:10]}"
    json_path = stem.with_suffix(".json")
    md_path = stem.with_suffix(".md")
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    md_path.write_text(markdown(result))
    return json_path, md_path


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench.api_load", description=__doc__)
    parser.add_argument("--workers", type=int, default=Options.workers)
    parser.add_argument("--coaches", type=int, default=Options.coaches)
    parser.add_argument("--subscribers", type=int, default=Options.subscribers)
    parser.add_argument("--write-rate", type=float, default=Options.write_rate)
    parser.add_argument("--write-seconds", type=float, default=Options.write_seconds)
    parser.add_argument("--get-seconds", type=float, default=Options.get_seconds)
    parser.add_argument(
        "--concurrency",
        default=",".join(map(str, Options.concurrency)),
        help="comma-separated wrk connection counts",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy one worker under load")
    parser.add_argument("--quick", action="store_true", help="short runs (≈30 s in all)")
    parser.add_argument("--output", default=Options.output)
    args = parser.parse_args(argv)
    options = Options(
        coaches=args.coaches,
        subscribers=args.subscribers,
        write_rate=args.write_rate,
        write_seconds=args.write_seconds,
        get_seconds=args.get_seconds,
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        workers=args.workers,
        profile=args.profile,
        output=args.output,
    )
    if args.quick:
        options = Options(
            **asdict(options) | {"write_seconds": 5.0, "get_seconds": 3.0, "concurrency": (16,)}
        )
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    result = run(options)
    json_path, md_path = write(result, options.output)
    say(markdown(result))
    say(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
