"""The consistency audit against a real Postgres and Redis, judged by the oracle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
import redis
from sqlalchemy import Engine

from devtools.bench.broker import BrokerQueues
from devtools.processes import running, start_beat, start_worker, wait_for
from pipeline import audit, keys, seed
from pipeline.aggregates import CRITICAL, NAMES, get
from pipeline.aggregates.base import compute_all
from pipeline.db import make_engine
from pipeline.recompute import database_clock
from pipeline.refresh import refresh_everything
from pipeline.store import AggregateStore
from tests.pipeline_checks import coach_ids, mismatches, settle

PLAN = seed.SeedPlan(coaches=4, clients_per_coach=3, sessions_per_client=4)


@pytest.mark.parametrize(
    ("stored", "fresh", "differ"),
    [
        ({}, {}, []),
        ({"a": 1}, {"a": 1}, []),
        ({"a": 1}, {"a": 2}, ["a"]),
        ({"a": 1}, {"b": 1}, ["a", "b"]),
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}, ["a.c"]),
        ({"a": [1, 2]}, {"a": [1, 3]}, ["a[1]"]),
        ({"a": [1, 2]}, {"a": [1]}, ["a"]),
        ({"a": [{"x": 1}]}, {"a": [{"x": 2}]}, ["a[0].x"]),
        ({"a": None}, {"a": 0}, ["a"]),
        ({"a": 1.0}, {"a": 1}, []),
        ([1], [2], ["[0]"]),
        (1, 2, ["."]),
        ({"a": 1}, [1], ["."]),
    ],
)
def test_differing_fields_names_each_path_that_differs(
    stored: object, fresh: object, differ: list[str]
) -> None:
    assert audit.differing_fields(stored, fresh) == differ  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("active", "interval", "cycle", "size"),
    [(0, 10, 3600, 0), (1, 10, 3600, 1), (360, 10, 3600, 1), (361, 10, 3600, 2),
     (1000, 10, 3600, 3), (10, 3600, 60, 10), (10_000, 10, 3600, 28)],
)  # fmt: skip
def test_sample_size_covers_every_coach_once_per_cycle(
    active: int, interval: float, cycle: float, size: int
) -> None:
    assert audit.sample_size(active, interval, cycle) == size


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    seed.load(database_url, PLAN)
    engine = make_engine(database_url, snapshots=True)
    yield engine
    engine.dispose()


@pytest.fixture
def stored(engine: Engine, redis_client: redis.Redis, database_url: str) -> AggregateStore:
    store = AggregateStore(redis_client)
    coaches = coach_ids(database_url)
    refresh_everything(engine, store, list(NAMES), [coaches], threads=1)
    return store


def _audit(
    engine: Engine, store: AggregateStore, client: redis.Redis, database_url: str
) -> audit.AuditReport:
    coaches = coach_ids(database_url)
    return audit.audit(
        engine, store, client, list(CRITICAL), coaches, grace_s=0, wait=lambda _: None
    )


def test_a_fresh_store_is_fully_consistent(
    engine: Engine, stored: AggregateStore, redis_client: redis.Redis, database_url: str
) -> None:
    report = _audit(engine, stored, redis_client, database_url)
    assert report.mismatches == ()
    assert all(report.consistency(a.name) == 1.0 for a in CRITICAL)
    assert sum(report.checked.values()) == PLAN.coaches * len(CRITICAL)


def test_a_corrupted_value_is_found_named_and_repaired_in_one_pass(
    engine: Engine, stored: AggregateStore, redis_client: redis.Redis, database_url: str
) -> None:
    coach = coach_ids(database_url)[0]
    key = keys.aggregate("coach-stats", coach)
    redis_client.hset(key, "value", b'{"sessions": {"total": -1}}')
    missing = coach_ids(database_url)[1]
    redis_client.delete(keys.aggregate("coach-insights", missing))

    report = _audit(engine, stored, redis_client, database_url)

    found = {(m.aggregate, m.coach_id, m.kind) for m in report.mismatches}
    assert found == {("coach-stats", coach, "differs"), ("coach-insights", missing, "missing")}
    corrupted = next(m for m in report.mismatches if m.kind == "differs")
    assert "sessions.total" in corrupted.fields
    assert report.repaired == 2
    assert report.consistency("coach-stats") == 1 - 1 / PLAN.coaches
    assert mismatches(database_url, redis_client, coach_ids(database_url)) == []
    assert audit.last_audit(redis_client) is None  # `audit` reports; `record` keeps it
    audit.record(redis_client, report)
    kept = audit.last_audit(redis_client)
    assert kept is not None and len(kept["mismatches"]) == 2


def test_a_value_refreshed_during_the_grace_period_is_settled_not_a_mismatch(
    engine: Engine, stored: AggregateStore, redis_client: redis.Redis, database_url: str
) -> None:
    coach = coach_ids(database_url)[0]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM session_ratings WHERE id = "
            "(SELECT id FROM session_ratings WHERE coach_id = %s LIMIT 1)",
            (coach,),
        )
    inspection = audit.inspect(engine, redis_client, [get("coach-stats")], [coach])
    assert [s.coach_id for s in inspection.suspects] == [coach]
    # The pipeline answers the change before the grace period ends.
    refresh_everything(engine, stored, ["coach-stats"], [[coach]], threads=1)
    report = audit.confirm(
        engine, stored, redis_client, inspection, aggregates={"coach-stats": get("coach-stats")}
    )
    assert (report.settled, report.mismatches, report.repaired) == (1, (), 0)


def test_a_value_newer_than_the_audit_is_not_judged(
    engine: Engine, stored: AggregateStore, redis_client: redis.Redis, database_url: str
) -> None:
    coach = coach_ids(database_url)[0]
    key = keys.aggregate("coach-stats", coach)
    redis_client.hset(key, mapping={"value": b"{}", "as_of": "2999-01-01T00:00:00+00:00"})
    inspection = audit.inspect(engine, redis_client, [get("coach-stats")], [coach])
    assert (inspection.newer, inspection.suspects, inspection.checked["coach-stats"]) == (1, (), 0)


def test_a_difference_made_by_the_clock_alone_is_counted_apart(
    engine: Engine, stored: AggregateStore, redis_client: redis.Redis, database_url: str
) -> None:
    """A value computed 40 days ago over today's rows is stale only because time moved."""
    coach = coach_ids(database_url)[0]
    stats = get("coach-stats")
    with engine.connect() as connection, connection.begin():
        then = database_clock(connection) - timedelta(days=40)
        old = compute_all(connection, [stats], [coach], then)
    stored.write_many(
        [(stats.name, stats.schema_version, old[stats.name])],
        stored.next_version(coach),
        snapshot_at=then,
        computed_at=then,
    )
    inspection = audit.inspect(engine, redis_client, [stats], [coach])
    assert (inspection.clock["coach-stats"], inspection.suspects) == (1, ())


