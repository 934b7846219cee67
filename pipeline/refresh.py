"""Recompute aggregates for many coaches now, in the calling process.

Used by `coachpipe refresh` (with a progress bar) and by the full-refresh benchmark. Batches
run on a few threads: the database does the work, and psycopg releases the GIL while it waits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID

from sqlalchemy import Engine, func, select

from pipeline.aggregates import get
from pipeline.coaches import ACTIVE_COACHES
from pipeline.recompute import recompute
from pipeline.store import AggregateStore


def count_active_coaches(engine: Engine) -> int:
    with engine.begin() as connection:
        return int(connection.execute(select(func.count()).where(ACTIVE_COACHES)).scalar_one())


def refresh_everything(
    engine: Engine,
    store: AggregateStore,
    names: Sequence[str],
    coach_batches: Sequence[Sequence[UUID]],
    *,
    threads: int = 4,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Recompute `names` for every batch, one snapshot a batch; returns coach aggregates written."""
    aggregates = [get(name) for name in names]

    def run(batch: Sequence[UUID]) -> int:
        result = recompute(engine, store, aggregates, batch)
        if progress:
            progress(len(batch) * len(aggregates))
        return result.coaches * len(aggregates)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(run, coach_batches))
