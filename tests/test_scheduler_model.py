"""The recompute scheduler against a plain model of it: a Hypothesis state machine over a real
Redis, with a recording `TaskSender` as the task queue.

The model's unit is the pair (aggregate, coach): two aggregates, four coaches, two shards (so a
shard holds several coaches, and a drain of one shard must leave the other alone).

Time: the scripts read Redis `TIME`. The model runs with `window_ms=0` (every request is due at
once, so which pairs a drain may take does not depend on the clock) and a `stale_ms`, `lease_ms`
and `late_ms` far longer than an example, so nothing goes stale, no lease lapses and no drain is
late by itself. Time passing beyond them is a rule of its own: it shifts every stored timestamp
back by twice `stale_ms` and drops the keys whose PX would have run out, which is exactly what
Redis would hold had the time really passed.

The cost-widened window: each release charges its drain's time (0 or `COST_US`, drawn) to the
claim's coaches, and the model keeps their EWMA exactly (integer µs, as `release.lua`). With
`COACH_SHARE` tiny, any cost > 0 widens a coach's window to its cap, `stale_ms`: a pair claimed
while its coach is widened is due again only after time passes (a drain sent for it carries a
countdown, and the model's broker holds it until then), and a widened coach is claimed alone,
only when it is the oldest due coach of the shard.

Which due coaches a drain takes depends on their timestamps (oldest first, ties by member), so
the model reads the due times from Redis before the claim and checks the taken pairs against
the order they give (only due pairs, every due pair of each coach taken, as many coaches as
the batch and the due set permit, a widened coach alone and only first).
"""

from __future__ import annotations

from typing import cast
from uuid import UUID

import redis
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pipeline import keys
from pipeline.redis_values import as_text
from pipeline.scheduler import RecomputeScheduler, shard_of
from tests.recording_sender import RecordingSender

AGGREGATES = ["coach-clients", "coach-stats"]
WIDE_AGGREGATES = ["coach-stats", "coach-clients"]
COACHES = [UUID(int=n) for n in range(1, 5)]
SHARDS = 2
STALE_MS = 60_000
COACH_SHARE = 1e-8
"""So small that any measured cost widens a coach's window to `STALE_MS`."""
COST_US = 40_000
AGE_MS = 2 * STALE_MS
"""How far back "time passes" moves every timestamp: well past `stale_ms` and `lease_ms`."""

Pair = tuple[str, UUID]
pairs = st.lists(st.tuples(st.sampled_from(AGGREGATES), st.sampled_from(COACHES)), min_size=1,
                 max_size=5)  # fmt: skip
batches = st.integers(min_value=1, max_value=3)


def shard(pair: Pair) -> int:
    return shard_of(pair[1], SHARDS)


