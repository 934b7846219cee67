"""The benchmark harness runs end to end (tiny sizes, no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from config import Settings


@pytest.mark.slow
def test_bench_smoke_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in {n.upper() for n in Settings.model_fields}
    }
    result = subprocess.run(
        [sys.executable, "-m", "devtools.bench", "all", "--smoke", "--output", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    (report,) = tmp_path.glob("bench-*-smoke.json")
    data = json.loads(report.read_text())
    results = data["results"]
    assert set(results) >= {
        "dedup",
        "steady",
        "burst",
        "hot",
        "intake",
        "workers",
        "soak",
        "aggregates",
        "full-refresh",
    }
    assert results["steady"]["postgres"]["commit_to_stored_ms"]["count"] > 0
    per_change = results["steady"]["postgres"]["commit_to_all_stored_ms"]
    assert per_change["count"] == results["steady"]["postgres"]["changes"]
    assert per_change["missing"] == 0
    # When the tail happened, the pipeline's and the database's own (the floor's).
    assert per_change["tail"]["changes"] <= per_change["count"]
    floor = results["steady"]["postgres"]["commit_to_listener_ms"]
    assert floor["count"] > 0 and floor["tail"]["above_ms"] == floor["p99"]
    for scenario in ("burst", "hot"):  # the naive sub-runs before them leave nothing to judge
        run = results[scenario]["pipeline"]
        assert run["correct"]["wrong"] == 0, run["correct"]["examples"]
        assert run["commit_to_all_stored_ms"]["missing"] == 0
        assert run["visible_after_last_commit_s"] is not None
    assert data["meta"]["machine"]["cpus"] >= 1 and data["meta"]["commit"]
    assert (
        (tmp_path / report.name.replace(".json", ".md"))
        .read_text()
        .startswith("# coachpipe benchmark")
    )
    assert "commit → every routed aggregate stored" in report.with_suffix(".md").read_text()
    assert list(tmp_path.glob("bench-*-steady-latency.png"))
