"""`coachpipe refresh`: recompute aggregates now with a progress bar, or hand them to workers."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from config import Settings
from pipeline.coaches import active_coach_batches, require_coaches
from pipeline.db import make_engine
from pipeline.recompute import batches
from pipeline.redis_client import connect
from pipeline.refresh import count_active_coaches, refresh_everything
from pipeline.store import AggregateStore


def refresh_coaches(
    settings: Settings,
    coach_ids: list[UUID] | None,
    names: Sequence[str],
    *,
    enqueue: bool,
    console: Console,
) -> None:
    if coach_ids is not None:
        _require_coaches(settings, coach_ids)
    if enqueue:
        from tasks.celery import create_app

        app = create_app(settings)
        for name in names:
            if coach_ids is None:
                app.sender.send_wide_refresh(name, "cli")
            else:
                app.sender.send_refresh_batch([name], coach_ids)
        app.close()
        console.print(f"enqueued refresh of {', '.join(names)}")
        return
    engine = make_engine(settings.require_database_url(), pool_size=4, snapshots=True)
    store = AggregateStore(connect(settings.require_redis_url()))
    if coach_ids is None:
        total = count_active_coaches(engine)
        coach_batches: list[Sequence[UUID]] = list(
            active_coach_batches(engine, settings.refresh_batch_size)
        )
    else:
        total = len(coach_ids)
        coach_batches = list(batches(coach_ids, settings.refresh_batch_size))
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, BarColumn(bar_width=None), console=console) as bar:
        task = bar.add_task("recomputing", total=total * len(names))
        written = refresh_everything(
            engine, store, names, coach_batches, progress=lambda n: bar.advance(task, n)
        )
    console.print(
        f"stored {written:,} coach aggregates ({len(names)} aggregates x {total:,} coaches)"
    )
    engine.dispose()


def _require_coaches(settings: Settings, coach_ids: Sequence[UUID]) -> None:
    """Refuse ids that are not coaches before anything is enqueued or written."""
    engine = make_engine(settings.require_database_url())
    try:
        require_coaches(engine, coach_ids)
    finally:
        engine.dispose()
