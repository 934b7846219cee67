"""`coachpipe demo` / `make demo`: the whole pipeline on this machine, visibly working.

With no DATABASE_URL / REDIS_URL it starts a private Postgres (wal_level=logical) and Redis from
local binaries under DATA_DIR (default `.data/`); with them set it uses those services. Then it
migrates, seeds, runs listener + worker + beat + Flower + the read API as real processes under
honcho, writes simulated traffic and shows a few coaches' aggregates changing live, with the
measured commit → stored latency. Ctrl-C stops every process it started.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import jwt
import psycopg
import redis
from honcho.manager import Manager
from honcho.printer import Message
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
from coachpipe.traffic import Change, ChangeWriter, pace, pick_coaches
from config import Settings, load_settings
from pipeline import keys
from pipeline.db import libpq_dsn, make_engine
from pipeline.health import HealthBoard
from pipeline.migrate import upgrade
from pipeline.read import read_all
from pipeline.seed import SeedPlan, is_empty, load
from pipeline.store import Notice
from tasks.names import QUEUES

PG_PORT, REDIS_PORT, FLOWER_PORT = 54329, 56379, 5555
SHOWN = 6
TRAFFIC_COACHES = 20


class _FilePrinter:
    """honcho printer: each process's output to DATA_DIR/logs/<name>.log, system lines kept."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.files: dict[str, TextIO] = {}
        self.system: deque[str] = deque(maxlen=4)
        self.width = 0

    def write(self, message: Message) -> None:
        data = (
            message.data.decode(errors="replace")
            if isinstance(message.data, bytes)
            else message.data
        )
        if message.name == "system":
            self.system.append(data.strip())
            return
        handle = self.files.get(message.name)
        if handle is None:
            handle = self.files[message.name] = (self.directory / f"{message.name}.log").open("a")
        handle.write(data)
        handle.flush()


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


def _demo_token(secret: str, coach: UUID) -> str:
    now = int(time.time())
    claims = {"sub": str(coach), "role": "authenticated", "iat": now, "exp": now + 7 * 86400}
    return jwt.encode(claims, secret, algorithm="HS256")


def _watch_notices(client: redis.Redis, board: _Board, stop: threading.Event) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(*(keys.updates_channel(c) for c in board.coaches))
    while not stop.is_set():
        try:
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
    client: redis.Redis, board: _Board, settings: Settings, urls: list[str], system: deque[str]
) -> Group:
    status = HealthBoard(client, stale_after_s=settings.heartbeat_stale_s).status()
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
    footer = Text("\n".join([*urls[1:], *system, "Ctrl-C stops everything."]), style="dim")
    return Group(header, table, footer)


def run_demo(*, coaches: int, rate: float, duration: float | None, console: Console) -> int:
    base = load_settings()
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
    settings = load_settings()
    try:
        return _run(settings, coaches=coaches, rate=rate, duration=duration, console=console)
    finally:
        for service in reversed(services):
            service.stop()
        console.print("stopped every process and service the demo started")


def _run(
    settings: Settings, *, coaches: int, rate: float, duration: float | None, console: Console
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
        names = dict(
            conn.execute("SELECT id, full_name FROM users WHERE id = ANY(%s)", (chosen,)).fetchall()
        )
    client = redis.Redis.from_url(settings.require_redis_url())
    board = _Board(coaches=chosen, names=names)
    token = _demo_token(settings.supabase_jwt_secret.get_secret_value(), chosen[0])  # type: ignore[union-attr]
    api = f"http://{settings.api_host}:{settings.api_port}"
    flower_port = FLOWER_PORT if not port_is_open(FLOWER_PORT) else free_port()
    urls = [
        f"dashboard: {api}/dashboard?coach={chosen[0]}#token={token}",
        f"flower:    http://127.0.0.1:{flower_port} (basic auth: FLOWER_BASIC_AUTH, demo:demo)",
        f"logs:      {Path(settings.data_dir).resolve() / 'logs'}",
    ]
    console.print("\n".join(urls))
    python = sys.executable
    printer = _FilePrinter(Path(settings.data_dir) / "logs")
    manager = Manager(printer=printer)
    cli = f"{python} -m coachpipe"
    celery = f"{python} -m celery -A tasks"
    for name, command in {
        "listener": f"{cli} listen --source postgres",
        "worker": f"{celery} worker -Q {','.join(QUEUES)} -c 2 -n demo@%h --loglevel=INFO",
        "beat": f"{celery} beat --loglevel=INFO",
        "flower": f"{celery} flower --port={flower_port} --address=127.0.0.1",
        "api": f"{cli} api",
    }.items():
        manager.add_process(name, command, env=dict(os.environ))
    stop = threading.Event()
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
                printer.system.append(f"traffic stopped: {type(error).__name__}: {error}")

    writer_thread = threading.Thread(target=traffic, daemon=True)
    writer_thread.start()
    if duration is not None:
        threading.Timer(duration, lambda: os.kill(os.getpid(), signal.SIGINT)).start()

    def live() -> None:
        with Live(console=console, refresh_per_second=4, transient=False) as view:
            while not stop.is_set():
                view.update(_view(client, board, settings, urls, printer.system))
                stop.wait(0.25)

    viewer = threading.Thread(target=live, daemon=True)
    viewer.start()
    try:
        manager.loop()
    finally:
        stop.set()
        for thread in (writer_thread, watcher, viewer):
            thread.join(10)
    console.print(f"\n{board.changes} changes written, {board.updates} aggregate updates stored")
    return 0 if manager.returncode in (None, 0, 130, 143) or duration else int(manager.returncode)
