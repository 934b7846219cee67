"""The recompute scheduler against a plain model of it: a Hypothesis state machine over a real
Redis, with a recording `TaskSender` as the task queue.

Time: the scripts read Redis `TIME`. The model runs with `window_ms=0` (every request is due at
once, so which coaches a drain may take does not depend on the clock) and a `stale_ms` far longer
than an example, so nothing goes stale by itself. Time passing beyond `stale_ms` is a rule of its
own: it shifts every stored timestamp back by twice `stale_ms` and drops the keys whose PX would
have run out, which is exactly what Redis would hold had the time really passed.

Which due coaches a drain takes depends on their timestamps (oldest first, ties by id), so the
model reads the taken coaches from Redis and checks them against what it allows (only due coaches,
as many as the batch and the due set permit) instead of predicting them.
"""

from __future__ import annotations

from typing import cast
from uuid import UUID

import redis
from hypothesis import HealthCheck, settings
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
from pipeline.scheduler import RecomputeScheduler
from tests.recording_sender import RecordingSender

AGGREGATE = "coach-stats"
WIDE_AGGREGATES = ["coach-stats", "coach-clients"]
COACHES = [UUID(int=n) for n in range(1, 6)]
STALE_MS = 60_000
AGE_MS = 2 * STALE_MS
"""How far back "time passes" moves every timestamp: well past `stale_ms`."""

coaches = st.lists(st.sampled_from(COACHES), min_size=1, max_size=4)
batches = st.integers(min_value=1, max_value=3)


