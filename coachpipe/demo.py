"""`coachpipe demo` / `make demo`: the whole pipeline on this machine, visibly working.

With no DATABASE_URL / REDIS_URL it starts a private Postgres (wal_level=logical) and Redis from
local binaries under DATA_DIR (default `.data/`); with them set it uses those services. Then it
migrates, seeds, runs listener + worker + beat + Flower + the read API as real processes
(`coachpipe.supervisor`), writes simulated traffic and shows a few coaches' aggregates changing
live, with the measured commit → stored latency.

While it runs, `.data/demo.env` holds its settings, so `coachpipe status` (or any command) in
another terminal reaches the demo's services. A component that exits is shown in the live view
while the others go on; `l` stops or starts the listener (to watch the fallback polling), `q`
quits. Ctrl-C, SIGTERM or closing the terminal (SIGHUP) stops every process and service it
started; a previous demo's leftovers (found through `DATA_DIR/demo.pid`) are stopped first.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import jwt
import psycopg
import redis
from pydantic import SecretStr
from redis.cluster import ClusterPubSub
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from coachpipe.embedded import (
    MissingBinaryError,
    PrivatePostgres,
    PrivateRedis,
    free_port,
    port_is_open,
)
from coachpipe.supervisor import Supervisor, wait_gone
from coachpipe.traffic import Change, ChangeWriter, pace, pick_coaches
from config import Settings, load_settings
from config.settings import DEMO_ENV_FILE
from pipeline import keys
from pipeline.db import libpq_dsn, make_engine
from pipeline.health import HealthBoard
from pipeline.migrate import upgrade
from pipeline.read import read_all
from pipeline.redis_client import RedisClient, connect
from pipeline.seed import SeedPlan, is_empty, load
from pipeline.store import Notice
from tasks.names import QUEUES

PG_PORT, REDIS_PORT, FLOWER_PORT = 54329, 56379, 5555
SHOWN = 6
TRAFFIC_COACHES = 20


@dataclass
class _Board:
    """What the live view shows, updated by the notice listener and the traffic thread."""

    coaches: list[UUID]
    names: dict[UUID, str] = field(default_factory=dict)
    latency_ms: dict[UUID, float] = field(default_factory=dict)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=500))
    changes: int = 0
    updates: int = 0


def _start_services(settings: Settings, console: Console) -> tuple[dict[str, str], list[Any]]:
    env: dict[str, str] = {}
    started: list[Any] = []
    data = Path(settings.data_dir)
    if settings.database_url is None:
        console.print(f"starting a private Postgres in {data / 'pg'} (wal_level=logical) …")
        pg = PrivatePostgres(data / "pg", port=PG_PORT if not port_is_open(PG_PORT) else 0)
        env["DATABASE_URL"] = pg.start().url
        started.append(pg)
    if settings.redis_url is None:
        console.print(f"starting a private Redis in {data / 'redis'} …")
        server = PrivateRedis(
            data / "redis", port=REDIS_PORT if not port_is_open(REDIS_PORT) else 0
        )
        server.start()
        env["REDIS_URL"] = server.url
        env.setdefault("BROKER_URL", server.url.rsplit("/", 1)[0] + "/1")
        started.append(server)
    return env, started


def _demo_token(secret: str, coach: UUID, name: str) -> str:
    """A token shaped like Supabase Auth's (the profile in `user_metadata`), valid 1 day."""
    now = int(time.time())
    claims = {
        "sub": str(coach),
        "role": "authenticated",
        "aud": "authenticated",
        "iat": now,
        "exp": now + 86400,
        "user_metadata": {"full_name": name},
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def dashboard_url(api: str, coach: UUID, secret: SecretStr | None, name: str = "") -> str:
    """The dashboard of `coach`, signed in with a demo token when the project secret is known.

    A project verified by its JWKS only (no SUPABASE_JWT_SECRET) cannot get a token from us.
    """
    page = f"{api}/dashboard?coach={coach}"
    if secret is None:
        return f"{page} (sign in with an access token of the project)"
    return f"{page}#token={_demo_token(secret.get_secret_value(), coach, name)}"


def _watch_notices(client: RedisClient, board: _Board, stop: threading.Event) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    channels = [keys.updates_channel(c) for c in board.coaches]
    sharded = isinstance(pubsub, ClusterPubSub)  # a Cluster's notices are sharded (store)
    if sharded:
        pubsub.ssubscribe(*channels)
    else:
        pubsub.subscribe(*channels)
    while not stop.is_set():
        try:
            if sharded:
                message = pubsub.get_sharded_message(timeout=0.5)
            else:
                message = pubsub.get_message(timeout=0.5)
        except redis.RedisError:
            stop.wait(1)
            continue
        if message is None:
            continue
        notice = Notice.decode(message["data"])
        board.updates += 1
        if notice.commit_ms is not None:
            stored = datetime.fromisoformat(notice.computed_at).timestamp() * 1000
            latency = max(stored - notice.commit_ms, 0)
            board.latency_ms[UUID(notice.coach_id)] = latency
            board.recent.append(latency)
    pubsub.close()


def _view(
    client: RedisClient,
    board: _Board,
    settings: Settings,
    urls: list[str],
    supervisor: Supervisor,
) -> Group:
    status = HealthBoard.from_settings(client, settings).status()
    colour = {"green": "green", "yellow": "yellow", "red": "red"}[status.color.value]
    table = Table(
        "coach", "completed", "upcoming", "rating", "clients", "latest activity", "version",
        "commit → stored", title="Coach dashboards, live from Redis", expand=True,
    )  # fmt: skip
    for coach in board.coaches[:SHOWN]:
        found = read_all(client, coach) or {}
        stats = found.get("coach-stats")
        activity = found.get("coach-activity")
        latest = activity.value["items"][0] if activity and activity.value["items"] else None
        latency = board.latency_ms.get(coach)
        table.add_row(
            board.names.get(coach, str(coach)[:8]),
            str(stats.value["sessions"]["completed"]) if stats else "…",
            str(stats.value["upcoming"]) if stats else "…",
            str(stats.value["rating"]["average"]) if stats else "…",
            str(stats.value["clients"]["total"]) if stats else "…",
            f"{latest['kind']} {latest.get('status', latest.get('rating', ''))}" if latest else "-",
            str(max((s.version for s in found.values()), default="-")),
            f"{latency:.0f} ms" if latency is not None else "-",
        )
    recent = sorted(board.recent)
    summary = "-"
    if recent:
        p50, p99 = recent[len(recent) // 2], recent[min(len(recent) - 1, int(len(recent) * 0.99))]
        summary = f"p50 {p50:.0f} ms, p99 {p99:.0f} ms over the last {len(recent)} updates"
    header = Text.from_markup(
        f"realtime: [bold {colour}]{status.color.value}[/] — {status.reason}   "
        f"changes written: {board.changes}   stored updates: {board.updates}   latency: {summary}"
    )
    processes = Text("components: ")
    for name, component in supervisor.components.items():
        state = component.state()
        processes.append(f"{name} ", style="bold")
        processes.append(f"{state}   ", style="green" if state == "running" else "bold red")
    footer = Text(
        "\n".join(
            [
                *urls[1:],
                "keys: l stops/starts the listener, q quits (or Ctrl-C)",
            ]
        ),
        style="dim",
        no_wrap=True,
        overflow="ellipsis",
    )
    return Group(header, processes, table, footer)


def _pid_file(settings: Settings) -> Path:
    return Path(settings.data_dir) / "demo.pid"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _stop_leftovers(settings: Settings, console: Console) -> None:
    """Stop what an earlier demo left running (its pid file names it): the demo itself if it is
    still alive (it then stops its own processes and services), else its orphaned processes,
    then the private Postgres and Redis that serve DATA_DIR."""
    path = _pid_file(settings)
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = {}
    demo = recorded.get("pid")
    if isinstance(demo, int) and demo != os.getpid() and "coachpipe" in _cmdline(demo):
        console.print(f"a previous `coachpipe demo` (pid {demo}) is still running: stopping it …")
        os.kill(demo, signal.SIGTERM)
        if not wait_gone(demo, 30):
            os.kill(demo, signal.SIGKILL)
            wait_gone(demo, 10)
    for pid in recorded.get("children", []):
        if isinstance(pid, int) and _cmdline(pid):
            console.print(
                f"stopping a previous demo's process {pid}: {_cmdline(pid)[:60]}",
                soft_wrap=True,
                highlight=False,
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            if not wait_gone(pid, 10):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                wait_gone(pid, 10)  # the leader's sockets (the API's port) close when it is gone
    data = Path(settings.data_dir)
    if settings.database_url is None and PrivatePostgres(data / "pg").running():
        console.print(f"stopping a previous demo's Postgres in {data / 'pg'}")
        PrivatePostgres(data / "pg").stop()
    leftover_redis = PrivateRedis(data / "redis")
    if settings.redis_url is None and leftover_redis.pid_file.exists():
        try:
            pid = int(leftover_redis.pid_file.read_text().strip())
        except ValueError:
            pid = 0
        if pid and "redis-server" in _cmdline(pid):
            console.print(f"stopping a previous demo's Redis (pid {pid})")
            os.kill(pid, signal.SIGTERM)
            wait_gone(pid, 10)
    path.unlink(missing_ok=True)
    Path(DEMO_ENV_FILE).unlink(missing_ok=True)
    (data / "demo.env").unlink(missing_ok=True)


def _write_pid_file(settings: Settings, children: list[int]) -> None:
    _pid_file(settings).write_text(json.dumps({"pid": os.getpid(), "children": children}))


def _write_demo_env(settings: Settings, env: dict[str, str]) -> Path:
    """The demo's service settings where the CLI finds them (`config.settings.DEMO_ENV_FILE`
    for the default DATA_DIR; another DATA_DIR gets its own file, to source by hand)."""
    default = Path(settings.data_dir).resolve() == Path(DEMO_ENV_FILE).parent.resolve()
    path = Path(DEMO_ENV_FILE) if default else Path(settings.data_dir) / "demo.env"
    lines = [f"{name}={value}" for name, value in sorted(env.items())]
    path.write_text("# written by a running `coachpipe demo`; removed when it stops\n")
    with path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def run_demo(*, coaches: int, rate: float, duration: float | None, console: Console) -> int:
    # Not the demo's own settings file: it names the services of the demo this one replaces.
    base = load_settings(_env_file=".env")
    Path(base.data_dir).mkdir(parents=True, exist_ok=True)
    _stop_leftovers(base, console)
    _write_pid_file(base, [])
    stopping = threading.Event()

    def hang_up(signum: int, _frame: object) -> None:
        # Closing the terminal (SIGHUP) or SIGTERM ends the demo as Ctrl-C does, once: a
        # second signal must not interrupt the shutdown it started halfway.
        if stopping.is_set():
            return
        stopping.set()
        raise KeyboardInterrupt

    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, hang_up)
    demo_env: Path | None = None
    services: list[Any] = []
    try:
        try:
            env, services = _start_services(base, console)
        except MissingBinaryError as error:
            console.print(f"[red]coachpipe demo:[/] {error}")
            return 1
        os.environ.update(env)
        os.environ.setdefault("LOG_FORMAT", "console")
        os.environ.setdefault("FLOWER_BASIC_AUTH", "demo:demo")
        if not os.environ.get("SUPABASE_JWT_SECRET") and not os.environ.get("SUPABASE_JWKS_URL"):
            os.environ["SUPABASE_JWT_SECRET"] = secrets.token_urlsafe(32)
        shared = {
            name: os.environ[name]
            for name in ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "SUPABASE_JWT_SECRET")
            if name in os.environ
        }
        demo_env = _write_demo_env(base, shared)
        settings = load_settings(_env_file=".env")
        return _run(
            settings,
            coaches=coaches,
            rate=rate,
            duration=duration,
            console=console,
            demo_env=demo_env,
            stopping=stopping,
        )
    except KeyboardInterrupt:
        return 0
    except OSError:
        if not stopping.is_set():
            raise
        return 0  # the terminal went away (SIGHUP) while the view was drawn
    finally:
        stopping.set()  # from here on, signals no longer interrupt (see hang_up)
        for service in reversed(services):
            service.stop()
        if demo_env is not None:
            demo_env.unlink(missing_ok=True)
        _pid_file(base).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
            console.print("stopped every process and service the demo started")


def _keys(supervisor: Supervisor, stop: threading.Event) -> None:
    """`l` toggles the listener, `q` quits; only when stdin is a terminal."""
    if not sys.stdin.isatty():
        return
    fd = sys.stdin.fileno()
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        return
    try:
        tty.setcbreak(fd)
        while not stop.is_set():
            readable, _, _ = select.select([fd], [], [], 0.25)
            if not readable:
                continue
            key = os.read(fd, 1)
            if key == b"l":
                supervisor.toggle("listener")
            elif key == b"q":
                os.kill(os.getpid(), signal.SIGINT)
                return
            elif key == b"":
                raise OSError("the terminal was closed")
    except OSError:
        # The window closed. The kernel sends SIGHUP to the terminal's session leader only,
        # and under `make demo` that is make, which waits for its children instead of passing
        # the signal on: end the demo as SIGHUP would.
        if not stop.is_set():
            os.kill(os.getpid(), signal.SIGHUP)
        return
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _run(
    settings: Settings,
    *,
    coaches: int,
    rate: float,
    duration: float | None,
    console: Console,
    demo_env: Path,
    stopping: threading.Event,
) -> int:
    database_url = settings.require_database_url()
    engine = make_engine(database_url)
    upgrade(engine, settings.publication_name)
    engine.dispose()
    dsn = libpq_dsn(database_url)
    if is_empty(dsn):
        console.print(f"seeding {coaches} coaches …")
        load(dsn, SeedPlan(coaches=coaches))
    with psycopg.connect(dsn, autocommit=True) as conn:
        chosen = pick_coaches(conn, TRAFFIC_COACHES, seed=7)
        names: dict[UUID, str] = dict(
            conn.execute("SELECT id, full_name FROM users WHERE id = ANY(%s)", (chosen,)).fetchall()
        )
    client = connect(settings.require_redis_url())
    board = _Board(coaches=chosen, names=names)
    api = f"http://{settings.api_host}:{settings.api_port}"
    flower_port = FLOWER_PORT if not port_is_open(FLOWER_PORT) else free_port()
    logs = Path(settings.data_dir).resolve() / "logs"
    urls = [
        "dashboard: "
        + dashboard_url(api, chosen[0], settings.supabase_jwt_secret, names.get(chosen[0], "")),
        f"flower:    http://127.0.0.1:{flower_port} (basic auth: FLOWER_BASIC_AUTH, demo:demo)",
        f"logs:      {logs}",
        f"CLI:       .venv/bin/coachpipe status (it reads {demo_env} while the demo runs)",
    ]
    for line in urls:  # one line each, never wrapped: the URL must stay copyable
        console.print(line, soft_wrap=True, highlight=False)
    python = sys.executable
    supervisor = Supervisor(
        logs, lambda line: console.print(line, soft_wrap=True, highlight=False, style="dim")
    )
    cli = [python, "-m", "coachpipe"]
    celery = [python, "-m", "celery", "-A", "tasks"]
    components = {
        "listener": [*cli, "listen", "--source", "postgres"],
        "worker": [*celery, "worker", "-Q", ",".join(QUEUES), "-c", "2", "-n", "demo@%h",
                   "--loglevel=INFO"],
        "beat": [*celery, "beat", "--loglevel=INFO"],
        "flower": [*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1"],
        "api": [*cli, "api"],
    }  # fmt: skip
    for name, args in components.items():
        supervisor.add(name, args, dict(os.environ))
    stop = threading.Event()
    try:
        supervisor.start_all()
        _write_pid_file(settings, supervisor.pids())
        watcher = threading.Thread(target=_watch_notices, args=(client, board, stop), daemon=True)
        watcher.start()

        def traffic() -> None:
            def counted(change: Change) -> None:
                board.changes += 1

            if stop.wait(3):  # let the listener subscribe first
                return
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    writer = ChangeWriter(conn, chosen, seed=int(time.time()))
                    pace(
                        writer.write,
                        rate=rate,
                        duration=duration or 10**9,
                        on_change=counted,
                        stop=stop,
                    )
            except psycopg.Error as error:
                if not stop.is_set():
                    supervisor.announce(f"traffic stopped: {type(error).__name__}: {error}")

        writer_thread = threading.Thread(target=traffic, daemon=True)
        writer_thread.start()
        keys_thread = threading.Thread(target=_keys, args=(supervisor, stop), daemon=True)
        keys_thread.start()
        ends = None if duration is None else time.monotonic() + duration
        with Live(console=console, refresh_per_second=4, transient=False) as view:
            while not stopping.is_set() and (ends is None or time.monotonic() < ends):
                supervisor.poll()
                _write_pid_file(settings, supervisor.pids())
                view.update(_view(client, board, settings, urls, supervisor))
                stopping.wait(0.25)
    finally:
        stopping.set()  # a signal from here on must not interrupt the shutdown (see hang_up)
        stop.set()
        supervisor.stop_all()
    console.print(f"\n{board.changes} changes written, {board.updates} aggregate updates stored")
    return 0
