"""The pipeline's tasks on pytest-celery's in-process worker: the app from `create_app`, real
Postgres and Redis, tasks sent by name, results observed through Celery's own signals."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

# pytest-celery 1.x ships two `celery_worker` fixtures: its container-based one (which needs
# Docker) shadows the in-process one it keeps for compatibility. The in-process one is wanted.
from celery.contrib.pytest import celery_worker  # noqa: F401
from celery.signals import task_success

from config import Settings
from pipeline import seed
from pipeline.aggregates import NAMES
from pipeline.health import Color, HealthBoard, ListenerHealth, ListenerState
from tasks import names
from tasks.celery import create_app
from tasks.pipeline_app import PipelineApp
from tests.pipeline_checks import CRITICAL_NAMES, coach_ids, settle

SMALL = seed.SeedPlan(coaches=3, clients_per_coach=3, sessions_per_client=2)


@pytest.fixture
def celery_app(settings: Settings, broker_url: str) -> Iterator[PipelineApp]:
    """pytest-celery's app fixture, overridden: the app every pipeline process builds."""
    redis.Redis.from_url(broker_url).flushdb()
    app = create_app(settings)
    yield app
    app.close()


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    return "threads"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    # No result backend (results are ignored): the ping check would wait for a result.
    return {"queues": list(names.QUEUES), "concurrency": 2, "perform_ping_check": False}


class Results:
    """Return values of the tasks the in-process worker ran, by task name."""

    def __init__(self) -> None:
        self.by_task: dict[str, list[Any]] = {}
        self.lock = threading.Lock()

    def record(self, sender: Any = None, result: Any = None, **_: Any) -> None:
        with self.lock:
            self.by_task.setdefault(sender.name, []).append(result)

    def of(self, name: str) -> list[Any]:
        with self.lock:
            return list(self.by_task.get(name, []))


@pytest.fixture
def results() -> Iterator[Results]:
    collected = Results()
    task_success.connect(collected.record)
    yield collected
    task_success.disconnect(collected.record)


@pytest.mark.usefixtures("celery_worker")
def test_requests_drain_on_the_worker_into_correct_aggregates(
    database_url: str, redis_client: redis.Redis, celery_app: PipelineApp, results: Results,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    coaches = coach_ids(database_url)
    celery_app.runtime.scheduler.request(
        [(name, coach) for coach in coaches for name in CRITICAL_NAMES]
    )
    settle(database_url, redis_client, coaches)
    drained = sum(result["pairs"] for result in results.of(names.DRAIN))
    assert drained == len(coaches) * len(CRITICAL_NAMES)


@pytest.mark.usefixtures("celery_worker")
def test_fallback_polls_while_red_and_stops_once_green(
    database_url: str, redis_client: redis.Redis, celery_app: PipelineApp, results: Results,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    coaches = coach_ids(database_url)
    celery_app.send_task(names.FALLBACK_POLL)  # no listener has reported: red
    (poll,) = wait_for_result(results, names.FALLBACK_POLL, 1)
    assert poll == {"status": "red", "polled": True, "coaches": len(coaches)}
    settle(database_url, redis_client, coaches)
    celery_app.send_task(names.CHECK_REALTIME)  # first look: red, taken as a loss of green
    (lost,) = wait_for_result(results, names.CHECK_REALTIME, 1)
    assert lost == {"status": "red", "changed_from": "green"}
    celery_app.send_task(names.FALLBACK_POLL)  # again, well within FALLBACK_POLL_S
    assert wait_for_result(results, names.FALLBACK_POLL, 2)[1] == {
        "status": "red",
        "polled": False,
    }

    # A listener connects: the status check sees red → green, refreshes once, polling stops.
    HealthBoard(redis_client, stale_after_s=3).report(
        ListenerHealth("test", "postgres", ListenerState.CONNECTED, time.time())
    )
    celery_app.send_task(names.CHECK_REALTIME)
    restored = wait_for_result(results, names.CHECK_REALTIME, 2)[1]
    assert restored == {"status": Color.GREEN.value, "changed_from": Color.RED.value}
    celery_app.send_task(names.FALLBACK_POLL)
    assert wait_for_result(results, names.FALLBACK_POLL, 3)[2] == {
        "status": "green",
        "polled": False,
    }
    settle(database_url, redis_client, coaches)


@pytest.mark.usefixtures("celery_worker")
def test_advance_summaries_reads_again_the_next_sessions_that_began(
    database_url: str, celery_app: PipelineApp, results: Results
) -> None:
    """Beat's `advance-summaries` on a worker: a client's kept next session has begun; the
    task reads it again (the worker's engines are read-only; it writes with its own)."""
    seed.load(database_url, SMALL)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE coachpipe.client_schedules SET next_scheduled_at = now() - interval '1 hour'"
            " WHERE client_id = (SELECT min(client_id::text)::uuid FROM coachpipe.client_schedules)"
        )
        celery_app.send_task(names.ADVANCE_SUMMARIES)
        assert wait_for_result(results, names.ADVANCE_SUMMARIES, 1) == [{"coaches": 1}]
        passed = conn.execute(
            "SELECT count(*) FROM coachpipe.client_schedules WHERE next_scheduled_at <= now()"
        ).fetchone()
        assert passed == (0,)


def wait_for_result(results: Results, name: str, count: int) -> list[Any]:
    from devtools.processes import wait_for

    def enough() -> list[Any]:
        found = results.of(name)
        return found if len(found) >= count else []

    return wait_for(enough, 30, message=f"{count} results of {name}")


class TestCostWidenedWindows:
    @pytest.fixture
    def celery_app(self, settings: Settings, broker_url: str) -> Iterator[PipelineApp]:
        """The app with a share so small and a window so short that any measured drain widens
        its coaches' windows (to their cap, PENDING_STALE_S) and makes them drained alone."""
        redis.Redis.from_url(broker_url).flushdb()
        app = create_app(settings.model_copy(update={"coach_share": 1e-6, "debounce_ms": 0}))
        yield app
        app.close()

    @pytest.mark.usefixtures("celery_worker")
    def test_drains_charge_their_time_to_their_coaches_and_widened_ones_drain_alone(
        self,
        database_url: str,
        redis_client: redis.Redis,
        celery_app: PipelineApp,
        results: Results,
    ) -> None:
        seed.load(database_url, SMALL)
        coaches = coach_ids(database_url)
        scheduler = celery_app.runtime.scheduler
        scheduler.request([(name, coach) for coach in coaches for name in CRITICAL_NAMES])
        settle(database_url, redis_client, coaches)
        assert scheduler.widened() == dict.fromkeys(coaches, scheduler.stale_ms)
        drains_before = len(results.of(names.DRAIN))
        secondary = sorted(set(NAMES) - set(CRITICAL_NAMES))[0]
        scheduler.request([(secondary, coach) for coach in coaches])
        settle(database_url, redis_client, coaches)
        later = [r for r in results.of(names.DRAIN)[drains_before:] if r["pairs"]]
        assert sum(r["pairs"] for r in later) == len(coaches)
        assert all(r["coaches"] == 1 for r in later), "a widened coach is drained alone"
