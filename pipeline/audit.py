"""The consistency audit: stored aggregates compared with a fresh recompute, judged fairly.

Meta measures its cache consistency with a checker that compares cache and database; this is
the same idea for the dashboard aggregates. An audit of some coaches runs in two phases:

1. `inspect`: one REPEATABLE READ snapshot computes the aggregates; the stored values are read
   after the snapshot was taken. A stored value equal to the recompute is consistent. A stored
   value from a snapshot at or after the audit's (`as_of >= snapshot_at`) is never judged: it
   is newer than what the audit knows. A different, older value is a *suspect*: the pipeline
   may be refreshing it right now. A value that only differs because the clock moved (the same
   recompute at the stored value's own `as_of` reproduces it) is counted as `clock`: the clock
   tick bounds that staleness by design (`CLOCK_TICK_S`, plus the wait of its refresh batches
   on the bulk queue), and it is not a data mismatch.
2. `confirm`, `grace_s` later (the freshness SLO): each suspect's stored value is read again.
   If a write from a snapshot at or after the audit's has replaced it, the pipeline kept its
   promise (`settled`). Otherwise the value was stale for longer than the SLO: a *mismatch*,
   counted per aggregate and kind (`missing`, `differs`), logged with the fields that differ,
   and repaired with an ordinary versioned recompute (which never overwrites a newer write).

The summary of the last audit pass is kept in Redis (`keys.AUDIT_LAST`) for `coachpipe status`
and exported as Prometheus metrics ("nines": `coachpipe_audit_consistency_ratio`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import structlog
from sqlalchemy import Engine, select

from pipeline import keys, metrics
from pipeline.aggregates import Aggregate, JSONValue
from pipeline.aggregates.base import compute_all
from pipeline.coaches import ACTIVE_COACHES
from pipeline.read import read_aggregate
from pipeline.recompute import database_clock, recompute
from pipeline.redis_client import RedisClient
from pipeline.redis_values import as_text
from pipeline.store import AggregateStore
from pipeline.stored import StoredAggregate
from pipeline.tables import users

log = structlog.get_logger("pipeline.audit")

MISSING = "missing"
DIFFERS = "differs"
CLOCK = "clock"


def differing_fields(stored: JSONValue, fresh: JSONValue, path: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (`a.b`, `items[3]`); [] when equal.

    Objects are compared key by key, arrays element by element (a length change names the
    array itself), anything else by equality. The root is named `.` when it differs itself.
    """
    if isinstance(stored, dict) and isinstance(fresh, dict):
        found: list[str] = []
        for name in sorted(set(stored) | set(fresh)):
            where = f"{path}.{name}" if path else name
            if name not in stored or name not in fresh:
                found.append(where)
            else:
                found.extend(differing_fields(stored[name], fresh[name], where))
        return found
    if isinstance(stored, list) and isinstance(fresh, list):
        if len(stored) != len(fresh):
            return [path or "."]
        found = []
        for index, (left, right) in enumerate(zip(stored, fresh, strict=True)):
            found.extend(differing_fields(left, right, f"{path}[{index}]"))
        return found
    return [] if stored == fresh else [path or "."]


def _as_stored(value: JSONValue) -> JSONValue:
    """The value as Redis would give it back (the store writes orjson)."""
    loaded: JSONValue = orjson.loads(orjson.dumps(value))
    return loaded


@dataclass(frozen=True)
class Suspect:
    coach_id: UUID
    aggregate: str
    kind: str
    """`missing` (nothing stored) or `differs`."""
    fields: tuple[str, ...]
    stored_version: int | None
    stored_as_of: datetime | None


@dataclass(frozen=True)
class Inspection:
    snapshot_at: datetime
    """Database clock of the audit's snapshot."""
    checked: Mapping[str, int]
    """Coach aggregates compared, per aggregate."""
    suspects: tuple[Suspect, ...]
    clock: Mapping[str, int]
    """Differences explained by the clock alone, per aggregate."""
    newer: int
    """Stored values newer than the audit's snapshot (not judged)."""


def inspection_to_json(inspection: Inspection) -> dict[str, Any]:
    """What phase 2 needs, as JSON (a task argument): the snapshot time and the suspects."""
    return {
        "snapshot_at": inspection.snapshot_at.isoformat(),
        "checked": dict(inspection.checked),
        "clock": dict(inspection.clock),
        "newer": inspection.newer,
        "suspects": [
            [str(s.coach_id), s.aggregate, s.kind, list(s.fields), s.stored_version,
             s.stored_as_of and s.stored_as_of.isoformat()]
            for s in inspection.suspects
        ],
    }  # fmt: skip


