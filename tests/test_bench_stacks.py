"""The bench runs steady and burst on RabbitMQ + Redis Cluster beside Redis + Redis, one run
(`--stacks`, smoke sizes, no timing assertions): the cluster's sharded notices are all seen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import Settings


@pytest.mark.slow
def test_bench_runs_steady_and_burst_on_each_stack_into_one_report(tmp_path: Path) -> None:
    own = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in own}
    result = subprocess.run(
        [sys.executable, "-m", "devtools.bench", "steady,burst", "--smoke",
         "--stacks", "redis+redis,rabbitmq+cluster", "--output", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    (report,) = tmp_path.glob("bench-*-smoke.json")
    data = json.loads(report.read_text())
    assert data["meta"]["stacks"] == ["redis+redis", "rabbitmq+cluster"]
    for stack in data["meta"]["stacks"]:
        results = data["results"][stack]
        steady = results["steady"]["postgres"]
        assert steady["changes"] > 0
        assert steady["commit_to_all_stored_ms"]["count"] == steady["changes"]
        assert steady["commit_to_all_stored_ms"]["missing"] == 0, stack
        burst = results["burst"]["pipeline"]
        assert burst["correct"]["wrong"] == 0, burst["correct"]["examples"]
        assert burst["commit_to_all_stored_ms"]["missing"] == 0, stack
        assert burst["visible_after_last_commit_s"] is not None
    table = report.with_suffix(".md").read_text()
    assert "| scenario / measure | goal | redis+redis | rabbitmq+cluster |" in table
    assert list(tmp_path.glob("bench-*-rabbitmq+cluster-steady-latency.png"))
