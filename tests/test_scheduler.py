"""The recompute scheduler across processes, against a real Redis."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest
import redis

from devtools.processes import wait_for
from pipeline import keys
from pipeline.scheduler import RecomputeScheduler
from tests.recording_sender import RecordingSender

WINDOW_MS = 200


def scheduler_for(
    url: str, window_ms: int = WINDOW_MS, stale_ms: int = 30_000, late_ms: int = 60_000
) -> tuple[RecomputeScheduler, RecordingSender]:
    """A scheduler whose drains nobody runs (the sender records them): `late_ms` is long by
    default, so a slow test machine does not presume them lost."""
    sender = RecordingSender()
    client = redis.Redis.from_url(url)
    scheduler = RecomputeScheduler(
        client, sender, window_ms=window_ms, stale_ms=stale_ms, late_ms=late_ms
    )
    return scheduler, sender


def hammer(url: str, coach: str, times: int, start: float, out: multiprocessing.Queue[int]) -> None:
    scheduler, sender = scheduler_for(url)
    while time.time() < start:
        time.sleep(0.001)  # a common start line, so the processes race
    for _ in range(times):
        scheduler.request([("coach-stats", uuid.UUID(coach))])
    out.put(len(sender.drains))


def test_eight_processes_requesting_one_key_send_exactly_one_drain(redis_url: str) -> None:
    coach = str(uuid.uuid4())
    out: multiprocessing.Queue[int] = multiprocessing.Queue()
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
    scheduler, _ = scheduler_for(redis_url)
    claim = scheduler.claim("coach-stats", "task-1", 100)
    assert claim.coaches == [uuid.UUID(coach)]


def test_different_keys_are_each_recomputed_once(redis_url: str) -> None:
    scheduler, sender = scheduler_for(redis_url)
    coaches = [uuid.uuid4() for _ in range(50)]
    outcome = scheduler.request(
        [(name, c) for c in coaches for name in ("coach-stats", "coach-clients")]
    )
    assert outcome.enqueued == 100
    # one drain per aggregate
    assert sorted(sender.drains) == [("coach-clients", 0.0), ("coach-stats", 0.0)]
    stats = scheduler.claim("coach-stats", "t1", 1000)
    clients = scheduler.claim("coach-clients", "t2", 1000)
    assert sorted(stats.coaches) == sorted(coaches)
    assert sorted(clients.coaches) == sorted(coaches)
    assert len(sender.drains) == 2  # nothing left due: no follow-up


def test_idle_key_is_due_at_once_and_hot_key_waits_for_the_window(redis_url: str) -> None:
    scheduler, sender = scheduler_for(redis_url)
    coach = uuid.uuid4()
    first = scheduler.request([("coach-stats", coach)])
    assert first.drains == {"coach-stats": 0.0}  # leading edge: no countdown
    assert sender.drains == [("coach-stats", 0.0)]
    claim = scheduler.claim("coach-stats", "t1", 10)
    assert claim.coaches == [coach]
    scheduler.release("coach-stats", "t1")
    second = scheduler.request([("coach-stats", coach)])  # within the window of that recompute
    countdown = second.drains["coach-stats"]
    assert 0 < countdown <= WINDOW_MS / 1000
    assert sender.drains[-1] == ("coach-stats", countdown)
    assert scheduler.claim("coach-stats", "t2", 10).coaches == []  # not due yet
    wait_for(
        lambda: scheduler.claim("coach-stats", "t3", 10).coaches == [coach],
        10,
        interval=0.01,
        message="the coach is due once the window has passed",
    )


def test_a_change_during_a_recompute_schedules_one_more(redis_url: str) -> None:
    scheduler, sender = scheduler_for(redis_url, window_ms=0)
    coach = uuid.uuid4()
    scheduler.request([("coach-stats", coach)])
    assert scheduler.claim("coach-stats", "t1", 10).coaches == [coach]
    # the marker is gone before the recompute reads Postgres: a new change is not suppressed
    again = scheduler.request([("coach-stats", coach)])
    assert again.enqueued == 1 and again.suppressed == 0
    assert sender.drains == [("coach-stats", 0.0), ("coach-stats", 0.0)]


def test_a_redelivered_drain_recomputes_what_it_claimed_before(redis_url: str) -> None:
    scheduler, _ = scheduler_for(redis_url)
    coach = uuid.uuid4()
    scheduler.request([("coach-stats", coach)], {("coach-stats", coach): 1234})
    first = scheduler.claim("coach-stats", "same-task", 10)
    # the worker dies here; the broker redelivers the same task id
    second = scheduler.claim("coach-stats", "same-task", 10)
    assert second.coaches == first.coaches == [coach]
    assert second.commit_ms == {coach: 1234}
    scheduler.release("coach-stats", "same-task")
    assert scheduler.claim("coach-stats", "same-task", 10).coaches == []


def test_claims_of_vanished_tasks_are_swept_back(redis_url: str) -> None:
    scheduler, sender = scheduler_for(redis_url, stale_ms=100)
    coach = uuid.uuid4()
    scheduler.request([("coach-stats", coach)])
    scheduler.claim("coach-stats", "lost-task", 10)
    sent = len(sender.drains)
    assert scheduler.sweep("coach-stats") == 0  # too young to be lost
    assert len(sender.drains) == sent
    wait_for(
        lambda: scheduler.sweep("coach-stats") == 1,
        10,
        interval=0.01,
        message="the claim is swept once older than stale_ms",
    )
    assert sender.drains[sent:] == [("coach-stats", 0.0)]
    assert scheduler.claim("coach-stats", "new-task", 10).coaches == [coach]


def test_a_stale_marker_is_rescheduled_instead_of_suppressing_forever(redis_url: str) -> None:
    scheduler, sender = scheduler_for(redis_url, stale_ms=100)
    coach = uuid.uuid4()
    scheduler.request([("coach-stats", coach)])  # its drain task is lost
    wait_for(
        lambda: scheduler.request([("coach-stats", coach)]).enqueued == 1,
        10,
        interval=0.01,
        message="a marker older than stale_ms no longer suppresses",
    )
    assert sender.drains == [("coach-stats", 0.0), ("coach-stats", 0.0)]


@pytest.mark.parametrize("batch", [1, 7])
def test_a_batch_larger_than_the_limit_sends_a_follow_up_at_once(
    redis_url: str, batch: int
) -> None:
    scheduler, sender = scheduler_for(redis_url)
    coaches = [uuid.uuid4() for _ in range(batch + 3)]
    scheduler.request([("coach-stats", c) for c in coaches])
    claim = scheduler.claim("coach-stats", "t1", batch)
    assert len(claim.coaches) == batch
    assert sender.drains == [("coach-stats", 0.0), ("coach-stats", 0.0)]
    client = redis.Redis.from_url(redis_url)
    assert client.zcard(keys.due("coach-stats")) == 3


def test_one_wide_refresh_is_pending_per_aggregate_until_it_starts(redis_url: str) -> None:
    scheduler, sender = scheduler_for(redis_url)
    assert scheduler.request_wide(["coach-stats", "coach-clients"], "no coach id") == [
        "coach-clients",
        "coach-stats",
    ]
    assert scheduler.request_wide(["coach-stats"], "again") == []
    scheduler.start_wide("coach-stats")
    assert scheduler.request_wide(["coach-stats", "coach-clients"], "after start") == [
        "coach-stats"
    ]
    assert sender.wide_refreshes == [
        ("coach-clients", "no coach id"),
        ("coach-stats", "no coach id"),
        ("coach-stats", "after start"),
    ]


def test_requests_and_claims_survive_redis_forgetting_its_scripts(redis_url: str) -> None:
    scheduler, _ = scheduler_for(redis_url)
    coach = uuid.uuid4()
    redis.Redis.from_url(redis_url).script_flush()
    assert scheduler.request([("coach-stats", coach)]).enqueued == 1
    redis.Redis.from_url(redis_url).script_flush()
    assert scheduler.claim("coach-stats", "t1", 10).coaches == [coach]


def test_a_drain_lost_between_marking_and_sending_is_sent_again_by_the_next_request(
    redis_url: str,
) -> None:
    """A listener killed after its request marked the coach due but before the drain reached
    the broker: the restarted listener's replayed request finds the coach still due long after
    its drain should have run, and sends another (it used to be suppressed until stale)."""
    coach = uuid.uuid4()
    killed, lost = scheduler_for(redis_url, window_ms=0, late_ms=100)
    killed.request([("coach-stats", coach)])
    assert len(lost.drains) == 1  # sent, but never arrives: the process died
    replayed, sender = scheduler_for(redis_url, window_ms=0, late_ms=100)
    assert replayed.request([("coach-stats", coach)]).suppressed == 1
    assert sender.drains == []  # not late yet: the first drain may still be on its way

    def late() -> bool:
        replayed.request([("coach-stats", coach)])
        return bool(sender.drains)

    wait_for(late, 5, interval=0.05, message="a drain sent again")
    assert [d[0] for d in sender.drains] == ["coach-stats"]
    claim = replayed.claim("coach-stats", "task-2", 10)
    assert claim.coaches == [coach]