def inspection_from_json(data: Mapping[str, Any]) -> Inspection:
    """The inverse of `inspection_to_json`; raises KeyError/ValueError on a malformed one."""
    return Inspection(
        snapshot_at=datetime.fromisoformat(data["snapshot_at"]),
        checked={str(k): int(v) for k, v in data["checked"].items()},
        suspects=tuple(
            Suspect(
                UUID(coach),
                aggregate,
                kind,
                tuple(fields),
                version,
                datetime.fromisoformat(as_of) if as_of else None,
            )
            for coach, aggregate, kind, fields, version, as_of in data["suspects"]
        ),
        clock={str(k): int(v) for k, v in data["clock"].items()},
        newer=int(data["newer"]),
    )


@dataclass(frozen=True)
class AuditReport:
    snapshot_at: datetime
    checked: Mapping[str, int]
    mismatches: tuple[Suspect, ...]
    """Suspects still stale `grace_s` after the audit's snapshot."""
    settled: int
    """Suspects the pipeline refreshed within the grace period."""
    clock: Mapping[str, int]
    repaired: int
    newer: int
    confirmed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def mismatches_of(self, aggregate: str) -> int:
        return sum(1 for m in self.mismatches if m.aggregate == aggregate)

    def consistency(self, aggregate: str) -> float:
        """Share of checked values of `aggregate` that were right (1.0 when none checked)."""
        checked = self.checked.get(aggregate, 0)
        return 1.0 if checked == 0 else 1 - self.mismatches_of(aggregate) / checked

    @property
    def oldest_stale_s(self) -> float:
        """How long the stalest mismatch had been wrong at least: from the audit's snapshot
        (when it was already wrong) to its confirmation; 0 without mismatches."""
        if not self.mismatches:
            return 0.0
        return max((self.confirmed_at - self.snapshot_at).total_seconds(), 0.0)

    def as_json(self) -> dict[str, Any]:
        return {
            "snapshot_at": self.snapshot_at.isoformat(),
            "confirmed_at": self.confirmed_at.isoformat(),
            "checked": dict(self.checked),
            "consistency": {name: self.consistency(name) for name in self.checked},
            "mismatches": [
                {
                    "coach_id": str(m.coach_id),
                    "aggregate": m.aggregate,
                    "kind": m.kind,
                    "fields": list(m.fields),
                    "stored_version": m.stored_version,
                    "stored_as_of": m.stored_as_of and m.stored_as_of.isoformat(),
                }
                for m in self.mismatches
            ],
            "settled": self.settled,
            "clock": dict(self.clock),
            "repaired": self.repaired,
            "newer": self.newer,
            "oldest_stale_s": round(self.oldest_stale_s, 3),
        }


def inspect(
    engine: Engine,
    client: RedisClient,
    aggregates: Sequence[Aggregate],
    coach_ids: Sequence[UUID],
) -> Inspection:
    """Phase 1: recompute in one snapshot, compare with what is stored, list the suspects.

    Use an engine made with `snapshots=True`. Raises what SQLAlchemy and redis-py raise when
    a service does not answer.
    """
    suspects: list[Suspect] = []
    checked = dict.fromkeys((a.name for a in aggregates), 0)
    clock = dict.fromkeys((a.name for a in aggregates), 0)
    newer = 0
    with engine.connect() as connection, connection.begin():
        snapshot_at = database_clock(connection)
        fresh = compute_all(connection, aggregates, coach_ids, snapshot_at)
        for aggregate in aggregates:
            for coach_id in coach_ids:
                stored = read_aggregate(client, coach_id, aggregate.name)
                value = _as_stored(fresh[aggregate.name][coach_id])
                if stored is not None and stored.as_of >= snapshot_at:
                    newer += 1
                    continue
                checked[aggregate.name] += 1
                if stored is None:
                    suspects.append(Suspect(coach_id, aggregate.name, MISSING, (".",), None, None))
                    continue
                fields = differing_fields(stored.value, value)
                if not fields:
                    continue
                if aggregate.time_boundaries and _explained_by_clock(connection, aggregate, stored):
                    clock[aggregate.name] += 1
                    continue
                suspects.append(
                    Suspect(
                        coach_id,
                        aggregate.name,
                        DIFFERS,
                        tuple(fields),
                        stored.version,
                        stored.as_of,
                    )
                )
    return Inspection(snapshot_at, checked, tuple(suspects), clock, newer)


def _explained_by_clock(connection: Any, aggregate: Aggregate, stored: StoredAggregate) -> bool:
    """True if the same data, computed at the stored value's own `as_of`, gives that value."""
    then = compute_all(connection, [aggregate], [stored.coach_id], stored.as_of)
    return not differing_fields(stored.value, _as_stored(then[aggregate.name][stored.coach_id]))


