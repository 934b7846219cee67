"""The `celery -A tasks …` and `coachpipe worker|beat|flower` edge: one line for a bad setting,
no credential in what Celery displays, Flower never open by accident."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from coachpipe.embedded import free_port
from devtools.processes import Proc, running, wait_for

PASSWORD = "s3cret-redis-pw"


def run(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def bare_env() -> dict[str, str]:
    from config import Settings

    names = {n.upper() for n in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k.upper() not in names}


@pytest.mark.parametrize(
    "args",
    [
        ("coachpipe", "worker"),
        ("coachpipe", "beat"),
        ("coachpipe", "flower"),
        ("celery", "-A", "tasks", "worker"),
        ("celery", "-A", "tasks", "beat"),
    ],
    ids=" ".join,
)
def test_a_bad_setting_is_one_line_and_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    env = bare_env() | {"REDIS_URL": "nonsense", "DATABASE_URL": "postgresql:///x"}
    result = run(env, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "REDIS_URL" in result.stderr and "Traceback" not in result.stderr
    assert "nonsense" not in result.stderr


def test_celery_report_never_shows_the_redis_password(tmp_path: Path) -> None:
    env = bare_env() | {
        "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:6390/0",
        "DATABASE_URL": "postgresql://postgres:pgpw@127.0.0.1:5499/x",
    }
    result = run(env, "celery", "-A", "tasks", "report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "redbeat_redis_url" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


def test_flower_refuses_to_start_open_unless_told(tmp_path: Path) -> None:
    env = bare_env() | {"REDIS_URL": "redis://127.0.0.1:6390/0"}
    refused = run(env, "celery", "-A", "tasks", "flower", "--port=1", cwd=tmp_path)
    assert refused.returncode == 2
    assert "FLOWER_BASIC_AUTH is not set" in refused.stderr and "FLOWER_INSECURE" in refused.stderr


def test_flower_honours_basic_auth_from_dot_env(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("FLOWER_BASIC_AUTH=alice:pw\n")
    env = {k: v for k, v in service_env.items() if k != "FLOWER_BASIC_AUTH"}
    port = free_port()
    proc = Proc(
        "flower",
        [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}",
         "--address=127.0.0.1"],
        env, tmp_path / "flower.log", cwd=tmp_path,
    ).start()  # fmt: skip
    with running(proc):
        wait_for(lambda: _status(port) is not None, 60, interval=0.5, message=proc.output()[-2000:])
        assert _status(port) == 401
        assert httpx.get(f"http://127.0.0.1:{port}/", auth=("alice", "pw"), timeout=5).is_success


def _status(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code
    except httpx.TransportError:
        return None
