"""The README's reference tables are generated from the code and must not drift from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from coachpipe.cli import app
from coachpipe.reference import aggregates_markdown, routing_markdown, settings_markdown

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize(
    "table", [aggregates_markdown, routing_markdown, settings_markdown], ids=lambda f: f.__name__
)
def test_generated_tables_are_in_the_readme(table) -> None:
    assert table() in README, (
        f"regenerate the README table from coachpipe.reference.{table.__name__}"
    )


def test_every_cli_command_is_documented() -> None:
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    names += [g.name for g in app.registered_groups]
    missing = [name for name in names if f"coachpipe {name}" not in README]
    assert not missing