class SchedulerModel(RuleBasedStateMachine):
    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        client.flushdb()
        self.redis = client
        self.sender = RecordingSender()
        self.scheduler = RecomputeScheduler(
            client, self.sender, window_ms=0, stale_ms=STALE_MS, late_ms=10 * STALE_MS
        )
        # The model. `due`: coach → its marker is older than stale_ms.
        self.due: dict[UUID, bool] = {}
        self.commits: dict[UUID, int] = {}
        self.tasks: dict[str, dict[UUID, int | None]] = {}
        """Drain tasks that claimed and have not released: task id → the coaches they hold."""
        self.stale_claims: set[str] = set()
        self.entries: dict[UUID, int] = dict.fromkeys(COACHES, 0)
        """How many times each coach was made due (its due entry's generation)."""
        self.held_entries: dict[str, dict[UUID, set[int]]] = {}
        """Per live task, which due entries (generations) of each coach its claim took."""
        self.requested_since_taken: set[UUID] = set()
        self.delivered = 0
        """How many of the sent drains the "broker" has delivered (or lost)."""
        self.sends_when_lost: int | None = None
        """Drains sent when the broker lost the queued ones (None: never lost)."""
        self.wide_pending: set[str] = set()
        self.next_commit = 1_000
        self.next_task = 0

    # --- helpers ------------------------------------------------------------------------
    @property
    def undelivered(self) -> int:
        return len(self.sender.drains) - self.delivered

    def _now_ms(self) -> int:
        seconds, micros = self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def _scores(self, key: str) -> dict[str, float]:
        entries = cast("list[tuple[bytes, float]]", self.redis.zrange(key, 0, -1, withscores=True))
        return {as_text(member): score for member, score in entries}

    def _due_in_redis(self) -> dict[UUID, float]:
        return {UUID(coach): score for coach, score in self._scores(keys.due(AGGREGATE)).items()}

    def _claim(self, task: str, batch: int) -> None:
        """Run `claim` as a drain task (or its redelivery) would, and check it against the
        model: it hands back what the task held, plus due coaches only, as many as allowed."""
        prior = self.tasks.get(task, {})
        due_before = set(self.due)
        claim = self.scheduler.claim(AGGREGATE, task, batch)
        taken = due_before - set(self._due_in_redis())
        assert len(taken) == min(batch, len(due_before)), "a claim takes a full batch if it can"
        assert set(prior) <= set(claim.coaches), "a redelivered task gets its claim back"
        assert set(claim.coaches) == set(prior) | taken, "a claim holds nothing that was not due"
        expected = {coach: self.commits.get(coach) for coach in taken} | prior
        assert claim.commit_ms == expected
        for coach in taken:
            del self.due[coach]
            self.commits.pop(coach, None)
        self.requested_since_taken -= taken
        self.tasks[task] = expected
        held = self.held_entries.setdefault(task, {})
        for coach in taken:
            held.setdefault(coach, set()).add(self.entries[coach])
        if self.due:
            assert self.undelivered, "coaches left due without a drain to take them"

    def _run_drain(self, batch: int) -> str:
        self.delivered += 1
        task = self._new_task()
        self._claim(task, batch)
        return task

    def _release(self, task: str) -> None:
        self.scheduler.release(AGGREGATE, task)
        del self.tasks[task]
        self.held_entries.pop(task, None)
        self.stale_claims.discard(task)

    def _make_due(self, coach: UUID) -> None:
        self.due[coach] = False
        self.entries[coach] += 1

    def _new_task(self) -> str:
        self.next_task += 1
        return f"task-{self.next_task}"

    # --- rules --------------------------------------------------------------------------
    @rule(requested=coaches, with_commit=st.booleans())
    def request(self, requested: list[UUID], with_commit: bool) -> None:
        commit = self.next_commit if with_commit else None
        self.next_commit += 1
        items = [(AGGREGATE, coach) for coach in requested]
        sent_before = len(self.sender.drains)
        outcome = self.scheduler.request(items, dict.fromkeys(items, commit))
        unique = set(requested)
        suppressed = {coach for coach in unique if coach in self.due and not self.due[coach]}
        enqueued = unique - suppressed
        assert (outcome.enqueued, outcome.suppressed) == (len(enqueued), len(suppressed)), (
            "suppressed exactly when pending and not stale"
        )
        sent = len(self.sender.drains) - sent_before
        assert sent <= 1
        assert set(outcome.drains) == ({AGGREGATE} if sent else set())
        if not enqueued:
            assert not sent, "a fully suppressed request sends nothing"
        if any(self.due.get(coach) for coach in enqueued):
            assert sent, "a stale marker means its drain was lost: send another"
        for coach in enqueued:
            self._make_due(coach)
            if commit is not None:
                self.commits.setdefault(coach, commit)
        self.requested_since_taken |= unique

    @precondition(lambda self: self.undelivered > 0)
    @rule(batch=batches)
    def run_drain(self, batch: int) -> None:
        """The broker delivers the oldest drain it holds; a new task claims."""
        self._run_drain(batch)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), batch=batches)
    def redeliver(self, data: st.DataObject, batch: int) -> None:
        """A worker died under a task (acks_late): the broker delivers the same task id again."""
        self._claim(data.draw(st.sampled_from(sorted(self.tasks))), batch)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """The task stored what it claimed."""
        self._release(data.draw(st.sampled_from(sorted(self.tasks))))

    @rule()
    def sweep(self) -> None:
        expected = sum(len(self.tasks[task]) for task in self.stale_claims)
        assert self.scheduler.sweep(AGGREGATE) == expected, "sweep requeues exactly stale claims"
        for task in self.stale_claims:
            for coach in self.tasks[task]:
                if coach not in self.due:
                    self._make_due(coach)
            self.tasks[task] = {}
            self.held_entries[task] = {}
        self.stale_claims.clear()
        if self.due:
            assert self.undelivered, "after a sweep, due coaches have a drain coming"

    @rule(lose_queued_drains=st.booleans())
    def stale_time_passes(self, lose_queued_drains: bool) -> None:
        """More than stale_ms passes (optionally the broker loses the drains it held)."""
        for key in (keys.due(AGGREGATE), keys.claims(AGGREGATE), keys.last_run(AGGREGATE)):
            entries = self._scores(key)
            if entries:
                self.redis.zadd(key, {member: score - AGE_MS for member, score in entries.items()})
        self.redis.delete(
            keys.drain_scheduled(AGGREGATE), *(keys.wide_pending(a) for a in WIDE_AGGREGATES)
        )
        self.due = dict.fromkeys(self.due, True)
        self.stale_claims = {task for task, held in self.tasks.items() if held}
        self.wide_pending.clear()
        if lose_queued_drains and self.undelivered:
            self.delivered = len(self.sender.drains)
            self.sends_when_lost = len(self.sender.drains)

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
        """Beat sweeps and the workers run every drain sent: nothing requested stays due."""
        self.sweep()
        while self.undelivered:
            self._release(self._run_drain(batch=2))
        assert not self.due, "a requested coach was never claimed again"
        assert not self.requested_since_taken
        assert not self._due_in_redis()

    # --- invariants ---------------------------------------------------------------------
    @invariant()
    def redis_holds_the_model(self) -> None:
        now = self._now_ms()
        stored = self._due_in_redis()
        assert set(stored) == set(self.due)
        assert {coach: score < now - STALE_MS for coach, score in stored.items()} == self.due
        commits = self.redis.hgetall(keys.commits(AGGREGATE))
        assert {UUID(as_text(c)): int(v) for c, v in commits.items()} == self.commits
        claims = self._scores(keys.claims(AGGREGATE))
        assert set(claims) == {task for task, held in self.tasks.items() if held}
        assert {task for task, at in claims.items() if at < now - STALE_MS} == self.stale_claims
        for task, held in self.tasks.items():
            raw = self.redis.hgetall(keys.claim(AGGREGATE, task))
            assert {UUID(as_text(c)): int(v) if v else None for c, v in raw.items()} == held

    @invariant()
    def due_coaches_have_a_drain_coming(self) -> None:
        """Whenever coaches are due, a drain is on its way, unless the broker lost it (then
        the next sweep or request sends one: see `sweep` and `settle`)."""
        lost_and_not_resent = self.sends_when_lost == len(self.sender.drains)
        if self.due and not lost_and_not_resent:
            assert self.undelivered > 0
        if self.redis.exists(keys.drain_scheduled(AGGREGATE)):
            assert self.undelivered > 0, "a drain is marked scheduled that nobody holds"

    @invariant()
    def requested_coaches_stay_due_until_taken(self) -> None:
        assert self.requested_since_taken <= set(self.due)

    @invariant()
    def a_coach_is_held_twice_only_if_due_again_in_between(self) -> None:
        """Two live claims may hold one coach (a change during a recompute makes it due again),
        but never the same due entry: each entry is taken by one claim."""
        for coach in COACHES:
            taken = [held[coach] for held in self.held_entries.values() if coach in held]
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