def test_sampling_visits_every_active_coach_once_per_cycle(
    engine: Engine, redis_client: redis.Redis, database_url: str
) -> None:
    everyone = set(coach_ids(database_url))
    seen: list[UUID] = []
    for _ in range(2):
        seen.extend(audit.next_sample(engine, redis_client, 3))
    first, second, third, fourth = sorted(everyone)
    assert seen == [first, second, third, fourth, first, second]  # a full cycle, then wrapping


def test_the_audit_command_reports_a_mismatch_repairs_it_and_then_passes(
    engine: Engine, stored: AggregateStore, redis_client: redis.Redis, service_env: dict[str, str]
) -> None:
    from tests.test_cli import coachpipe

    coach = coach_ids(service_env["DATABASE_URL"])[2]
    redis_client.hset(keys.aggregate("coach-clients", coach), "value", b'{"clients": []}')
    env = service_env | {"AUDIT_GRACE_S": "0"}

    first = coachpipe(env, "audit", "--all", "--json")
    assert first.returncode == 1, first.stderr
    (report,) = json.loads(first.stdout)
    assert [(m["aggregate"], m["coach_id"]) for m in report["mismatches"]] == [
        ("coach-clients", str(coach))
    ]
    assert report["repaired"] == 1

    second = coachpipe(env, "audit", "--coach", str(coach))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "coach-clients" in second.stdout
    assert coachpipe(env, "audit").returncode == 2  # none of --all, --coach, --sample


