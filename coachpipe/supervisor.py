"""The demo's process supervisor: named components that start, stop and exit on their own.

honcho (which the demo used before) ends every process as soon as one exits; the demo must
instead keep the others running when one stops, so that "stop the listener and watch the
fallback polling" can be shown. Each component runs in its own session (a terminal's Ctrl-C
or hang-up reaches only the demo, which then stops them in order) and writes to a rotated log
file (`logging.handlers.RotatingFileHandler`: `LOG_BACKUPS` files of `LOG_MAX_BYTES`).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
STOP_TIMEOUT_S = 10.0


@dataclass
class Component:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    stopped_on_request: bool = False
    exit_code: int | None = None
    _pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def state(self) -> str:
        """`running`, `stopped` (on request) or `exited N` (on its own)."""
        if self.process is not None and self.process.poll() is None:
            return "running"
        if self.stopped_on_request:
            return "stopped"
        return f"exited {self.exit_code}" if self.exit_code is not None else "not started"


class Supervisor:
    def __init__(self, logs: Path, announce: Callable[[str], None]) -> None:
        """`announce` receives one line per lifecycle event (started, stopped, exited)."""
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = logs
        self.components: dict[str, Component] = {}
        self._announce = announce

    def announce(self, line: str) -> None:
        """Say `line`; a terminal that went away (EIO) must not stop the supervisor halfway."""
        with contextlib.suppress(OSError):
            self._announce(line)

    def add(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.components[name] = Component(name, args, env, self.logs / f"{name}.log")

    def start(self, name: str) -> None:
        component = self.components[name]
        if component.process is not None and component.process.poll() is None:
            return
        component.process = subprocess.Popen(
            component.args,
            env=component.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        component.stopped_on_request = False
        component.exit_code = None
        component._pump = threading.Thread(
            target=_pump, args=(component,), name=f"log-{name}", daemon=True
        )
        component._pump.start()
        self.announce(f"{name} started (pid {component.process.pid})")

    def start_all(self) -> None:
        for name in self.components:
            self.start(name)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the component's process group, SIGKILL after `timeout` seconds."""
        component = self.components[name]
        process = component.process
        if process is None or process.poll() is not None:
            return
        component.stopped_on_request = True
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        component.exit_code = process.returncode
        self.announce(f"{name} stopped")

    def toggle(self, name: str) -> None:
        if self.components[name].state() == "running":
            self.stop(name)
        else:
            self.start(name)

    def stop_all(self) -> None:
        for name in reversed(list(self.components)):
            self.stop(name)

    def poll(self) -> list[Component]:
        """Components that exited on their own since the last poll (recorded, not restarted)."""
        exited = []
        for component in self.components.values():
            process = component.process
            if process is None or component.stopped_on_request or component.exit_code is not None:
                continue
            code = process.poll()
            if code is not None:
                component.exit_code = code
                self.announce(f"{component.name} exited with code {code}; see {component.log}")
                exited.append(component)
        return exited

    def pids(self) -> list[int]:
        return [c.pid for c in self.components.values() if c.pid is not None]


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _pump(component: Component) -> None:
    """Copy the component's output to its rotated log file until it closes its stdout."""
    handler = logging.handlers.RotatingFileHandler(
        component.log, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    process = component.process
    assert process is not None and process.stdout is not None
    try:
        for raw in process.stdout:
            handler.emit(
                logging.LogRecord(
                    component.name, logging.INFO, "", 0, raw.decode(errors="replace").rstrip("\n"),
                    None, None,
                )
            )  # fmt: skip
    finally:
        handler.close()


def wait_gone(pid: int, timeout: float) -> bool:
    """True once no process runs as `pid` (polled every 0.1 s), False after `timeout` seconds.

    A zombie counts as gone: it holds no socket or file any more, and an orphan whose new
    parent never reaps it (a container's init that is not one) stays a zombie for good."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if _is_zombie(pid):
            return True
        time.sleep(0.1)
    return False


def _is_zombie(pid: int) -> bool:
    """State `Z` in /proc/PID/stat (proc(5)); the state follows the parenthesised command name,
    which may itself hold spaces and parentheses."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] == "Z"
