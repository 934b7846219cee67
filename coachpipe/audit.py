"""`coachpipe audit`: compare stored aggregates with a fresh recompute, repair, report."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from rich.console import Console
from rich.table import Table

from config import Settings
from config.logging import configure_logging
from pipeline.aggregates import CRITICAL, get
from pipeline.audit import AuditReport, audit, next_sample, record
from pipeline.coaches import active_coach_batches, require_coaches
from pipeline.db import make_engine
from pipeline.recompute import batches
from pipeline.redis_client import connect
from pipeline.store import AggregateStore

BATCH = 500
"""Coaches per audited snapshot. Each batch with suspects waits `AUDIT_GRACE_S` before
confirming, so this stays large; it is not `REFRESH_BATCH_SIZE`, which bounds how long one of
beat's tasks holds a worker's pool process."""


def run_audit(
    settings: Settings,
    *,
    coach_ids: Sequence[UUID] | None,
    sample: int | None,
    names: Sequence[str] | None,
    repair: bool,
) -> list[AuditReport]:
    """Audit one coach, a sample (the beat's sampling order), or every active coach
    (`coach_ids` and `sample` None), batch by batch; the last batch's report is recorded."""
    configure_logging(settings, process="audit")  # to stderr: stdout carries the report
    client = connect(settings.require_redis_url())
    engine = make_engine(settings.require_database_url(), snapshots=True)
    store = AggregateStore(client)
    aggregates = [get(name) for name in names] if names else list(CRITICAL)
    try:
        if coach_ids is not None:
            require_coaches(engine, coach_ids)
            chosen: list[Sequence[UUID]] = list(batches(coach_ids, BATCH))
        elif sample is not None:
            chosen = [next_sample(engine, client, sample)]
        else:
            chosen = list(active_coach_batches(engine, BATCH))
        reports = [
            audit(
                engine,
                store,
                client,
                aggregates,
                batch,
                grace_s=settings.audit_grace_s,
                repair=repair,
            )
            for batch in chosen
            if batch
        ]
        if reports:
            record(client, reports[-1])
        return reports
    finally:
        engine.dispose()
        client.close()


def render(reports: Sequence[AuditReport], console: Console) -> None:
    checked: dict[str, int] = {}
    wrong: dict[str, int] = {}
    clock: dict[str, int] = {}
    for report in reports:
        for name, count in report.checked.items():
            checked[name] = checked.get(name, 0) + count
            wrong[name] = wrong.get(name, 0) + report.mismatches_of(name)
            clock[name] = clock.get(name, 0) + report.clock.get(name, 0)
    table = Table("aggregate", "checked", "mismatches", "consistency", "clock-only")
    for name, count in checked.items():
        ratio = 1.0 if not count else 1 - wrong[name] / count
        colour = "green" if wrong[name] == 0 else "red"
        table.add_row(
            name,
            str(count),
            f"[{colour}]{wrong[name]}[/]",
            f"{ratio:.4%}",
            str(clock[name]),
        )
    console.print(table)
    for report in reports:
        for mismatch in report.mismatches:
            console.print(
                f"[red]{mismatch.kind}[/] {mismatch.aggregate} {mismatch.coach_id}: "
                f"{', '.join(mismatch.fields[:8])}"
            )
    repaired = sum(r.repaired for r in reports)
    settled = sum(r.settled for r in reports)
    console.print(
        f"repaired {repaired}; refreshed by the pipeline within the grace period {settled}"
    )
