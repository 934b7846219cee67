"""Where the processes' metrics endpoints listen, and what a taken port does."""

from __future__ import annotations

from pathlib import Path

import httpx

from coachpipe.embedded import free_port
from devtools.processes import running, start_listener, wait_for


def test_a_second_listener_on_a_taken_metrics_port_runs_without_metrics(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    first = start_listener(service_env, tmp_path, "listener-1", metrics_port=port)
    with running(first):
        wait_for(lambda: _answers(port), 30, interval=0.2, message="the first metrics endpoint")
        second = start_listener(service_env, tmp_path, "listener-2", metrics_port=port)
        with running(second):
            wait_for(lambda: "metrics_port_taken" in second.output(), 30, interval=0.2)
            assert second.alive() and "Traceback" not in second.output()
            assert "Errno 98" not in second.output().split("metrics_port_taken")[0]


def test_metrics_bind_loopback_unless_told(service_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    listener = start_listener(service_env, tmp_path, "listener", metrics_port=port)
    with running(listener):
        wait_for(lambda: _answers(port), 30, interval=0.2, message="the metrics endpoint")
        bound = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
        listening = [line.split() for line in bound.splitlines()[1:]]
        ours = [f[1] for f in listening if f[3] == "0A" and f[1].endswith(f":{port:04X}")]
        assert ours == [f"0100007F:{port:04X}"], ours  # 127.0.0.1 only


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
