"""Recompute one aggregate for a batch of coaches and store it, version first.

Order matters and is the whole point of this module:
1. the caller has already removed the coaches' pending markers (`RecomputeScheduler.claim`);
2. a version is taken for each coach (`AggregateStore.next_versions`, one round trip);
3. one REPEATABLE READ, read-only snapshot is opened and every statement runs in it (several
   aggregates of the same coaches share it: a refresh of everything is one snapshot a batch);
4. the values are stored with the compare-and-set, so an older snapshot never wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple
from uuid import UUID

import orjson
import structlog
from sqlalchemy import Connection, Engine

from pipeline import metrics
from pipeline.aggregates import Aggregate, JSONValue
from pipeline.aggregates.base import SUMMARIES_READY, compute_all
from pipeline.aggregates.delta import (
    MIN_LINES,
    Base,
    Reading,
    SnapshotId,
    merged,
    plan,
    send_checks,
    send_lines,
    served_coaches,
)
from pipeline.db import psycopg_connection
from pipeline.freshness import Freshness
from pipeline.store import AggregateStore
from pipeline.summaries import STAMP_COLUMN
from pipeline.summary_sql import STATE_TABLE

log = structlog.get_logger("pipeline.recompute")


@dataclass(frozen=True)
class RecomputeResult:
    aggregates: tuple[str, ...]
    coaches: int
    stored: int
    stale: int
    versions: Mapping[UUID, int]
    seconds: float
    weights: Mapping[UUID, int] = field(default_factory=dict)
    """Per coach, the bytes (JSON) of every value the snapshot computed for it, stored or not
    (each aggregate's statements run for every coach of the batch): the scheduler charges
    `seconds` to the coaches in proportion to them (a set-based recompute has no per-coach
    timer; its statements are bounded by the rows they return, and those rows are what a
    coach's values hold). Empty unless `recompute_due(..., weigh=True)`."""

    def charged_us(self) -> dict[UUID, int]:
        """Each weighed coach's share of `seconds`, in µs: in proportion to `weights`, in
        equal parts when they sum to 0 (what the scheduler charges to its cost). Empty when
        not weighed."""
        elapsed_us = self.seconds * 1_000_000
        total = sum(self.weights.values())
        return {
            coach: int(elapsed_us * weight / total if total else elapsed_us / len(self.weights))
            for coach, weight in self.weights.items()
        }


class SnapshotStart(NamedTuple):
    at: datetime
    """The database clock at the snapshot's first statement (`clock_timestamp()`)."""
    summaries_ready: bool
    taken: SnapshotId
    """The transaction's snapshot (REPEATABLE READ) and the server's run."""
    stamps: bool
    """Whether the summaries carry stamps (migration 0005, `pipeline.summaries.STAMP_COLUMN`)."""


@dataclass(frozen=True)
class Snapshot:
    """What one REPEATABLE READ, read-only transaction computed: values by aggregate name (by
    coach), the database clock they are for, and the snapshot (`SnapshotStart.taken`)."""

    at: datetime
    values: dict[str, dict[UUID, JSONValue]]
    taken: SnapshotId

    def as_bases(self) -> dict[str, dict[UUID, Base]]:
        """Every value as the base of a later incremental recompute (by aggregate, by coach):
        what a drain reads back from the store, without the store."""
        return {
            name: {coach: Base(value, self.at, self.taken) for coach, value in by_coach.items()}
            for name, by_coach in self.values.items()
        }


_STAMPS_SEEN: dict[str, bool] = {}
"""By database URL, whether this process's last snapshot there saw the summaries' stamps
(migration 0005): until it has, no stamp check is sent, so a worker deployed before the
migration reads in full instead of failing."""


def compute_snapshot(
    engine: Engine,
    aggregates: Sequence[Aggregate],
    coach_ids: Sequence[UUID],
    bases: Mapping[str, Mapping[UUID, Base]] | None = None,
    *,
    as_of: datetime | None = None,
    min_lines: int = MIN_LINES,
) -> Snapshot:
    """Every value of `aggregates` for `coach_ids` from one REPEATABLE READ read-only
    transaction.

    Use an engine made with `snapshots=True`. The snapshot time is the database clock at the
    snapshot's first statement; it is also the `as_of` the values are computed for, so every
    host agrees on "now". `bases`, by aggregate name and coach: stored values an incremental
    aggregate may start from (`pipeline.aggregates.delta`) when it has `min_lines` lines or
    more; the others are read in full. `as_of`, when given, is the clock the values are
    computed for instead (the property tests move it by days).
    """
    database = engine.url.render_as_string()
    with engine.connect() as connection, connection.begin():
        readings: list[Reading] = []

        def checks() -> None:
            readings.extend(send_checks(connection, aggregates, bases or {}, min_lines))

        stamps = _STAMPS_SEEN.pop(database, False)  # back only if the checks did not fail
        start = snapshot_start(connection, also=checks if bases and stamps else None)
        _STAMPS_SEEN[database] = start.stamps
        clock = start.at if as_of is None else as_of
        ready = start.summaries_ready
        planned = plan(readings, clock, start.taken.server) if ready else []
        values = compute_all(
            connection,
            aggregates,
            coach_ids,
            clock,
            end_transaction=True,
            summaries_ready=ready,
            served=served_coaches(planned),
            also=lambda: send_lines(connection, planned, clock),
        )
        incremental, missed = merged(planned)
    if missed:  # never expected: the roster's stamp tells a listed client gone
        log.error("incremental_read_incomplete", aggregates=[r.aggregate.name for r in missed])
        return compute_snapshot(engine, aggregates, coach_ids, as_of=as_of)
    for name, by_coach in incremental.items():
        values[name].update(by_coach)
    return Snapshot(clock, values, start.taken)


SNAPSHOT_START = f"""
SELECT clock_timestamp(), ({SUMMARIES_READY}), pg_current_snapshot()::text,
       pg_postmaster_start_time()::text || ' ' || pg_stat_get_bgwriter_stat_reset_time()::text,
       EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('{STATE_TABLE}')
               AND attname = '{STAMP_COLUMN}' AND NOT attisdropped)
"""


def snapshot_start(connection: Connection, also: Callable[[], None] | None = None) -> SnapshotStart:
    """The clock, the summaries' readiness and stamps, and the snapshot in one round trip with
    the transaction's BEGIN; `also` is called inside that pipeline to send more statements.

    All come from the transaction's first statement, so they are the snapshot's.
    """
    driver = psycopg_connection(connection)
    with driver.pipeline():
        cursor = driver.execute(SNAPSHOT_START)
        if also is not None:
            also()
    row = cursor.fetchone()
    assert row is not None  # a SELECT without FROM returns one row
    return SnapshotStart(row[0], row[1] is True, SnapshotId(row[2], row[3]), row[4] is True)


def database_clock(connection: Connection) -> datetime:
    """`clock_timestamp()` in one round trip with the transaction's BEGIN (pipelined)."""
    return snapshot_start(connection).at


def recompute(
    engine: Engine,
    store: AggregateStore,
    aggregates: Aggregate | Sequence[Aggregate],
    coach_ids: Sequence[UUID],
    *,
    commit_ms: Mapping[UUID, int | None] | None = None,
) -> RecomputeResult:
    """Recompute `aggregates` for `coach_ids` from one snapshot and store them, each coach's at
    the version taken for it before the snapshot."""
    chosen = [aggregates] if isinstance(aggregates, Aggregate) else list(aggregates)
    commits = {
        (aggregate.name, coach): commit
        for aggregate in chosen
        for coach, commit in (commit_ms or {}).items()
    }
    return recompute_due(engine, store, [(a, coach_ids) for a in chosen], commit_ms=commits)


def recompute_due(
    engine: Engine,
    store: AggregateStore,
    due: Sequence[tuple[Aggregate, Sequence[UUID]]],
    *,
    commit_ms: Mapping[tuple[str, UUID], int | None] | None = None,
    weigh: bool = False,
    incremental: bool = False,
) -> RecomputeResult:
    """Recompute each aggregate of `due` ((aggregate, its coaches) pairs) for its own coaches,
    all from one snapshot, and store them at one version (a drain's claim: the due aggregates
    of its coaches).

    The statements run once per aggregate over every coach of the claim (one round trip, as
    many statements as aggregates however the due sets differ between coaches); only the due
    pairs are stored. `commit_ms`, per (aggregate name, coach), is the commit time of the change
    behind it, for the commit → stored histogram; a write notice carries the oldest commit of
    its coach. `weigh`: also measure each coach's share of the work (`RecomputeResult.weights`,
    for the scheduler's cost; a drain asks, bulk refreshes need not). `incremental`: start
    incremental aggregates from their stored values (`pipeline.aggregates.delta`; a drain
    does; a bulk refresh reads everything in full, and so re-bases every value it writes).
    """
    started = time.perf_counter()
    coaches = sorted({coach for _, due_coaches in due for coach in due_coaches})
    versions, bases = store.versions_and_bases(
        coaches,
        [(a, of) for a, of in due if incremental and a.incremental is not None],
    )
    snapshot = compute_snapshot(engine, [a for a, _ in due], coaches, bases)
    snapshot_at, computed = snapshot.at, snapshot.values
    values = {
        aggregate.name: {coach: computed[aggregate.name][coach] for coach in due_coaches}
        for aggregate, due_coaches in due
    }
    computed_at = datetime.now(UTC)
    oldest: dict[UUID, int | None] = {}
    for (_, coach), commit in (commit_ms or {}).items():
        if commit is not None and (oldest.get(coach) or commit) >= commit:
            oldest[coach] = commit
    # The freshness tickets are marked in the same round trip, right behind the writes.
    freshness = Freshness(store.client)
    stored_ms = computed_at.timestamp() * 1000
    marks = freshness.marks(values, versions, int(stored_ms))
    written = store.write_many(
        [(a.name, a.schema_version, values[a.name]) for a, _ in due],
        versions,
        snapshot_at=snapshot_at,
        computed_at=computed_at,
        commit_ms=oldest,
        after=[(freshness.script, call_keys, args) for call_keys, args in marks],
        snapshots={a.name: snapshot.taken.encode() for a, _ in due if a.incremental is not None},
    )
    seconds = time.perf_counter() - started
    freshness.completed(int(stored_ms), written.after)
    weights = {  # only a drain's scheduler charges costs: bulk refreshes skip the work
        coach: sum(len(orjson.dumps(by_coach.get(coach))) for by_coach in computed.values())
        for coach in (coaches if weigh else ())
    }
    for aggregate, due_coaches in due:
        metrics.RECOMPUTE_SECONDS.labels(aggregate.name).observe(seconds)
        metrics.RECOMPUTED_COACHES.labels(aggregate.name).inc(len(due_coaches))
    for (name, coach_id), commit in (commit_ms or {}).items():
        if commit is not None and coach_id in values.get(name, {}):
            metrics.COMMIT_TO_STORED_SECONDS.labels(name).observe(max(stored_ms - commit, 0) / 1000)
    for name, stale in written.stale_by_aggregate.items():
        metrics.STALE_WRITES.labels(name).inc(stale)
    return RecomputeResult(
        aggregates=tuple(a.name for a, _ in due),
        coaches=len(coaches),
        stored=written.stored,
        stale=written.stale,
        versions=versions,
        seconds=seconds,
        weights=weights,
    )


def batches(ids: Sequence[UUID], size: int) -> Iterator[Sequence[UUID]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]
