"""`coachpipe demo` on the embedded default: everything up, numbers change, nothing left over."""

from __future__ import annotations

import os
import re
import shutil
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
