"""The listener's invalidation strategies against a real Redis and broker: the product's
dedup strategy and the benchmark's naive one, and which one a listener uses."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from config import Settings
from devtools.bench.naive_listener import NaiveInvalidation
from listeners.invalidation import ScheduledInvalidation
from listeners.postgres_source import PostgresSource
from listeners.runner import Listener
from pipeline.events import ChangeEvent, ChangeType
from pipeline.freshness import Freshness
from pipeline.routing import TABLE_AGGREGATES
from tasks import names
from tasks.pipeline_app import PipelineApp


def session_events(coach: uuid.UUID, count: int) -> list[ChangeEvent]:
    now = datetime.now(UTC)
    return [
        ChangeEvent("sessions", ChangeType.INSERT, {"coach_id": str(coach)}, None, now)
        for _ in range(count)
    ]


def queued(broker: redis.Redis, queue: str) -> list[tuple[str, list[Any]]]:
    """(task name, args) of every message waiting in `queue`."""
    messages = []
    for raw in broker.lrange(queue, 0, -1):
        message = orjson.loads(raw)
        args = orjson.loads(base64.b64decode(message["body"]))[0]
        messages.append((message["headers"]["task"], args))
    return messages


def test_dedup_asks_for_one_drain_of_the_coach_s_shard_however_many_events(
    pipeline_app: PipelineApp, broker_url: str, redis_client: redis.Redis
) -> None:
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    coach = uuid.uuid4()
    strategy = ScheduledInvalidation(
        pipeline_app.runtime.scheduler, Freshness(pipeline_app.runtime.redis)
    )
    strategy.invalidate(session_events(coach, 20))
    drains = queued(broker, names.REALTIME_QUEUE)
    scheduler = pipeline_app.runtime.scheduler
    assert drains == [(names.DRAIN, [scheduler.shard_of(coach)])]  # one task answers the change
    claim = scheduler.claim(scheduler.shard_of(coach), "t1", 10)
    assert sorted(claim.by_aggregate()) == sorted(TABLE_AGGREGATES["sessions"])
    assert not broker.llen(names.REFRESH_QUEUE)


def test_naive_sends_one_task_per_event_and_aggregate(
    pipeline_app: PipelineApp, broker_url: str, redis_client: redis.Redis
) -> None:
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    coach = uuid.uuid4()
    NaiveInvalidation(pipeline_app.sender).invalidate(session_events(coach, 20))
    sent = queued(broker, names.REALTIME_QUEUE)
    assert len(sent) == 20 * len(TABLE_AGGREGATES["sessions"])
    assert {name for name, _ in sent} == {names.REFRESH_BATCH}
    assert all(args[1] == [str(coach)] for _, args in sent)
    assert not redis_client.keys("coachpipe:due:*")  # dedup never saw them


def test_a_listener_uses_the_strategy_it_is_given_and_dedup_otherwise(
    settings: Settings, pipeline_app: PipelineApp, redis_client: redis.Redis
) -> None:
    source = PostgresSource(settings)
    engine = pipeline_app.runtime.engine
    default = Listener(
        source, settings, client=redis_client, engine=engine, sender=pipeline_app.sender
    )
    assert isinstance(default.invalidation, ScheduledInvalidation)
    assert isinstance(default.invalidation, ScheduledInvalidation)
    assert default.invalidation.scheduler is default.scheduler
    naive = NaiveInvalidation(pipeline_app.sender)
    chosen = Listener(
        source,
        settings,
        client=redis_client,
        engine=engine,
        sender=pipeline_app.sender,
        invalidation=naive,
    )
    assert chosen.invalidation is naive
