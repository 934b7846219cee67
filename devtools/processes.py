"""Real pipeline processes for the end-to-end tests: Celery workers, beat, Flower, listeners.

Each runs as a subprocess in its own process group, logs to a file under the test's tmp dir and
is stopped (or killed) by the test. Nothing here replaces pipeline code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery

from pipeline.health import HealthBoard, ListenerState
from pipeline.redis_client import RedisClient
from tasks.names import QUEUES

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, message: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {message or predicate}")
        time.sleep(interval)


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path = Path(__file__).parent.parent
    """Where it runs (its `.env` is read from there): the checkout unless told."""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.cwd,
        )
        handle.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 30) -> int | None:
        """SIGTERM the process group and wait; SIGKILL if it does not stop in time."""
        if self.process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """kill -9 of the whole process group (main process and pool children)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def celery_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks", *args]


def start_worker(
    env: dict[str, str],
    log_dir: Path,
    *,
    name: str = "worker",
    queues: str = ",".join(QUEUES),
    pool: str = "prefork",
    concurrency: int = 2,
    broker_url: str,
    broker_options: dict[str, Any] | None = None,
    timeout: float = 40,
) -> Proc:
    """A Celery worker on `env`, returned once it answers a ping through `broker_url` (with
    kombu's `broker_options`: a `sentinel://` broker needs its `master_name`)."""
    node = f"{name}-{os.getpid()}-{time.monotonic_ns()}@{socket.gethostname()}"
    proc = Proc(
        name,
        celery_args(
            "worker",
            "-Q",
            queues,
            "-n",
            node,
            f"--pool={pool}",
            "-c",
            str(concurrency),
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
        ),
        env,
        log_dir / f"{name}.log",
    ).start()
    proc.node = node  # type: ignore[attr-defined]
    app = Celery(broker=broker_url)
    app.conf.broker_transport_options = broker_options or {}
    try:
        wait_for(
            lambda: (not proc.alive() and _raise(proc)) or app.control.ping([node], timeout=0.3),
            timeout,
            interval=0.2,
            message=f"worker {node} to answer ping",
        )
    finally:
        app.close()
    return proc


def start_listener(
    env: dict[str, str],
    log_dir: Path,
    name: str = "listener",
    *,
    source: str = "postgres",
    metrics_port: int = 0,
) -> Proc:
    """`python -m listeners SOURCE`, serving its metrics on `metrics_port` (0: none). Returns at
    once; wait with `listener_connected`."""
    env = env | {"LISTENER_METRICS_PORT": str(metrics_port)}
    return Proc(
        name, [sys.executable, "-m", "listeners", source], env, log_dir / f"{name}.log"
    ).start()


def listener_connected(client: RedisClient, proc: Proc, stale_after_s: float = 3) -> bool:
    """Whether `proc`'s listener reports itself connected on the health board in `client`."""
    board = HealthBoard(client, stale_after_s=stale_after_s)
    return any(
        h.listener_id.split(":")[1] == str(proc.pid) and h.state is ListenerState.CONNECTED
        for h in board.listeners()
    )


def start_beat(env: dict[str, str], log_dir: Path, name: str = "beat") -> Proc:
    """`celery -A tasks beat`. Returns at once."""
    return Proc(name, celery_args("beat", "--loglevel=INFO"), env, log_dir / f"{name}.log").start()


def _raise(proc: Proc) -> Any:
    raise AssertionError(f"{proc.name} exited early:\n{proc.output()[-3000:]}")


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
