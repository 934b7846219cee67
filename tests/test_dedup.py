"""Dedup and debounce across processes, against a real Redis."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest
import redis

from pipeline import keys
from pipeline.dedup import Dedup

WINDOW_MS = 200


def dedup_for(url: str, window_ms: int = WINDOW_MS, stale_ms: int = 30_000) -> Dedup:
    return Dedup(redis.Redis.from_url(url), window_ms=window_ms, stale_ms=stale_ms)


def hammer(url: str, coach: str, times: int, start: float, out: multiprocessing.Queue) -> None:
    dedup = dedup_for(url)
    while time.time() < start:
        time.sleep(0.001)
    drains = 0
    for _ in range(times):
        drains += len(dedup.request([("coach-stats", uuid.UUID(coach))]).drains)
    out.put(drains)


def test_eight_processes_requesting_one_key_enqueue_exactly_one_drain(redis_url: str) -> None:
    coach = str(uuid.uuid4())
    out: multiprocessing.Queue = multiprocessing.Queue()
    start = time.time() + 0.5
    procs = [
        multiprocessing.Process(target=hammer, args=(redis_url, coach, 1000, start, out))
        for _ in range(8)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert sum(out.get(timeout=5) for _ in procs) == 1
    dedup = dedup_for(redis_url)
    claim = dedup.claim("coach-stats", "task-1", 100)
    assert claim.coaches == [uuid.UUID(coach)]


def test_different_keys_are_each_recomputed_once(redis_url: str) -> None:
    dedup = dedup_for(redis_url)
    coaches = [uuid.uuid4() for _ in range(50)]
    outcome = dedup.request(
        [(name, c) for c in coaches for name in ("coach-stats", "coach-clients")]
    )
    assert outcome.enqueued == 100
    assert set(outcome.drains) == {"coach-stats", "coach-clients"}  # one drain per aggregate
    stats = dedup.claim("coach-stats", "t1", 1000)
    clients = dedup.claim("coach-clients", "t2", 1000)
    assert sorted(stats.coaches) == sorted(coaches)
    assert sorted(clients.coaches) == sorted(coaches)


def test_idle_key_is_due_at_once_and_hot_key_waits_for_the_window(redis_url: str) -> None:
    dedup = dedup_for(redis_url)
    coach = uuid.uuid4()
    first = dedup.request([("coach-stats", coach)])
    assert first.drains == {"coach-stats": 0.0}  # leading edge: no countdown
    claim = dedup.claim("coach-stats", "t1", 10)
    assert claim.coaches == [coach]
    dedup.release("coach-stats", "t1")
    second = dedup.request([("coach-stats", coach)])  # within the window of that recompute
    countdown = second.drains["coach-stats"]
    assert 0 < countdown <= WINDOW_MS / 1000
    assert dedup.claim("coach-stats", "t2", 10).coaches == []  # not due yet
    time.sleep(WINDOW_MS / 1000 + 0.05)
    assert dedup.claim("coach-stats", "t3", 10).coaches == [coach]


def test_a_change_during_a_recompute_schedules_one_more(redis_url: str) -> None:
    dedup = dedup_for(redis_url, window_ms=0)
    coach = uuid.uuid4()
    dedup.request([("coach-stats", coach)])
    assert dedup.claim("coach-stats", "t1", 10).coaches == [coach]
    # the marker is gone before the recompute reads Postgres: a new change is not suppressed
    again = dedup.request([("coach-stats", coach)])
    assert again.enqueued == 1 and again.suppressed == 0


def test_a_redelivered_drain_recomputes_what_it_claimed_before(redis_url: str) -> None:
    dedup = dedup_for(redis_url)
    coach = uuid.uuid4()
    dedup.request([("coach-stats", coach)], {("coach-stats", coach): 1234})
    first = dedup.claim("coach-stats", "same-task", 10)
    # the worker dies here; the broker redelivers the same task id
    second = dedup.claim("coach-stats", "same-task", 10)
    assert second.coaches == first.coaches == [coach]
    assert second.commit_ms == {coach: 1234}
    dedup.release("coach-stats", "same-task")
    assert dedup.claim("coach-stats", "same-task", 10).coaches == []


def test_claims_of_vanished_tasks_are_swept_back(redis_url: str) -> None:
    dedup = dedup_for(redis_url, stale_ms=100)
    coach = uuid.uuid4()
    dedup.request([("coach-stats", coach)])
    dedup.claim("coach-stats", "lost-task", 10)
    assert dedup.sweep("coach-stats")[0] == 0  # too young to be lost
    time.sleep(0.15)
    requeued, countdown = dedup.sweep("coach-stats")
    assert requeued == 1 and countdown is not None
    assert dedup.claim("coach-stats", "new-task", 10).coaches == [coach]


def test_a_stale_marker_is_rescheduled_instead_of_suppressing_forever(redis_url: str) -> None:
    dedup = dedup_for(redis_url, stale_ms=100)
    coach = uuid.uuid4()
    dedup.request([("coach-stats", coach)])  # its drain task is lost
    time.sleep(0.15)
    outcome = dedup.request([("coach-stats", coach)])
    assert outcome.enqueued == 1 and "coach-stats" in outcome.drains


@pytest.mark.parametrize("batch", [1, 7])
def test_a_batch_larger_than_the_limit_asks_for_a_follow_up_at_once(
    redis_url: str, batch: int
) -> None:
    dedup = dedup_for(redis_url)
    coaches = [uuid.uuid4() for _ in range(batch + 3)]
    dedup.request([("coach-stats", c) for c in coaches])
    claim = dedup.claim("coach-stats", "t1", batch)
    assert len(claim.coaches) == batch
    assert claim.follow_up_s == 0.0
    client = redis.Redis.from_url(redis_url)
    assert client.zcard(keys.due("coach-stats")) == 3


def test_requests_and_claims_survive_redis_forgetting_its_scripts(redis_url: str) -> None:
    dedup = dedup_for(redis_url)
    coach = uuid.uuid4()
    redis.Redis.from_url(redis_url).script_flush()
    assert dedup.request([("coach-stats", coach)]).enqueued == 1
    redis.Redis.from_url(redis_url).script_flush()
    assert dedup.claim("coach-stats", "t1", 10).coaches == [coach]
