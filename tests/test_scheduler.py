"""The recompute scheduler across processes, against a real Redis."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from typing import cast

import pytest
import redis

from devtools.processes import wait_for
from pipeline import keys
from pipeline.recompute import RecomputeResult
from pipeline.scheduler import (
    FORMER_DEFAULT_SHARDS,
    RecomputeScheduler,
    backlog,
    idle,
    shard_of,
)
from tests.pipeline_checks import widen
from tests.recording_sender import RecordingSender

WINDOW_MS = 200
SHARDS = 4


def scheduler_for(
    url: str,
    window_ms: int = WINDOW_MS,
    stale_ms: int = 30_000,
    late_ms: int = 60_000,
    lease_ms: int = 60_000,
    shards: int = SHARDS,
) -> tuple[RecomputeScheduler, RecordingSender]:
    """A scheduler whose drains nobody runs (the sender records them): `late_ms` and
    `lease_ms` are long by default, so a slow test machine does not presume them lost."""
    sender = RecordingSender()
    client = redis.Redis.from_url(url)
    scheduler = RecomputeScheduler(
        client,
        sender,
        window_ms=window_ms,
        stale_ms=stale_ms,
        late_ms=late_ms,
        lease_ms=lease_ms,
        shards=shards,
    )
    return scheduler, sender


def coaches_in_one_shard(count: int) -> list[uuid.UUID]:
    """`count` random coaches that share a shard."""
    first = uuid.uuid4()
    found = [first]
    while len(found) < count:
        coach = uuid.uuid4()
        if shard_of(coach, SHARDS) == shard_of(first, SHARDS):
            found.append(coach)
    return found


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
    claim = scheduler.claim(scheduler.shard_of(uuid.UUID(coach)), "task-1", 100)
    assert claim.pairs == [("coach-stats", uuid.UUID(coach))]


def test_one_drain_per_shard_takes_every_due_aggregate_of_its_coaches(redis_url: str) -> None:
    """A change routed to several aggregates of a coach is answered by one drain task, which
    holds all of them (and recomputes them in one snapshot)."""
    scheduler, sender = scheduler_for(redis_url)
    coaches = [uuid.uuid4() for _ in range(50)]
    outcome = scheduler.request(
        [(name, c) for c in coaches for name in ("coach-stats", "coach-clients")]
    )
    assert outcome.enqueued == 100
    shards = sorted({scheduler.shard_of(c) for c in coaches})
    assert sorted(sender.drains) == [(shard, 0.0) for shard in shards]  # one drain per shard
    for shard in shards:
        claim = scheduler.claim(shard, f"t{shard}", 1000)
        mine = [c for c in coaches if scheduler.shard_of(c) == shard]
        assert claim.by_aggregate() == {"coach-clients": sorted(mine), "coach-stats": sorted(mine)}
    assert len(sender.drains) == len(shards)  # nothing left due: no follow-up


def test_a_batch_takes_every_due_aggregate_of_each_coach_it_takes(redis_url: str) -> None:
    scheduler, _ = scheduler_for(redis_url)
    coaches = coaches_in_one_shard(3)
    names = ("coach-activity", "coach-clients", "coach-stats")
    scheduler.request([(name, c) for c in coaches for name in names])
    shard = scheduler.shard_of(coaches[0])
    first = scheduler.claim(shard, "t1", 2)
    assert len(first.coaches) == 2
    assert first.by_aggregate() == dict.fromkeys(names, first.coaches)
    rest = scheduler.claim(shard, "t2", 2)
    assert rest.by_aggregate() == dict.fromkeys(names, sorted(set(coaches) - set(first.coaches)))


def test_idle_key_is_due_at_once_and_hot_key_waits_for_the_window(redis_url: str) -> None:
    scheduler, sender = scheduler_for(redis_url)
    coach = uuid.uuid4()
    shard = scheduler.shard_of(coach)
    first = scheduler.request([("coach-stats", coach)])
    assert first.drains == {shard: 0.0}  # leading edge: no countdown
    assert sender.drains == [(shard, 0.0)]
    claim = scheduler.claim(shard, "t1", 10)
    assert claim.coaches == [coach]
    scheduler.release(shard, "t1")
    second = scheduler.request([("coach-stats", coach)])  # within the window of that recompute
    countdown = second.drains[shard]
    assert 0 < countdown <= WINDOW_MS / 1000
    assert sender.drains[-1] == (shard, countdown)
    assert scheduler.claim(shard, "t2", 10).coaches == []  # not due yet
    wait_for(
        lambda: scheduler.claim(shard, "t3", 10).coaches == [coach],
        10,
        interval=0.01,
        message="the coach is due once the window has passed",
    )


def test_the_window_is_per_aggregate_and_coach(redis_url: str) -> None:
    """A hot pair waits for its window; another aggregate of the same coach is due at once and
    does not wait with it."""
    scheduler, _ = scheduler_for(redis_url)
    coach = uuid.uuid4()
    shard = scheduler.shard_of(coach)
    scheduler.request([("coach-stats", coach)])
    scheduler.claim(shard, "t1", 10)
    scheduler.request([("coach-stats", coach), ("coach-clients", coach)])
    assert scheduler.claim(shard, "t2", 10).pairs == [("coach-clients", coach)]


def test_a_change_during_a_recompute_schedules_one_more(redis_url: str) -> None:
    scheduler, sender = scheduler_for(redis_url, window_ms=0)
    coach = uuid.uuid4()
    shard = scheduler.shard_of(coach)
    scheduler.request([("coach-stats", coach)])
    assert scheduler.claim(shard, "t1", 10).coaches == [coach]
    # the marker is gone before the recompute reads Postgres: a new change is not suppressed
    again = scheduler.request([("coach-stats", coach)])
    assert again.enqueued == 1 and again.suppressed == 0
    assert sender.drains == [(shard, 0.0), (shard, 0.0)]


def test_a_redelivered_drain_recomputes_what_it_claimed_before(redis_url: str) -> None:
    scheduler, _ = scheduler_for(redis_url)
    coach = uuid.uuid4()
    shard = scheduler.shard_of(coach)
    scheduler.request([("coach-stats", coach)], {("coach-stats", coach): 1234})
    first = scheduler.claim(shard, "same-task", 10)
    # the worker dies here; the broker redelivers the same task id
    second = scheduler.claim(shard, "same-task", 10)
    assert second.pairs == first.pairs == [("coach-stats", coach)]
    assert second.commit_ms == {("coach-stats", coach): 1234}
    scheduler.release(shard, "same-task")
    assert scheduler.claim(shard, "same-task", 10).coaches == []


def test_claims_of_dead_tasks_are_swept_back_once_their_lease_expires(redis_url: str) -> None:
    scheduler, sender = scheduler_for(redis_url, lease_ms=300)
    coach = uuid.uuid4()
    shard = scheduler.shard_of(coach)
    scheduler.request([("coach-stats", coach)], {("coach-stats", coach): 1234})
    scheduler.claim(shard, "dead-task", 10)
    sent = len(sender.drains)
    assert scheduler.sweep() == {}  # the lease still holds
    assert len(sender.drains) == sent
    wait_for(
        lambda: scheduler.sweep() == {shard: 1},
        10,
        interval=0.01,
        message="the claim is swept once its lease expired",
    )
    assert sender.drains[sent:] == [(shard, 0.0)]
    assert not scheduler.renew(shard, "dead-task"), "a renewal after the sweep finds it gone"
    with scheduler.lease(shard, "dead-task") as lease:  # the task was alive after all
        wait_for(lambda: lease.lost, 10, interval=0.05, message="its keeper to find it lost")
    claim = scheduler.claim(shard, "new-task", 10)
    assert claim.commit_ms == {("coach-stats", coach): 1234}


@pytest.mark.parametrize(
    ("former_shards", "recorded"),
    [(FORMER_DEFAULT_SHARDS, False), (16, True)],
    ids=["former-default-never-recorded", "recorded-by-the-former-request"],
)
def test_work_left_in_a_shard_no_longer_used_is_counted_swept_and_drained(
    redis_url: str, former_shards: int, recorded: bool
) -> None:
    """`SCHEDULER_SHARDS` lowered under a running pipeline: a drain of the former count
    claimed a pair in a shard the new processes no longer use, then died. That pair still
    counts as backlog, and the new processes' sweep gives it back with a drain of that shard
    (a drain task answers any shard). Work left in the former default's 8 shards is found
    though no release before this one recorded its count; beyond 8, through the count the
    former process recorded at its first request (`keys.SHARDS_SEEN`)."""
    client = redis.Redis.from_url(redis_url)
    client.delete(keys.SHARDS_SEEN)
    former, _ = scheduler_for(redis_url, lease_ms=300, shards=former_shards)
    beyond = FORMER_DEFAULT_SHARDS if recorded else 1  # a shard only the record can tell
    coach = next(c for c in iter(uuid.uuid4, None) if shard_of(c, former_shards) >= beyond)
    left = shard_of(coach, former_shards)
    former.request([("coach-stats", coach)], {("coach-stats", coach): 1234})
    assert former.claim(left, "dead-task", 10).pairs == [("coach-stats", coach)]
    if recorded:
        assert client.get(keys.SHARDS_SEEN) == str(former_shards).encode()
    else:
        client.delete(keys.SHARDS_SEEN)  # a release before this one recorded nothing

    current, sender = scheduler_for(redis_url, shards=1)
    assert not idle(client, 1)
    assert backlog(client, 1).claimed == {"coach-stats": 1}
    wait_for(
        lambda: current.sweep() == {left: 1},
        10,
        interval=0.01,
        message="the former shard's expired claim is swept back",
    )
    assert sender.drains == [(left, 0.0)]
    assert current.due_pairs() == {("coach-stats", coach)}
    claim = current.claim(left, "drain-of-the-former-shard", 10)
    assert claim.commit_ms == {("coach-stats", coach): 1234}
    current.release(left, "drain-of-the-former-shard")
    assert idle(client, 1)
    client.delete(keys.SHARDS_SEEN)


def test_a_renewed_lease_outlives_its_first_expiry(redis_url: str) -> None:
    """A long recompute keeps its claim: the `Lease` renews it from a background thread."""
    scheduler, _ = scheduler_for(redis_url, lease_ms=300)
    coach = uuid.uuid4()
    shard = scheduler.shard_of(coach)
    scheduler.request([("coach-stats", coach)])
    scheduler.claim(shard, "busy-task", 10)
    client = redis.Redis.from_url(redis_url)
    first_expiry = client.zscore(keys.claims(shard), "busy-task")
    assert first_expiry is not None
    with scheduler.lease(shard, "busy-task") as lease:
        # wait until Redis' clock is past the first expiry: renewed since, nothing to sweep
        wait_for(
            lambda: client.time()[0] * 1000 + client.time()[1] // 1000 > first_expiry + 300,
            10,
            interval=0.05,
            message="time to pass the first expiry",
        )
        assert scheduler.sweep() == {}
    assert not lease.lost
    scheduler.release(shard, "busy-task")


def test_a_lease_released_while_its_renewal_was_on_the_way_is_not_lost(redis_url: str) -> None:
    """The keeper lists the held leases, the drain ends (drops its lease, releases its claim),
    then the renewal reaches Redis and finds no claim: a drain that ended, not a lost lease
    (whale-fairness, 2026-12-03: `claim_lease_lost` 4 ms into a drain). A claim a sweep took
    back while the drain still holds it is lost."""
    scheduler, _ = scheduler_for(redis_url)
    client = redis.Redis.from_url(redis_url)
    coaches = coaches_in_one_shard(2)
    shard = scheduler.shard_of(coaches[0])
    scheduler.request([("coach-stats", coach) for coach in coaches])
    scheduler.claim(shard, "ended", 1)
    scheduler.claim(shard, "swept", 1)
    with scheduler.lease(shard, "ended") as ended, scheduler.lease(shard, "swept") as swept:
        keeper = ended._keeper
        listed = [ended, swept]
        client.zrem(keys.claims(shard), "swept")  # what a sweep of its lapsed lease does
    scheduler.release(shard, "ended")
    keeper.hold(swept)  # still recomputing
    keeper.renew(listed)
    assert (ended.lost, swept.lost) == (False, True)
    keeper.drop(swept)


def test_a_stale_marker_is_rescheduled_instead_of_suppressing_forever(redis_url: str) -> None:
    scheduler, sender = scheduler_for(redis_url, stale_ms=100)
    coach = uuid.uuid4()
    shard = scheduler.shard_of(coach)
    scheduler.request([("coach-stats", coach)])  # its drain task is lost
    wait_for(
        lambda: scheduler.request([("coach-stats", coach)]).enqueued == 1,
        10,
        interval=0.01,
        message="a marker older than stale_ms no longer suppresses",
    )
    assert sender.drains == [(shard, 0.0), (shard, 0.0)]


@pytest.mark.parametrize("batch", [1, 7])
def test_a_batch_larger_than_the_limit_sends_a_follow_up_at_once(
    redis_url: str, batch: int
) -> None:
    scheduler, sender = scheduler_for(redis_url)
    coaches = coaches_in_one_shard(batch + 3)
    shard = scheduler.shard_of(coaches[0])
    scheduler.request([("coach-stats", c) for c in coaches])
    claim = scheduler.claim(shard, "t1", batch)
    assert len(claim.coaches) == batch
    assert sender.drains == [(shard, 0.0), (shard, 0.0)]
    client = redis.Redis.from_url(redis_url)
    assert client.zcard(keys.due(shard)) == 3


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
    assert scheduler.claim(scheduler.shard_of(coach), "t1", 10).coaches == [coach]


def test_a_drain_lost_between_marking_and_sending_is_sent_again_by_the_next_request(
    redis_url: str,
) -> None:
    """A listener killed after its request marked the coach due but before the drain reached
    the broker: the restarted listener's replayed request finds the coach still due long after
    its drain should have run, and sends another (it used to be suppressed until stale)."""
    coach = uuid.uuid4()
    # late after 1 s: the replay below comes sooner even on a loaded machine
    killed, lost = scheduler_for(redis_url, window_ms=0, late_ms=1000)
    killed.request([("coach-stats", coach)])
    assert len(lost.drains) == 1  # sent, but never arrives: the process died
    replayed, sender = scheduler_for(redis_url, window_ms=0, late_ms=1000)
    assert replayed.request([("coach-stats", coach)]).suppressed == 1
    assert sender.drains == []  # not late yet: the first drain may still be on its way

    def late() -> bool:
        replayed.request([("coach-stats", coach)])
        return bool(sender.drains)

    wait_for(late, 10, interval=0.05, message="a drain sent again")
    shard = replayed.shard_of(coach)
    assert sender.drains == [(shard, 0.0)]
    assert replayed.claim(shard, "task-2", 10).coaches == [coach]


def test_a_drain_lost_with_its_worker_is_sent_again_by_the_sweep_after_late_ms(
    redis_url: str,
) -> None:
    """A drain prefetched by a worker killed with it stays invisible in the broker until the
    visibility timeout: the sweep resends it once it is `late_ms` overdue, not `stale_ms`."""
    coach = uuid.uuid4()
    scheduler, sender = scheduler_for(redis_url, window_ms=0, late_ms=100)
    scheduler.request([("coach-stats", coach)])
    shard = scheduler.shard_of(coach)
    assert sender.drains == [(shard, 0.0)]
    scheduler.sweep()
    assert len(sender.drains) == 1, "not overdue yet: the drain may still be on its way"
    wait_for(
        lambda: scheduler.sweep() == {} and len(sender.drains) == 2,
        5,
        interval=0.05,
        message="the sweep to resend the drain",
    )
    assert sender.drains[1] == (shard, 0.0)
    assert scheduler.claim(shard, "task-2", 10).coaches == [coach]


def test_a_slow_batch_is_charged_by_weight_not_in_equal_parts(redis_url: str) -> None:
    """The whale bench's first drain beside a whale: the whale, cold, and three ordinary
    coaches in one batch that took 3 s. Split in equal parts, each ordinary coach was charged
    750 ms (cost 191 ms: a 1.9 s window, and drained alone since past the 50 ms window), and
    their changes waited up to 38 s (whale-fairness, quiet machine). Charged by the bytes of
    their values (the whale's 500 client lines against a few lines each), the whale takes
    nearly all of it and the others stay batched."""
    scheduler, _ = scheduler_for(redis_url, window_ms=50)
    whale, *ordinary = coaches_in_one_shard(4)
    shard = scheduler.shard_of(whale)
    weights = {whale: 130_000, **dict.fromkeys(ordinary, 3_000)}
    scheduler.release(shard, "cold-batch", [whale, *ordinary], 3.0, weights)
    widened = scheduler.widened()
    # EWMA from the 5 ms threshold: the whale's sample 2,806 ms → cost 705 ms → 7 s window;
    # each other's 64.7 ms → cost 19.9 ms → 199 ms window, below the 50 ms alone threshold.
    assert 7_000 < widened[whale] < 7_100
    assert all(widened[coach] < 500 for coach in ordinary), widened
    scheduler.request([("coach-stats", coach) for coach in (whale, *ordinary)])
    claims = [set(scheduler.claim(shard, f"next-{n}", 10).coaches) for n in range(2)]
    assert sorted(claims, key=len) == [{whale}, set(ordinary)], "the others still batched"
    pair = coaches_in_one_shard(2)
    scheduler.release(scheduler.shard_of(pair[0]), "even", pair, 1.0, dict.fromkeys(pair, 0))
    windows = scheduler.widened()
    assert windows[pair[0]] == windows[pair[1]], "weights summing to 0: equal parts"


def test_a_costly_coach_gets_a_window_of_its_cost_over_its_share(redis_url: str) -> None:
    """The window widens to max(window, cost / coach_share) for a costly coach (EWMA of its
    drains' time), stays at the window for a cheap one, and narrows back once the costly one
    gets cheap."""
    scheduler, _ = scheduler_for(redis_url, window_ms=50)
    whale, ordinary = coaches_in_one_shard(2)
    shard = scheduler.shard_of(whale)
    # 500 ms a drain: converges to ~500 ms, a 5 s window, so the steps below (a claim, then a
    # request) come within it even on a loaded machine (CI once took 0.55 s between them)
    widen(scheduler, whale, 0.5, 20)
    widen(scheduler, ordinary, 0.002, 20)  # 2 ms: 20 ms / 0.1 share is inside the 50 ms window
    widened = scheduler.widened()
    assert list(widened) == [whale]
    assert 4500 < widened[whale] <= 5000  # cost / share: about 500 ms / 0.1
    scheduler.request([("coach-stats", whale), ("coach-stats", ordinary)])
    taken = {coach for n in range(2) for coach in scheduler.claim(shard, f"t{n}", 10).coaches}
    assert taken == {whale, ordinary}  # in two drains: the whale is taken alone
    client = redis.Redis.from_url(redis_url)

    def scores(key: str) -> dict[uuid.UUID, float]:
        found = cast("list[tuple[bytes, float]]", client.zrange(key, 0, -1, withscores=True))
        return {uuid.UUID(member.decode().split("|")[0]): at for member, at in found}

    not_before = scores(keys.not_before(shard))  # each claim's time plus the coach's window
    assert 3500 < not_before[whale] - not_before[ordinary] < 5100, "the whale's window is wider"
    # its drain waits for the rest of the window (the time the claim took to here is gone)
    before_ms = time.time() * 1000
    outcome = scheduler.request([("coach-stats", whale)])
    after_ms = time.time() * 1000
    assert scores(keys.due(shard))[whale] == not_before[whale], "due when its window has passed"
    countdown_ms = outcome.drains[shard] * 1000
    assert not_before[whale] - after_ms - 1 <= countdown_ms <= not_before[whale] - before_ms + 1
    widen(scheduler, whale, 0.0005, 60)  # the whale got cheap
    assert scheduler.widened() == {}


def test_a_claim_names_its_costly_coaches_and_a_drain_takes_them_last(redis_url: str) -> None:
    """A whale widened by its cost but cheaper than the window (10 ms: a 100 ms window) stays
    batched with the others; the claim names it costly, so the drain recomputes the others
    first (`cheap_first`); a redelivery of the task names it again. Its costly set holds only
    coaches that have pairs in it."""
    scheduler, _ = scheduler_for(redis_url, window_ms=50)
    whale, *ordinary, later = coaches_in_one_shard(4)
    shard = scheduler.shard_of(whale)
    widen(scheduler, whale, 0.01, 30)
    assert list(scheduler.widened()) == [whale]
    pairs = [(name, c) for c in (whale, *ordinary) for name in ("coach-stats", "coach-clients")]
    scheduler.request(pairs)
    claim = scheduler.claim(shard, "t1", 10)
    assert claim.coaches == sorted([whale, *ordinary]) and claim.costly == {whale}
    cheap, costly = claim.cheap_first()
    assert (cheap.coaches, costly.coaches) == (sorted(ordinary), [whale])
    assert (cheap.costly, costly.costly) == (frozenset(), {whale})
    assert sorted([*cheap.pairs, *costly.pairs]) == claim.pairs
    again = scheduler.claim(shard, "t1", 10)  # a redelivery gets its claim back, named alike
    assert (again.pairs, again.costly) == (claim.pairs, {whale})
    scheduler.request([("coach-stats", later)])
    only_cheap = scheduler.claim(shard, "t2", 10)  # the whale is not due: no costly part
    assert only_cheap.costly == frozenset()
    assert [part.coaches for part in only_cheap.cheap_first()] == [[later]]


def test_a_recompute_is_charged_to_its_coaches_in_microseconds_by_weight() -> None:
    """What a drain passes to `release` for each part it recomputed: its time split by the
    bytes of each coach's values, in equal parts when they weigh nothing."""
    coaches = coaches_in_one_shard(3)

    def result(weights: dict[uuid.UUID, int]) -> RecomputeResult:
        return RecomputeResult(
            aggregates=("coach-stats",),
            coaches=len(weights),
            stored=0,
            stale=0,
            versions={},
            seconds=0.03,
            weights=weights,
        )

    assert result({coaches[0]: 8, coaches[1]: 2}).charged_us() == {
        coaches[0]: 24_000,
        coaches[1]: 6_000,
    }
    assert result(dict.fromkeys(coaches, 0)).charged_us() == dict.fromkeys(coaches, 10_000)
    assert result({}).charged_us() == {}


def test_a_widened_coach_is_claimed_alone_and_never_holds_others_behind_it(
    redis_url: str,
) -> None:
    """Oldest due first: a widened coach met first is taken alone (the others go to the
    follow-up drain, sent at once); met behind others it is left to the follow-up drain."""
    scheduler, sender = scheduler_for(redis_url, window_ms=50)
    coaches = sorted(coaches_in_one_shard(4), key=str)  # equal due times: by member
    shard = scheduler.shard_of(coaches[0])
    for whale, others in ((coaches[0], coaches[1:]), (coaches[-1], coaches[:-1])):
        redis.Redis.from_url(redis_url).flushdb()
        widen(scheduler, whale, 0.1, 5)
        scheduler.request([(name, c) for c in coaches for name in ("coach-stats", "coach-clients")])
        sent = len(sender.drains)
        first = scheduler.claim(shard, "t1", 10)
        second = scheduler.claim(shard, "t2", 10)
        assert sender.drains[sent:] == [(shard, 0.0)], "a follow-up at once for what was left"
        if whale == coaches[0]:
            assert (first.coaches, second.coaches) == ([whale], sorted(others))
        else:
            assert (first.coaches, second.coaches) == (sorted(others), [whale])
        assert second.by_aggregate() == dict.fromkeys(
            ("coach-clients", "coach-stats"), second.coaches
        )
