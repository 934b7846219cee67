"""`coachpipe backfill` and `coachpipe refresh --rebuild-summaries`: summaries from base rows."""

from __future__ import annotations

from uuid import UUID

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from config import Settings
from pipeline import backfill
from pipeline.db import make_engine


def run_backfill(settings: Settings, batch_size: int, console: Console) -> None:
    """Rebuild every coach's summaries with a progress bar, then mark them ready."""
    engine = make_engine(settings.require_database_url())
    try:
        total = len(backfill.every_coach(engine))
        columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, BarColumn(bar_width=None), console=console) as bar:
            task = bar.add_task("summarising", total=total)
            done = backfill.backfill(engine, batch_size, progress=lambda n: bar.advance(task, n))
        console.print(f"summaries rebuilt for {done:,} coaches; the aggregates now read them")
    finally:
        engine.dispose()


def rebuild_coach(settings: Settings, coach_id: UUID) -> None:
    engine = make_engine(settings.require_database_url())
    try:
        backfill.rebuild(engine, [coach_id])
    finally:
        engine.dispose()
