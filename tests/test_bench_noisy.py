"""The bench's noisy neighbour burns CPU in its own process until it is stopped."""

from __future__ import annotations

import psutil
import pytest

from devtools.bench.noisy import NoisyNeighbour
from devtools.processes import wait_for


def test_the_noisy_neighbour_burns_cpu_until_stopped() -> None:
    noisy = NoisyNeighbour(0.2).start()
    assert noisy.pid is not None
    process = psutil.Process(noisy.pid)
    try:
        wait_for(lambda: sum(process.cpu_times()[:2]) > 0.1, 30, message="CPU to be burnt")
    finally:
        noisy.stop()
    assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    assert noisy.as_json()["share"] == 0.2
    assert noisy.as_json()["achieved_share"] > 0


@pytest.mark.parametrize("share", [0, -0.5, 1.5])
def test_a_share_outside_one_core_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share of one core"):
        NoisyNeighbour(share).start()
