"""`coachpipe demo` on the embedded default: everything up, numbers change, nothing left over."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from coachpipe.embedded import free_port
from config import Settings


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="coachpipe-demo-"))
    path.chmod(0o755)  # the private Postgres runs as `postgres` when the tests run as root
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ours(data_dir: Path) -> list[str]:
    """Processes still running that the demo started (by their command line)."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        try:
            line = " ".join(process.info["cmdline"] or [])
            environ = process.info["environ"] or {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if str(data_dir) in line or environ.get("DATA_DIR") == str(data_dir):
            found.append(line)
    return found


def test_demo_runs_the_whole_pipeline_and_leaves_no_process(data_dir: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in {n.upper() for n in Settings.model_fields}
    }
    env |= {
        "DATA_DIR": str(data_dir),
        "API_PORT": str(free_port()),
        "TERM": "dumb",
        "COLUMNS": "160",
    }
    result = subprocess.run(
        [sys.executable, "-m", "coachpipe", "demo", "--coaches", "20", "--rate", "20", "--duration", "30"],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "starting a private Postgres" in output and "seeding 20 coaches" in output
    assert "/dashboard?coach=" in output
    summary = re.search(r"(\d+) changes written, (\d+) aggregate updates stored", output)
    assert summary is not None, output[-2000:]
    changes, updates = int(summary[1]), int(summary[2])
    assert changes > 100 and updates > changes  # each change recomputes several aggregates
    assert "commit → stored" in output and " ms" in output
    logs = data_dir / "logs"
    assert {p.name for p in logs.iterdir()} >= {
        "listener.log",
        "worker.log",
        "beat.log",
        "flower.log",
        "api.log",
    }
    assert "Traceback" not in (logs / "listener.log").read_text()
    assert ours(data_dir) == []


def test_a_zombie_counts_as_gone() -> None:
    """An orphan whose new parent never reaps it (this sandbox's init does not) stays a zombie:
    the next demo waited its full grace period on each of a killed demo's processes."""
    from coachpipe.supervisor import wait_gone

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    pid = child.pid
    try:
        assert wait_gone(pid, 30)  # exited but not yet reaped: a zombie
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        child.wait()
    assert not wait_gone(os.getpid(), 0.3)


def _demo_env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in {n.upper() for n in Settings.model_fields}
    }
    return env | {"DATA_DIR": str(data_dir), "API_PORT": str(free_port()), "TERM": "dumb"}


def _start_demo(
    cwd: Path, env: dict[str, str], output: Path, *args: str
) -> subprocess.Popen[bytes]:
    with output.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "coachpipe", "demo", "--coaches", "10", "--rate", "10", *args],
            cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def test_demo_survives_a_component_exit_cleans_up_after_kill_and_hang_up(data_dir: Path) -> None:
    from devtools.processes import wait_for

    tmp_path, data_dir = data_dir, data_dir / ".data"
    env = _demo_env(data_dir)
    output = tmp_path / "demo.out"
    demo_env = data_dir / "demo.env"

    first = _start_demo(tmp_path, env, output)
    wait_for(lambda: demo_env.exists() and len(_children(data_dir)) == 5, 120)
    # The CLI finds the running demo's services through .data/demo.env (cwd-relative).
    status = subprocess.run(
        [sys.executable, "-m", "coachpipe", "status", "--json"],
        cwd=tmp_path, env=_demo_env(data_dir) | {"DATA_DIR": ".data"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    assert "DATABASE_URL" not in status.stdout

    # One component exits: the demo goes on and says so.
    listener = json.loads((data_dir / "demo.pid").read_text())["children"][0]
    os.kill(listener, signal.SIGTERM)
    wait_for(lambda: "listener exited" in output.read_text(), 60)
    assert first.poll() is None

    # The demo dies without cleaning up: the next one stops the leftovers first.
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert ours(data_dir) != []
    second = _start_demo(tmp_path, env, output, "--duration", "15")
    assert second.wait(timeout=240) == 0, output.read_text()[-3000:]
    text = output.read_text()
    assert "stopping a previous demo's Postgres" in text
    assert "stopping a previous demo's Redis" in text
    assert "address already in use" not in (data_dir / "logs" / "api.log").read_text()
    assert ours(data_dir) == []

    # Closing the terminal (SIGHUP to the process group) ends it like Ctrl-C.
    third = _start_demo(tmp_path, env, output)
    wait_for(lambda: demo_env.exists() and len(_children(data_dir)) == 5, 120)
    os.killpg(third.pid, signal.SIGHUP)
    assert third.wait(timeout=120) == 0
    assert ours(data_dir) == []
    assert not demo_env.exists()


def _children(data_dir: Path) -> list[int]:
    try:
        return list(json.loads((data_dir / "demo.pid").read_text())["children"])
    except (OSError, ValueError, KeyError):
        return []


def test_closing_the_terminal_under_a_parent_that_keeps_the_signal_stops_everything(
    data_dir: Path,
) -> None:
    """`make demo` in a terminal window: closing the window sends SIGHUP to the session leader
    (make, here a shell that waits for its child) and not to the demo, which must notice its
    terminal is gone and stop everything it started."""
    import pty
    import select

    from devtools.processes import wait_for

    env = _demo_env(data_dir) | {"TERM": "xterm"}
    command = f"{sys.executable} -m coachpipe demo --coaches 10 --rate 10; true"
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal's session leader, like make
        os.execvpe("sh", ["sh", "-c", command], env)
    seen = b""

    def running() -> bool:
        nonlocal seen
        readable, _, _ = select.select([fd], [], [], 0.2)
        if readable:
            seen += os.read(fd, 65_536)
        return len(_children(data_dir)) == 5 and b"dashboard:" in seen

    wait_for(running, 180, interval=0.1, message="the demo to run in the terminal")
    assert ours(data_dir) != []
    os.close(fd)  # the window closes
    wait_for(
        lambda: ours(data_dir) == [], 90, interval=0.5, message=f"no process left: {ours(data_dir)}"
    )
    os.waitpid(pid, 0)
    assert not (data_dir / "demo.env").exists()
