"""Fill or rebuild the summaries (`pipeline.summaries`) from the base rows, coach by coach.

Safe while writes continue: each batch of coaches is rebuilt in one transaction per source
table that first locks the coaches' anchor rows, the same rows every trigger locks before it
adds a statement's delta (see `pipeline.summary_sql`). A writer in flight is waited for and
then seen; a later writer waits and then adds its delta to the rebuilt sums. Idempotent: a
rebuild replaces a coach's sums, it never adds to them. A deadlock with a writer that touches
several coaches in another order is retried.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from uuid import UUID

import psycopg
import structlog
from sqlalchemy import Engine, text

from pipeline.db import psycopg_connection
from pipeline.recompute import batches
from pipeline.summaries import CLOCKED, SCHEMA, SOURCES, anchor
from pipeline.summary_sql import (
    FORGET_SNAPSHOTS,
    STATE_TABLE,
    advance_statements,
    passed_coaches,
    rebuild_statements,
)

log = structlog.get_logger("pipeline.backfill")

DEADLOCK_RETRIES = 5

EVERY_COACH = " UNION ".join(
    [
        "SELECT coach_id FROM public.users WHERE role = 'client' AND coach_id IS NOT NULL",
        *(f"SELECT coach_id FROM public.{source}" for source in SOURCES if source != "users"),
        *(f"SELECT coach_id FROM {SCHEMA}.{anchor(source).table.name}" for source in SOURCES),
    ]
)
"""Every coach with a row in a source table or a sum in an anchor (stale sums are replaced)."""


def every_coach(engine: Engine) -> list[UUID]:
    with engine.connect() as connection:
        return sorted(connection.execute(text(EVERY_COACH)).scalars())


def rebuild(engine: Engine, coach_ids: Sequence[UUID]) -> None:
    """Replace every summary of `coach_ids` with the sums over their current base rows."""
    params = {"coach_ids": sorted(coach_ids)}
    for source in SOURCES:
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                with engine.connect() as connection, connection.begin():
                    driver = psycopg_connection(connection)
                    for statement in rebuild_statements(source):
                        driver.execute(statement, params)
                break
            except psycopg.errors.DeadlockDetected:
                log.warning("backfill_deadlock", table=source, attempt=attempt + 1)
                if attempt == DEADLOCK_RETRIES:
                    raise


ADVANCE_BATCH = 100
"""Coaches whose passed next sessions `advance` reads again in one transaction."""
ADVANCE_LOCK_TIMEOUT = "2s"
"""The longest `advance` waits for a lock (a TRUNCATE of sessions, say): then the next call."""


def advance(engine: Engine, batch_size: int = ADVANCE_BATCH, max_batches: int = 100) -> int:
    """Read again every clock-relative summary value the clock has passed (a client's next
    session, once it has begun), `batch_size` coaches a transaction, at most `max_batches`
    transactions a summary; returns the number of coaches advanced.

    Until then the readers probe those keys themselves: this keeps recomputes cheap, and
    correctness never waits for it. So it never waits for a writer either: a coach whose
    anchor row a writer holds is skipped (`FOR UPDATE SKIP LOCKED`) and left for the next
    call, and any other lock is given up after `ADVANCE_LOCK_TIMEOUT`
    (`psycopg.errors.LockNotAvailable`, raised). `engine` must be able to write (not a
    `snapshots=True` engine)."""
    advanced: set[UUID] = set()
    for summary in CLOCKED:
        lock, read_again = advance_statements(summary)
        skipped: list[UUID] = []
        for _ in range(max_batches):
            with engine.connect() as connection, connection.begin():
                driver = psycopg_connection(connection)
                driver.execute(f"SET LOCAL lock_timeout = '{ADVANCE_LOCK_TIMEOUT}'")
                found = passed_coaches(summary)
                params = {"limit": batch_size, "skipped": skipped}
                coaches = [row[0] for row in driver.execute(found, params)]
                if not coaches:
                    break
                locked = [row[0] for row in driver.execute(lock, {"coach_ids": coaches})]
                skipped += sorted(set(coaches) - set(locked))
                if locked:
                    driver.execute(read_again, {"coach_ids": locked})
            advanced.update(locked)
    return len(advanced)


def mark_ready(engine: Engine) -> None:
    """From now on the aggregates read the summaries (every coach has been rebuilt once)."""
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {STATE_TABLE} SET ready = true, backfilled_at = now()"))
        connection.execute(text(FORGET_SNAPSHOTS))


def is_ready(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(connection.execute(text(f"SELECT ready FROM {STATE_TABLE}")).scalar())


def backfill(engine: Engine, batch_size: int, progress: Callable[[int], None] | None = None) -> int:
    """Rebuild every coach's summaries, `batch_size` coaches a transaction; then mark ready.

    Coaches whose first row arrives after the list was taken need no rebuild: the triggers
    existed before their rows did. Returns the number of coaches rebuilt.
    """
    coaches = every_coach(engine)
    for batch in batches(coaches, batch_size):
        rebuild(engine, batch)
        if progress is not None:
            progress(len(batch))
    mark_ready(engine)
    log.info("backfill_done", coaches=len(coaches))
    return len(coaches)
