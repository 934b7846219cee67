"""Recompute one aggregate for a batch of coaches and store it, version first.

Order matters and is the whole point of this module:
1. the caller has already removed the coaches' pending markers (`RecomputeScheduler.claim`);
2. a version is taken (`AggregateStore.next_version`);
3. one REPEATABLE READ, read-only snapshot is opened and every statement runs in it (several
   aggregates of the same coaches share it: a refresh of everything is one snapshot a batch);
4. the values are stored with the compare-and-set, so an older snapshot never wins.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import structlog
from sqlalchemy import Connection, Engine

from pipeline import metrics
from pipeline.aggregates import Aggregate, JSONValue
from pipeline.aggregates.base import SUMMARIES_READY, compute_all
from pipeline.db import psycopg_connection
from pipeline.freshness import observe_stored
from pipeline.store import AggregateStore

log = structlog.get_logger("pipeline.recompute")


@dataclass(frozen=True)
class RecomputeResult:
    aggregates: tuple[str, ...]
    coaches: int
    stored: int
    stale: int
    version: int
    seconds: float


def compute_snapshot(
    engine: Engine, aggregates: Sequence[Aggregate], coach_ids: Sequence[UUID]
) -> tuple[datetime, dict[str, dict[UUID, JSONValue]]]:
    """(snapshot time, values by aggregate) from one REPEATABLE READ read-only transaction.

    Use an engine made with `snapshots=True`. The snapshot time is the database clock at the
    snapshot's first statement; it is also the `as_of` the values are computed for, so every
    host agrees on "now".
    """
    with engine.connect() as connection, connection.begin():
        snapshot_at, ready = snapshot_start(connection)
        values = compute_all(
            connection,
            aggregates,
            coach_ids,
            snapshot_at,
            end_transaction=True,
            summaries_ready=ready,
        )
        return snapshot_at, values


SNAPSHOT_START = f"SELECT clock_timestamp(), ({SUMMARIES_READY})"


def snapshot_start(connection: Connection) -> tuple[datetime, bool]:
    """(`clock_timestamp()`, summaries ready) in one round trip with the transaction's BEGIN.

    Both come from the transaction's first statement, so the readiness is the snapshot's.
    """
    driver = psycopg_connection(connection)
    with driver.pipeline():
        cursor = driver.execute(SNAPSHOT_START)
    row = cursor.fetchone()
    assert row is not None  # a SELECT without FROM returns one row
    return row[0], row[1] is True


def database_clock(connection: Connection) -> datetime:
    """`clock_timestamp()` in one round trip with the transaction's BEGIN (pipelined)."""
    return snapshot_start(connection)[0]


def recompute(
    engine: Engine,
    store: AggregateStore,
    aggregates: Aggregate | Sequence[Aggregate],
    coach_ids: Sequence[UUID],
    *,
    commit_ms: Mapping[UUID, int | None] | None = None,
) -> RecomputeResult:
    """Recompute `aggregates` for `coach_ids` from one snapshot and store them at one version."""
    chosen = [aggregates] if isinstance(aggregates, Aggregate) else list(aggregates)
    started = time.perf_counter()
    version = store.next_version()
    snapshot_at, values = compute_snapshot(engine, chosen, coach_ids)
    computed_at = datetime.now(UTC)
    written = store.write_many(
        [(a.name, a.schema_version, values[a.name]) for a in chosen],
        version,
        snapshot_at=snapshot_at,
        computed_at=computed_at,
        commit_ms=commit_ms,
    )
    seconds = time.perf_counter() - started
    observe_stored(store.client, values, version, computed_at)
    stored_ms = computed_at.timestamp() * 1000
    for aggregate in chosen:
        metrics.RECOMPUTE_SECONDS.labels(aggregate.name).observe(seconds)
        metrics.RECOMPUTED_COACHES.labels(aggregate.name).inc(len(coach_ids))
        for coach_id, commit in (commit_ms or {}).items():
            if commit is not None and coach_id in values[aggregate.name]:
                metrics.COMMIT_TO_STORED_SECONDS.labels(aggregate.name).observe(
                    max(stored_ms - commit, 0) / 1000
                )
    for name, stale in written.stale_by_aggregate.items():
        metrics.STALE_WRITES.labels(name).inc(stale)
    return RecomputeResult(
        aggregates=tuple(a.name for a in chosen),
        coaches=len(coach_ids),
        stored=written.stored,
        stale=written.stale,
        version=version,
        seconds=seconds,
    )


def batches(ids: Sequence[UUID], size: int) -> Iterator[Sequence[UUID]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]