class SchedulerModel(RuleBasedStateMachine):
    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        client.flushdb()
        self.redis = client
        self.sender = RecordingSender()
        self.scheduler = RecomputeScheduler(
            client,
            self.sender,
            window_ms=0,
            stale_ms=STALE_MS,
            late_ms=10 * STALE_MS,
            lease_ms=STALE_MS,
            shards=SHARDS,
            coach_share=COACH_SHARE,
            aggregates=AGGREGATES,
        )
        # The model. `due`: pair → its marker is older than stale_ms.
        self.due: dict[Pair, bool] = {}
        self.commits: dict[Pair, int] = {}
        self.tasks: dict[str, tuple[int, dict[Pair, int | None]]] = {}
        """Drain tasks that claimed and have not released: task id → (shard, pairs held)."""
        self.stale_claims: set[str] = set()
        """Tasks whose lease expired (and that a sweep has not taken back yet)."""
        self.entries: dict[Pair, int] = {}
        """How many times each pair was made due (its due entry's generation)."""
        self.held_entries: dict[str, dict[Pair, set[int]]] = {}
        """Per live task, which due entries (generations) of each pair its claim took."""
        self.requested_since_taken: set[Pair] = set()
        self.delivered = dict.fromkeys(range(SHARDS), 0)
        """Per shard, how many of the sent drains the "broker" has delivered (or lost)."""
        self.sends_when_lost: dict[int, int] = {}
        """Per shard, drains sent when the broker lost the queued ones (absent: never lost)."""
        self.wide_pending: set[str] = set()
        self.costs: dict[UUID, int] = {}
        """Coach → measured cost (µs), for widened coaches."""
        self.throttled: set[Pair] = set()
        """Pairs claimed while their coach was widened: requested, due only after time passes."""
        self.unripe: set[Pair] = set()
        """Due pairs whose due time is ahead (their window had not passed when requested)."""
        self.aged_sends = 0
        """Drains sent before time last passed: the broker may deliver them whatever their
        countdown (those sent since only with a countdown of 0)."""
        self.next_commit = 1_000
        self.next_task = 0

    # --- helpers ------------------------------------------------------------------------
    def sent(self, shard_id: int) -> int:
        return sum(1 for sent_to, _ in self.sender.drains if sent_to == shard_id)

    def undelivered(self, shard_id: int) -> int:
        return self.sent(shard_id) - self.delivered[shard_id]

    def deliverable(self, shard_id: int) -> bool:
        """A drain of the shard is due for delivery (ones with a countdown only once time has
        passed; the broker delivers those first, so counts suffice)."""
        ready = sum(
            1
            for n, (sent_to, countdown) in enumerate(self.sender.drains)
            if sent_to == shard_id and (countdown == 0 or n < self.aged_sends)
        )
        return ready > self.delivered[shard_id]

    def widened(self, coach: UUID) -> bool:
        return coach in self.costs

    def charge(self, coaches: list[UUID], seconds: float) -> None:
        """`release.lua`'s EWMA (weight 1/4, threshold window_ms · share · 1000 = 0 here)."""
        elapsed = max(int(seconds * 1_000_000), 0)
        if not coaches:
            return
        sample = elapsed // len(coaches)
        for coach in coaches:
            prior = self.costs.get(coach, 0)
            cost = prior + (sample - prior) // 4
            if cost > 0:
                self.costs[coach] = cost
            else:
                self.costs.pop(coach, None)

    def due_in(self, shard_id: int) -> set[Pair]:
        return {pair for pair in self.due if shard(pair) == shard_id}

    def _now_ms(self) -> int:
        seconds, micros = self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def _scores(self, key: str) -> dict[str, float]:
        entries = cast("list[tuple[bytes, float]]", self.redis.zrange(key, 0, -1, withscores=True))
        return {as_text(member): score for member, score in entries}

    @staticmethod
    def _pair(member: str) -> Pair:
        coach, aggregate = member.split("|")
        return aggregate, UUID(coach)

    def _due_in_redis(self, shard_id: int) -> dict[Pair, float]:
        return {self._pair(m): score for m, score in self._scores(keys.due(shard_id)).items()}

    def _claim(self, task: str, shard_id: int, batch: int) -> None:
        """Run `claim` as a drain task (or its redelivery) would, and check it against the
        model: it hands back what the task held, plus due pairs only: every due pair of as many
        coaches as allowed."""
        prior = self.tasks.get(task, (shard_id, {}))[1]
        due_before = self.due_in(shard_id)
        ripe = due_before - self.unripe
        scores = self._due_in_redis(shard_id)
        order: list[UUID] = []  # coaches by their oldest ripe pair (ties by member)
        for _, member in sorted((scores[pair], f"{pair[1]}|{pair[0]}") for pair in ripe):
            if self._pair(member)[1] not in order:
                order.append(self._pair(member)[1])
        light = [coach for coach in order if not self.widened(coach)]
        expected_coaches = set(order[:1] if order and self.widened(order[0]) else light[:batch])
        if len(light) < len(order):
            event("a claim met a widened coach " + ("first" if order[0] not in light else "behind"))
        if due_before - ripe:
            event("a claim left pairs due later (a widened window)")
        claim = self.scheduler.claim(shard_id, task, batch)
        taken = due_before - set(self._due_in_redis(shard_id))
        taken_coaches = {coach for _, coach in taken}
        assert taken_coaches == expected_coaches, (
            "oldest first, a full batch if it can; a widened coach alone, and only first"
        )
        assert {p for p in ripe if p[1] in taken_coaches} == taken, (
            "a claim takes every ripe due pair of each coach it takes, and nothing else"
        )
        assert set(prior) <= set(claim.commit_ms), "a redelivered task gets its claim back"
        assert set(claim.commit_ms) == set(prior) | taken, "a claim holds nothing that was not due"
        expected = {pair: self.commits.get(pair) for pair in taken} | prior
        assert claim.commit_ms == expected
        for pair in taken:
            del self.due[pair]
            self.commits.pop(pair, None)
            if self.widened(pair[1]):
                self.throttled.add(pair)
            else:
                self.throttled.discard(pair)
        self.requested_since_taken -= taken
        self.tasks[task] = (shard_id, expected)
        if expected:
            self.stale_claims.discard(task)  # a claim that holds pairs starts a fresh lease
        held = self.held_entries.setdefault(task, {})
        for pair in taken:
            held.setdefault(pair, set()).add(self.entries[pair])
        if self.due_in(shard_id):
            assert self.undelivered(shard_id), "pairs left due without a drain to take them"

    def _run_drain(self, shard_id: int, batch: int) -> str:
        self.delivered[shard_id] += 1
        task = self._new_task()
        self._claim(task, shard_id, batch)
        return task

    def _release(self, task: str, seconds: float = 0.0) -> None:
        shard_id, held = self.tasks[task]
        coaches = sorted({coach for _, coach in held})
        self.scheduler.release(shard_id, task, coaches, seconds)
        self.charge(coaches, seconds)
        del self.tasks[task]
        self.held_entries.pop(task, None)
        self.stale_claims.discard(task)

    def _make_due(self, pair: Pair) -> None:
        self.due[pair] = False
        self.entries[pair] = self.entries.get(pair, 0) + 1

    def _new_task(self) -> str:
        self.next_task += 1
        return f"task-{self.next_task}"

    # --- rules --------------------------------------------------------------------------
    @rule(requested=pairs, with_commit=st.booleans())
    def request(self, requested: list[Pair], with_commit: bool) -> None:
        commit = self.next_commit if with_commit else None
        self.next_commit += 1
        sent_before = {s: self.sent(s) for s in range(SHARDS)}
        outcome = self.scheduler.request(requested, dict.fromkeys(requested, commit))
        unique = set(requested)
        suppressed = {pair for pair in unique if pair in self.due and not self.due[pair]}
        enqueued = unique - suppressed
        assert (outcome.enqueued, outcome.suppressed) == (len(enqueued), len(suppressed)), (
            "suppressed exactly when pending and not stale"
        )
        sent = {s for s in range(SHARDS) if self.sent(s) > sent_before[s]}
        assert all(self.sent(s) - sent_before[s] <= 1 for s in sent), "one drain a shard at most"
        assert set(outcome.drains) == sent
        assert sent <= {shard(pair) for pair in enqueued}, "a suppressed request sends nothing"
        for pair in enqueued:
            if self.due.get(pair):
                assert shard(pair) in sent, "a stale marker means its drain was lost: resend"
        for pair in enqueued:
            self._make_due(pair)
            if pair in self.throttled:
                event("a request inside a widened window")
                self.unripe.add(pair)
            else:
                self.unripe.discard(pair)
            if commit is not None:
                self.commits.setdefault(pair, commit)
        self.requested_since_taken |= unique

    @precondition(lambda self: any(self.deliverable(s) for s in range(SHARDS)))
    @rule(data=st.data(), batch=batches)
    def run_drain(self, data: st.DataObject, batch: int) -> None:
        """The broker delivers the oldest drain it holds for a shard; a new task claims."""
        shard_id = data.draw(st.sampled_from([s for s in range(SHARDS) if self.deliverable(s)]))
        self._run_drain(shard_id, batch)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), batch=batches)
    def redeliver(self, data: st.DataObject, batch: int) -> None:
        """A worker died under a task (acks_late): the broker delivers the same task id again."""
        task = data.draw(st.sampled_from(sorted(self.tasks)))
        self._claim(task, self.tasks[task][0], batch)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        """The task, still recomputing, renews its lease: it holds it exactly while its claim
        was not taken back by a sweep (an expired, unswept lease is simply extended)."""
        task = data.draw(st.sampled_from(sorted(self.tasks)))
        shard_id, held = self.tasks[task]
        assert self.scheduler.renew(shard_id, task) == bool(held)
        self.stale_claims.discard(task)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), seconds=st.sampled_from([0.0, COST_US / 1_000_000]))
    def release(self, data: st.DataObject, seconds: float) -> None:
        """The task stored what it claimed, in `seconds`: charged to its coaches."""
        self._release(data.draw(st.sampled_from(sorted(self.tasks))), seconds)

    @rule(data=st.data(), costly=st.booleans())
    def drain_measured(self, data: st.DataObject, costly: bool) -> None:
        """A drain of some coaches of a shard (its claim taken back by a sweep meanwhile, so
        it holds nothing) took 0 or `COST_US`: charged to them all the same."""
        shard_id = data.draw(st.sampled_from(range(SHARDS)))
        mine = [coach for coach in COACHES if shard_of(coach, SHARDS) == shard_id]
        if not mine:
            return
        coaches = sorted(data.draw(st.sets(st.sampled_from(mine), min_size=1)))
        seconds = COST_US / 1_000_000 if costly else 0.0
        self.scheduler.release(shard_id, self._new_task(), coaches, seconds)
        self.charge(coaches, seconds)

    @rule()
    def sweep(self) -> None:
        expected: dict[int, int] = {}
        for task in self.stale_claims:
            shard_id, held = self.tasks[task]
            expected[shard_id] = expected.get(shard_id, 0) + len(held)
        assert self.scheduler.sweep() == expected, "sweep requeues exactly expired leases"
        for task in self.stale_claims:
            shard_id, held = self.tasks[task]
            for pair, commit in held.items():
                if pair not in self.due:
                    self._make_due(pair)
                if commit is not None:  # the oldest change the pending recompute answers
                    self.commits[pair] = min(self.commits.get(pair, commit), commit)
            self.tasks[task] = (shard_id, {})
            self.held_entries[task] = {}
        self.stale_claims.clear()
        for shard_id in range(SHARDS):
            if self.due_in(shard_id):
                assert self.undelivered(shard_id), "after a sweep, due pairs have a drain coming"

    @rule(lose_queued_drains=st.booleans())
    def stale_time_passes(self, lose_queued_drains: bool) -> None:
        """More than stale_ms passes (optionally the broker loses the drains it held)."""
        for shard_id in range(SHARDS):
            for key in (keys.due(shard_id), keys.claims(shard_id), keys.not_before(shard_id)):
                entries = self._scores(key)
                if entries:
                    self.redis.zadd(key, {m: score - AGE_MS for m, score in entries.items()})
            self.redis.delete(keys.drain_scheduled(shard_id))
        self.redis.delete(*(keys.wide_pending(a) for a in WIDE_AGGREGATES))
        self.due = dict.fromkeys(self.due, True)
        self.throttled.clear()
        self.unripe.clear()
        self.aged_sends = len(self.sender.drains)
        self.stale_claims = {task for task, (_, held) in self.tasks.items() if held}
        self.wide_pending.clear()
        if lose_queued_drains:
            for shard_id in range(SHARDS):
                if self.undelivered(shard_id):
                    self.delivered[shard_id] = self.sent(shard_id)
                    self.sends_when_lost[shard_id] = self.sent(shard_id)

    @rule(aggregates=st.lists(st.sampled_from(WIDE_AGGREGATES), min_size=1, max_size=2))
    def request_wide(self, aggregates: list[str]) -> None:
        sent_before = len(self.sender.wide_refreshes)
        started = self.scheduler.request_wide(aggregates, "test")
        assert started == sorted(set(aggregates) - self.wide_pending)
        assert self.sender.wide_refreshes[sent_before:] == [(a, "test") for a in started]
        self.wide_pending |= set(started)

    @rule(aggregate=st.sampled_from(WIDE_AGGREGATES))
    def start_wide(self, aggregate: str) -> None:
        self.scheduler.start_wide(aggregate)
        self.wide_pending.discard(aggregate)

    @rule()
    def settle(self) -> None:
        """The windows pass, the workers sweep and run every drain sent: nothing requested
        stays due."""
        if self.unripe:
            self.stale_time_passes(lose_queued_drains=False)
        self.sweep()
        while any(self.deliverable(s) for s in range(SHARDS)):
            shard_id = next(s for s in range(SHARDS) if self.deliverable(s))
            self._release(self._run_drain(shard_id, batch=2))
        assert not self.due, "a requested pair was never claimed again"
        assert not self.requested_since_taken
        assert not any(self._due_in_redis(s) for s in range(SHARDS))

    # --- invariants ---------------------------------------------------------------------
    @invariant()
    def redis_holds_the_model(self) -> None:
        now = self._now_ms()
        stored = {p: at for s in range(SHARDS) for p, at in self._due_in_redis(s).items()}
        assert set(stored) == set(self.due)
        assert {pair: score < now - STALE_MS for pair, score in stored.items()} == self.due
        assert all(shard(pair) == s for s in range(SHARDS) for pair in self._due_in_redis(s))
        commits = {
            self._pair(as_text(member)): int(value)
            for s in range(SHARDS)
            for member, value in self.redis.hgetall(keys.commits(s)).items()
        }
        assert commits == self.commits
        claims = {
            task: (s, at)
            for s in range(SHARDS)
            for task, at in self._scores(keys.claims(s)).items()
        }
        assert claims.keys() == {task for task, (_, held) in self.tasks.items() if held}
        assert all(claims[task][0] == self.tasks[task][0] for task in claims)
        assert {task for task, (_, at) in claims.items() if at <= now} == self.stale_claims
        for task, (shard_id, held) in self.tasks.items():
            raw = self.redis.hgetall(keys.claim(shard_id, task))
            assert {self._pair(as_text(m)): int(v) if v else None for m, v in raw.items()} == held
        costs = {
            UUID(as_text(coach)): int(cost)
            for s in range(SHARDS)
            for coach, cost in self.redis.hgetall(keys.coach_cost(s)).items()
        }
        assert costs == self.costs, "each coach's cost is the EWMA of its drains' time"
        unripe = {pair for pair, at in stored.items() if at > now}
        assert unripe == self.unripe, "due later exactly when requested inside a wide window"

    @invariant()
    def due_pairs_have_a_drain_coming(self) -> None:
        """Whenever pairs of a shard are due, a drain of that shard is on its way, unless the
        broker lost it (then the next sweep or request sends one: see `sweep` and `settle`)."""
        for shard_id in range(SHARDS):
            lost_and_not_resent = self.sends_when_lost.get(shard_id) == self.sent(shard_id)
            if self.due_in(shard_id) and not lost_and_not_resent:
                assert self.undelivered(shard_id) > 0
            if self.redis.exists(keys.drain_scheduled(shard_id)):
                assert self.undelivered(shard_id) > 0, "a drain marked scheduled nobody holds"

    @invariant()
    def requested_pairs_stay_due_until_taken(self) -> None:
        assert self.requested_since_taken <= set(self.due)

    @invariant()
    def a_pair_is_held_twice_only_if_due_again_in_between(self) -> None:
        """Two live claims may hold one pair (a change during a recompute makes it due again),
        but never the same due entry: each entry is taken by one claim."""
        for pair in self.entries:
            taken = [held[pair] for held in self.held_entries.values() if pair in held]
            assert sum(map(len, taken)) == len(set().union(*taken))


def test_the_scheduler_behaves_like_its_model(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)

    class OnThisRedis(SchedulerModel):
        def __init__(self) -> None:
            super().__init__(client)

    try:
        run_state_machine_as_test(
            OnThisRedis,
            settings=settings(
                max_examples=75,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        client.close()
