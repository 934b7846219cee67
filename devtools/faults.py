"""Faults on a schedule, for the chaos test and the chaos benchmarks: SIGKILL a pipeline
process and start it again, restart or pause Redis; each over after its own delay.

A `Fault` takes a component down when its moment comes and returns what brings it back; the
`FaultSchedule` calls that `down_for` seconds later, on a timer, so faults may overlap as they
do in production (a worker restarting while Redis is still down).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from coachpipe.embedded import PrivateRedis
from devtools.processes import Proc

Recover = Callable[[], object]
Inject = Callable[[], Recover]


@dataclass
class Fault:
    at: float
    """Seconds after the schedule starts."""
    name: str
    inject: Inject
    down_for: float
    """Seconds between the fault and the recovery `inject` returned."""
    started: float | None = None
    over: float | None = None
    """When the fault began and ended (time.time()), once they happened."""


@dataclass
class FaultSchedule:
    faults: list[Fault]
    began: float = 0.0
    _timers: list[threading.Thread] = field(default_factory=list)

    def run(self) -> None:
        """Inject every fault at its moment, then wait until every one is over."""
        self.began = time.time()
        for fault in sorted(self.faults, key=lambda f: f.at):
            time.sleep(max(0.0, self.began + fault.at - time.time()))
            fault.started = time.time()
            recover = fault.inject()
            timer = threading.Thread(target=self._recover, args=(fault, recover), daemon=True)
            timer.start()
            self._timers.append(timer)
        for timer in self._timers:
            timer.join()

    @staticmethod
    def _recover(fault: Fault, recover: Recover) -> None:
        time.sleep(fault.down_for)
        recover()
        fault.over = time.time()

    def last_over(self) -> float:
        """When the last fault ended (time.time())."""
        return max(fault.over or 0.0 for fault in self.faults)

    def summary(self) -> str:
        """`name at +t s for d s`, in order: what happened, to read beside the logs."""
        return ", ".join(
            f"{fault.name} at +{(fault.started or 0) - self.began:.1f} s "
            f"for {(fault.over or 0) - (fault.started or 0):.1f} s"
            for fault in self.faults
        )

    def on_failure(self, seed: int) -> Callable[[str], str]:
        """A message maker naming the seed and the schedule, for an assertion that failed."""
        return lambda message: f"{message}\nseed {seed}; faults: {self.summary()}"


@dataclass
class Restartable:
    """A pipeline process that a fault kills (SIGKILL of its process group) and starts again
    with the same command, environment and log."""

    proc: Proc
    kills: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def kill_and_restart(self) -> Recover:
        """SIGKILL; the recovery starts the process unless it runs already. Faults on one
        process may overlap (killed again while down): each recovery then finds it started
        by the first one, and only one process runs, never an orphan."""
        with self._lock:
            self.proc.kill()
            self.kills += 1
        return self._start_unless_running

    def stop(self) -> None:
        """No recovery starts the process from now on: a run cut short (SIGTERM) stops its
        processes while recovery timers still sleep, and one waking later would start an
        orphan that outlives the stack."""
        with self._lock:
            self._stopped = True

    def _start_unless_running(self) -> None:
        with self._lock:
            if not self._stopped and not self.proc.alive():
                self.proc.start()


def restart_redis(server: PrivateRedis, *, keep_data: bool = False) -> Inject:
    """Stop `server`; the recovery starts it again on the same port. `keep_data`: save a
    snapshot on the way down (SHUTDOWN SAVE), as a Redis with persistence does, even one
    started without it."""

    def inject() -> Recover:
        if keep_data:
            with contextlib.suppress(redis.RedisError):
                redis.Redis(port=server.port).shutdown(save=True)
        server.stop()
        return server.start

    return inject


def pause_redis(server: PrivateRedis) -> Inject:
    """SIGSTOP `server` (connections stay open, nothing answers); the recovery is SIGCONT."""

    def signal_server(signum: int) -> None:
        assert server.process is not None, "only a Redis this process started can be paused"
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.process.pid, signum)

    def inject() -> Recover:
        signal_server(signal.SIGSTOP)
        return lambda: signal_server(signal.SIGCONT)

    return inject
