"""Private Postgres and Redis servers started from local binaries.

Used by `coachpipe demo` (when no DATABASE_URL/REDIS_URL is set), by `make bench` and by the test
suite, so none of them depends on whatever services the machine happens to run.

Postgres refuses to run as root. When we are root, the server runs as the `postgres` system user
that Debian's package creates, and its data directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

PG_PACKAGES = "postgresql-15 postgresql-15-wal2json"
REDIS_PACKAGE = "redis-server"


class MissingBinaryError(RuntimeError):
    """A server binary is not installed; the message names the Debian package."""


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
EPHEMERAL_RANGE_DEFAULT = (32768, 60999)
"""Linux's default ephemeral range (`ip_local_port_range`, see ip(7)) when the file is absent."""
LISTEN_PORT_MIN = 10000
"""The lowest port `free_port` hands out: above the well-known and most registered services."""

_handed_out: set[int] = set()
_random = random.SystemRandom()  # not the global generator, which a test may have seeded


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return EPHEMERAL_RANGE_DEFAULT
    return low, high


def _listen_candidates() -> range:
    """Ports a server may be told to listen on later: outside the ephemeral range, where the
    kernel picks the local port of every outgoing connection. A port picked from there (as
    `bind(0)` does) can be taken by any connection of any process before the server binds it,
    and the server then fails with EADDRINUSE."""
    low, high = _ephemeral_range()
    below = range(LISTEN_PORT_MIN, low)
    above = range(high + 1, 65536)
    return below if len(below) >= len(above) else above


def _can_bind(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a server this process starts later: nothing is bound to it
    now, it lies outside the kernel's ephemeral range (`_listen_candidates`) and this process
    has not handed it out before. Falls back to a kernel-chosen port (`bind(0)`) when 200
    random candidates are all taken, or when the ephemeral range leaves none."""
    candidates = _listen_candidates()
    for _ in range(200 if candidates else 0):  # an ephemeral range of 10000-65535: none
        port = _random.choice(candidates)
        if port not in _handed_out and _can_bind(port):
            _handed_out.add(port)
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL server's bin directory."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise MissingBinaryError(
        f"PostgreSQL server binaries not found. Install them: apt-get install {PG_PACKAGES}"
    )


def _run_as() -> tuple[str | None, int | None, int | None]:
    """(user, uid, gid) to run Postgres as: `postgres` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None, None, None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise MissingBinaryError(
            "running as root needs the 'postgres' system user to run the server; "
            f"install {PG_PACKAGES} (it creates that user)"
        ) from exc
    return "postgres", entry.pw_uid, entry.pw_gid


@dataclass
class PrivatePostgres:
    """One private cluster: `wal_level=logical`, its own port, data dir and socket dir."""

    data_dir: Path
    port: int = 0
    database: str = "coachpipe"
    durable: bool = True
    output_plugins: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    """Extra server settings, e.g. ("shared_preload_libraries=pg_stat_statements",)."""
    log_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        if not self.port:
            self.port = free_port()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _command(self, *args: str) -> list[str]:
        return [str(postgres_bindir() / args[0]), *args[1:]]

    def _run(self, *args: str) -> None:
        user, uid, gid = _run_as()
        subprocess.run(
            self._command(*args),
            check=True,
            user=uid,
            group=gid,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.data_dir.parent,
            env={**os.environ, "LC_ALL": "C.UTF-8"} | ({"USER": user} if user else {}),
        )

    def _prepare_dirs(self) -> None:
        _, uid, gid = _run_as()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        if uid is not None and gid is not None:
            os.chmod(self.data_dir.parent, 0o755)  # noqa: S103 - the server user must traverse it
            for path in (self.data_dir, self.log_file):
                os.chown(path, uid, gid)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def running(self) -> bool:
        """True when a postmaster serves this data dir; adopts its port if it differs."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            os.kill(int(lines[0]), 0)
            port = int(lines[3])
        except (OSError, ValueError, IndexError):
            return False
        self.port = port
        return port_is_open(port)

    def start(self) -> PrivatePostgres:
        self._prepare_dirs()
        if not self.initialized():
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions",
                *(() if self.durable else ("--no-sync",)),
            )  # fmt: skip
        if not self.running():
            options = [
                f"-p {self.port}",
                f"-k {self.data_dir}",
                "-c listen_addresses=127.0.0.1",
                "-c wal_level=logical",
                "-c max_replication_slots=20",
                "-c max_wal_senders=20",
                "-c max_connections=200",
                "-c shared_buffers=256MB",
                "-c TimeZone=UTC",
            ]
            options += self._output_plugin_options()
            options += [f"-c {setting}" for setting in self.settings]
            if not self.durable:
                options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            self._run(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
                "-o", " ".join(options), "start",
            )  # fmt: skip
        self._create_database()
        return self

    def _output_plugin_options(self) -> list[str]:
        """Allow extra logical decoding plugins (e.g. wal2json) where the server restricts them.

        Some PostgreSQL builds only let REPLICATION users name the plugins listed in
        `output_plugin_libraries`; upstream servers have no such setting, so it is only set
        where `postgres --describe-config` knows it.
        """
        if not self.output_plugins:
            return []
        described = subprocess.run(
            [str(postgres_bindir() / "postgres"), "--describe-config"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if "output_plugin_libraries" not in described:
            return []
        allowed = ", ".join(("pgoutput", "test_decoding", *self.output_plugins))
        return [f"-c output_plugin_libraries='{allowed}'"]

    def _create_database(self) -> None:
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self) -> None:
        if self.initialized() and (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)


@dataclass
class PrivateRedis:
    """One private redis-server on its own port, keeping its files in `data_dir`."""

    data_dir: Path
    port: int = 0
    durable: bool = True
    options: tuple[str, ...] = ()
    """More `redis-server` options (`--cluster-enabled`, `yes`, …)."""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        if not self.port:
            self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise MissingBinaryError(
                f"redis-server not found. Install it: apt-get install {REDIS_PACKAGE}"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if port_is_open(self.port) and self._answers():
            return self
        persistence = ["--appendonly", "yes"] if self.durable else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--save",
                "",
                *persistence,
                "--pidfile",
                str(self.pid_file),
                "--logfile",
                str(self.data_dir / "redis.log"),
                "--daemonize",
                "no",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.data_dir / 'redis.log'}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
        elif self.pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(self.pid_file.read_text().strip()), signal.SIGTERM)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
