"""The whale-fairness report lines (devtools.bench.whale.fairness_rows), on hand-made results:
the +20 % goal is the issue's, for 100 changes/s a stream; `--rate` runs are diagnostics."""

from __future__ import annotations

from typing import Any

import pytest

from devtools.bench.report import table_row
from devtools.bench.whale import fairness_rows


def load(alone_p99: float, beside_p99: float, rate: float | None) -> dict[str, Any]:
    def run(p99: float) -> dict[str, Any]:
        figures = {"p50": p99 / 4, "p99": p99}
        found: dict[str, Any] = {"others": {"commit_to_all_stored_ms": figures}}
        if rate is not None:  # results written before `--rate` carry none
            found["rate"] = rate
        return found

    return {"without_whale": run(alone_p99), "with_whale": run(beside_p99)}


@pytest.mark.parametrize(
    ("rate", "beside_p99", "goal", "met"),
    [
        (None, 110.0, "≤ +20%", "yes"),  # an older result: 100/s
        (100.0, 110.0, "≤ +20%", "yes"),
        (100.0, 130.0, "≤ +20%", "no"),
        (50.0, 110.0, "(goal at 100/s)", "-"),
    ],
)
def test_the_fairness_goal_is_judged_at_the_issues_rate_only(
    rate: float | None, beside_p99: float, goal: str, met: str
) -> None:
    *_, verdict = fairness_rows(load(100.0, beside_p99, rate))
    label, measured, judged_against, judged = verdict
    assert label.startswith(f"others {rate or 100:g}/s:")
    assert measured == f"100.0 | {beside_p99}"
    assert (judged_against, judged) == (goal, met)


def test_a_cell_holding_a_pipe_stays_one_cell_of_the_markdown_table() -> None:
    """The verdict row reads `alone | beside` in its label and its figures: each row of the
    report keeps 4 cells (it had 6, which shifted the goal and verdict out of their columns)."""
    for row in fairness_rows(load(100.0, 130.0, 100.0)):
        line = table_row(*row)
        unescaped = line.replace("\\|", "")
        assert unescaped.count("|") == 5, line
    assert table_row("a | b", "1 | 2") == "| a \\| b | 1 \\| 2 |"
