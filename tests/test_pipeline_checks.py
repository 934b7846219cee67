"""The end-to-end tests' own check: a timed-out `settle` reports what is wrong at the timeout."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import redis

from pipeline import keys
from pipeline.scheduler import RecomputeScheduler
from pipeline.store import AggregateStore
from tests.pipeline_checks import CRITICAL_NAMES, settle
from tests.recording_sender import RecordingSender


def test_a_timed_out_settle_names_the_mismatches_of_its_end_not_its_start(
    database_url: str, redis_client: redis.Redis
) -> None:
    coach = uuid.uuid4()
    first = CRITICAL_NAMES[0]
    now = datetime.now(UTC)
    AggregateStore(redis_client).write(
        first, 1, 1, {coach: {"wrong": True}}, snapshot_at=now, computed_at=now
    )
    # The wrong value is there when the wait begins (stale) and gone long before it ends.
    redis_client.pexpire(keys.aggregate(first, coach), 200)
    with pytest.raises(AssertionError) as timed_out:
        settle(database_url, redis_client, [coach], timeout=2)
    message = str(timed_out.value)
    assert f"{len(CRITICAL_NAMES)} wrong" in message, message
    assert f"{first}:{coach}: missing" in message, message
    assert "stale" not in message, message
    assert "pending" not in message, message


def test_a_timed_out_settle_says_when_recomputes_are_still_pending(
    database_url: str, redis_client: redis.Redis
) -> None:
    coach = uuid.uuid4()
    pending = RecomputeScheduler(redis_client, RecordingSender(), window_ms=0, stale_ms=60_000)
    pending.request([(CRITICAL_NAMES[0], coach)])  # a drain nobody runs
    with pytest.raises(AssertionError, match="recomputes still pending or claimed"):
        settle(database_url, redis_client, [coach], timeout=0.5)
