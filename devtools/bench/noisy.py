"""A noisy neighbour: a process that burns a given share of one core, so figures under
contention (another program on a 2-core machine) are reproducible.

`python -m devtools.bench.noisy 0.5` burns half a core until it is stopped: in each 10 ms
period it spins until it has used its share of CPU time (or the period is over, when the
machine does not give it that much), then sleeps the rest of the period.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil

PERIOD_S = 0.01


def burn(share: float, period_s: float = PERIOD_S) -> None:
    busy_s = share * period_s
    while True:
        started = time.monotonic()
        cpu = time.process_time()
        while time.process_time() - cpu < busy_s and time.monotonic() - started < period_s:
            pass
        rest = period_s - (time.monotonic() - started)
        if rest > 0:
            time.sleep(rest)


@dataclass
class NoisyNeighbour:
    """Runs `burn(share)` in a child process from `start` to `stop`."""

    share: float
    _proc: subprocess.Popen[bytes] | None = None
    _started: float = 0.0
    cpu_s: float = field(default=0.0, init=False)
    seconds: float = field(default=0.0, init=False)

    def start(self) -> NoisyNeighbour:
        if not 0 < self.share <= 1:
            raise ValueError(
                f"a noisy neighbour burns a share of one core in (0, 1], not {self.share}"
            )
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.bench.noisy", str(self.share)]
        )
        self._started = time.monotonic()
        return self

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            times = psutil.Process(self._proc.pid).cpu_times()
            self.cpu_s = times.user + times.system
        except psutil.NoSuchProcess:
            pass
        self.seconds = time.monotonic() - self._started
        self._proc.terminate()
        self._proc.wait(10)
        self._proc = None

    def as_json(self) -> dict[str, float]:
        """The share asked for and the share of one core it actually used over the run."""
        achieved = self.cpu_s / self.seconds if self.seconds else 0.0
        return {"share": self.share, "achieved_share": round(achieved, 3)}


if __name__ == "__main__":
    burn(float(sys.argv[1]))