def test_an_inspection_survives_the_trip_through_a_task_argument(
    engine: Engine, stored: AggregateStore, redis_client: redis.Redis, database_url: str
) -> None:
    coach = coach_ids(database_url)[0]
    redis_client.hset(keys.aggregate("coach-stats", coach), "value", b'{"x": 1}')
    inspection = audit.inspect(engine, redis_client, list(CRITICAL), [coach])
    assert inspection.suspects
    trip = json.loads(json.dumps(audit.inspection_to_json(inspection)))
    assert audit.inspection_from_json(trip) == inspection


@pytest.mark.parametrize(
    ("consistency", "slo", "below"),
    [({}, 0.999, []), ({"coach-stats": 1.0}, 0.999, []), ({"coach-stats": 0.99}, 0.999,
     ["coach-stats"]), ({"a": 0.5, "b": 0.9999}, 0.999, ["a"])],
)  # fmt: skip
def test_below_slo(consistency: dict[str, float], slo: float, below: list[str]) -> None:
    assert audit.below_slo({"consistency": consistency}, slo) == below
    assert audit.below_slo(None, slo) == []


def test_beat_finds_a_value_corrupted_by_hand_and_repairs_it_in_the_first_pass_after(
    engine: Engine, stored: AggregateStore, redis_client: redis.Redis, database_url: str,
    service_env: dict[str, str], tmp_path: Path, broker_url: str,
) -> None:  # fmt: skip
    """A real worker and a real beat; every audit run visits every coach (cycle = interval).
    The first pass whose snapshot follows the corruption names it and repairs it; `coachpipe
    status` shows that pass."""
    from tests.test_cli import coachpipe

    env = service_env | {
        "AUDIT_INTERVAL_S": "2", "AUDIT_CYCLE_S": "2", "AUDIT_GRACE_S": "0.5",
        # Nothing but the audit rewrites coach-stats during the test: these run once, at start.
        "FALLBACK_POLL_S": "3600", "CLOCK_TICK_S": "3600", "RECONCILE_S": "3600",
    }  # fmt: skip
    broker = BrokerQueues(broker_url)
    broker.flush()
    worker = start_worker(env, tmp_path, broker_url=broker_url)
    beat = start_beat(env, tmp_path, "beat")
    with running(beat, worker):
        wait_for(lambda: audit.last_audit(redis_client), 60, message="a first audit pass")
        settle(database_url, redis_client)
        wait_for(lambda: broker.queued() == 0 and broker.unacked() == 0, 30, interval=0.02)
        coach = coach_ids(database_url)[0]
        redis_client.hset(keys.aggregate("coach-stats", coach), "value", b'{"sessions": {}}')
        corrupted_at = datetime.now(UTC)

        def first_pass_after() -> dict[str, Any] | None:
            summary = audit.last_audit(redis_client)
            after = summary and datetime.fromisoformat(summary["snapshot_at"]) > corrupted_at
            return summary if after else None

        found = wait_for(first_pass_after, 60, interval=0.02, message="an audit pass after it")
        assert found is not None
        assert [(m["aggregate"], m["coach_id"], m["kind"]) for m in found["mismatches"]] == [
            ("coach-stats", str(coach), "differs")
        ]
        assert "sessions.total" in found["mismatches"][0]["fields"]
        assert found["repaired"] == 1
        assert mismatches(database_url, redis_client, coach_ids(database_url)) == []
        status = json.loads(coachpipe(env, "status", "--json").stdout)
        assert status["audit"] is not None and "consistency" in status["audit"]
    assert worker.output().count("audit_mismatch") == 1  # no later pass found it again