def confirm(
    engine: Engine,
    store: AggregateStore,
    client: RedisClient,
    inspection: Inspection,
    *,
    aggregates: Mapping[str, Aggregate],
    repair: bool = True,
) -> AuditReport:
    """Phase 2 (call it the grace period after `inspect`): keep the suspects that no newer
    write replaced, count them, and recompute them when `repair`."""
    mismatches: list[Suspect] = []
    settled = 0
    for suspect in inspection.suspects:
        stored = read_aggregate(client, suspect.coach_id, suspect.aggregate)
        if stored is not None and stored.as_of >= inspection.snapshot_at:
            settled += 1
        else:
            mismatches.append(suspect)
    repaired = 0
    if repair:
        by_aggregate: dict[str, list[UUID]] = {}
        for mismatch in mismatches:
            by_aggregate.setdefault(mismatch.aggregate, []).append(mismatch.coach_id)
        for name, coaches in by_aggregate.items():
            repaired += recompute(engine, store, aggregates[name], coaches).stored
    report = AuditReport(
        snapshot_at=inspection.snapshot_at,
        checked=inspection.checked,
        mismatches=tuple(mismatches),
        settled=settled,
        clock=inspection.clock,
        repaired=repaired,
        newer=inspection.newer,
    )
    _count(report)
    return report


def _count(report: AuditReport) -> None:
    for name, checked in report.checked.items():
        metrics.AUDIT_CHECKED.labels(name).inc(checked)
        metrics.AUDIT_CONSISTENCY.labels(name).set(report.consistency(name))
    for name, count in report.clock.items():
        if count:
            metrics.AUDIT_FINDINGS.labels(name, CLOCK).inc(count)
    for mismatch in report.mismatches:
        metrics.AUDIT_FINDINGS.labels(mismatch.aggregate, mismatch.kind).inc()
        log.warning(
            "audit_mismatch",
            coach_id=str(mismatch.coach_id),
            aggregate=mismatch.aggregate,
            kind=mismatch.kind,
            fields=list(mismatch.fields)[:20],
            stored_version=mismatch.stored_version,
            stored_as_of=mismatch.stored_as_of and mismatch.stored_as_of.isoformat(),
        )
    metrics.AUDIT_REPAIRED.inc(report.repaired)
    metrics.AUDIT_OLDEST_STALE_SECONDS.set(report.oldest_stale_s)


def audit(
    engine: Engine,
    store: AggregateStore,
    client: RedisClient,
    aggregates: Sequence[Aggregate],
    coach_ids: Sequence[UUID],
    *,
    grace_s: float,
    repair: bool = True,
    wait: Callable[[float], None] = time.sleep,
) -> AuditReport:
    """Both phases in one call (the CLI): inspect, wait out the grace period if there are
    suspects, confirm."""
    inspection = inspect(engine, client, aggregates, coach_ids)
    if inspection.suspects:
        wait(grace_s)
    return confirm(
        engine,
        store,
        client,
        inspection,
        aggregates={a.name: a for a in aggregates},
        repair=repair,
    )


def record(client: RedisClient, report: AuditReport) -> None:
    """Keep the pass's summary for `coachpipe status` (overwrites the previous pass's)."""
    client.set(keys.AUDIT_LAST, orjson.dumps(report.as_json()))


def last_audit(client: RedisClient) -> dict[str, Any] | None:
    """The summary `record` kept, or None before the first audit."""
    raw = client.get(keys.AUDIT_LAST)
    if raw is None:
        return None
    summary: dict[str, Any] = orjson.loads(raw)
    return summary


def next_sample(engine: Engine, client: RedisClient, size: int) -> list[UUID]:
    """The next `size` active coaches in id order after the last sampled one, wrapping around,
    so repeated calls visit every active coach once per cycle."""
    raw = client.get(keys.AUDIT_CURSOR)
    after = UUID(as_text(raw)) if raw else None
    query = select(users.c.id).where(ACTIVE_COACHES).order_by(users.c.id).limit(size)
    with engine.begin() as connection:
        sample = list(
            connection.execute(query.where(users.c.id > after) if after else query).scalars()
        )
        if len(sample) < size and after is not None:
            wrapped = connection.execute(query.where(users.c.id <= after)).scalars()
            sample.extend(c for c in wrapped if c not in sample)
            sample = sample[:size]
    if sample:
        client.set(keys.AUDIT_CURSOR, str(sample[-1]))
    return sample


def below_slo(summary: Mapping[str, Any] | None, slo: float) -> list[str]:
    """Aggregates whose last audited consistency is below `slo` (none before any audit)."""
    if not summary:
        return []
    return sorted(name for name, ratio in summary.get("consistency", {}).items() if ratio < slo)


def sample_size(active_coaches: int, interval_s: float, cycle_s: float) -> int:
    """Coaches per audit run so that every active coach is audited once per `cycle_s` when a
    run happens every `interval_s` (at least 1 while there are coaches)."""
    if active_coaches <= 0:
        return 0
    runs = max(cycle_s / interval_s, 1.0)
    return max(1, -(-active_coaches // int(runs)))
