"""The recompute scheduler: dedup, debounce, batching and claims of recomputes, atomic in Redis.

Each aggregate has a sorted set of due coaches. Membership is the pending marker: a request for a
coach already in it is suppressed. The window is a per-key throttle ("at most one recompute per
key per window"): a coach whose last recompute started more than a window ago is due at once
(leading edge, no added latency); otherwise it is due when the window since that start has
passed (trailing edge, one recompute absorbs the burst).

A *drain* task of the aggregate claims every due coach at once (batching, up to a batch size)
and removes them from the set **before** it reads Postgres, so a change committed during the
recompute makes the coach due again and gets one more recompute: nothing is lost. A coach can
therefore sit in two live claims, but only if it was requested again after the first claim took
it. Requests only send a drain when none is scheduled early enough, so a burst over many coaches
sends a few tasks, not one per change; a claim that leaves coaches due sends the follow-up drain.

A drain's claim is kept under its task id until the values are stored (`release`), so a
redelivered task (worker killed, `acks_late`) recomputes the same coaches. Nothing stays stuck:
a due entry older than `stale_ms` is treated as lost (its drain vanished) and scheduled again,
and `sweep` (run by beat) puts the coaches of claims older than `stale_ms` back in the due set.

Every step is one Lua script (`*.lua` beside this module), run by SHA (`pipeline.lua`). Tasks
are sent through a `TaskSender`, so this package knows no task queue.

State table, per aggregate (key names in `pipeline.keys`; one hash tag per aggregate):

`keys.due` — sorted set: coach → when it is due (ms). Membership is the pending marker.
    written  `request` adds; `sweep` re-adds the coaches of lost claims; `claim` removes what
             it takes
    read     `request` (suppressed while pending), `claim` (due ≤ now), `sweep` (earliest due)
    expires  no TTL: an entry leaves when claimed; older than `stale_ms` it no longer
             suppresses (the next request re-adds it and sends a drain)
`keys.commits` — hash: coach → commit time (ms) of the oldest change its pending recompute answers.
    written  `request` (the first one is kept)
    read     `claim` (copies it into the claim)
    expires  no TTL: an entry is deleted when `claim` takes the coach
`keys.last_run` — sorted set: coach → when its last claim took it (ms).
    written  `claim`
    read     `request` (a coach is due at last run + window)
    expires  every `claim` prunes entries older than the window
`keys.drain_scheduled` — string: when the earliest drain sent will run (ms).
    written  `request`, `claim`, `sweep` set it with each drain they send; `claim` deletes it
             once that time has passed; `request` deletes it on finding a lost marker, and
             sends a drain anew when its coaches are still due `late_ms` after that time
             (the drain was lost: its sender died between marking and sending)
    read     `request`, `claim`, `sweep`: send a drain only if none is scheduled early enough
    expires  PX countdown + `stale_ms` (a lost drain does not block the next one for long)
`keys.claim` — hash, one per drain task: coach → commit ms, the coaches the task holds.
    written  `claim` (a redelivery of the task adds to it, never replaces)
    read     `claim` (a redelivered task gets it back), `sweep` (requeues it)
    expires  no TTL: deleted by `release`, or by `sweep` once older than `stale_ms`
`keys.claims` — sorted set: task id → when it first claimed (ms), for tasks holding coaches.
    written  `claim`
    read     `sweep` (claims older than `stale_ms` belong to vanished tasks)
    expires  entry removed by `release` or `sweep`
`keys.wide_pending` — string: a refresh of every coach's aggregate is pending.
    written  `request_wide` (set only if absent)
    read     `request_wide` (sends the refresh only if it set the marker)
    expires  deleted by `start_wide` when the refresh begins; PX `stale_ms`

Callers: listeners `request` (routed changes, catch-up) and `request_wide` (changes without a
coach id); beat's clock tick `request`s and its sweep task calls `sweep`; a drain task calls
`claim`, recomputes, then `release`; a wide refresh task calls `start_wide`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any
from uuid import UUID

import redis
import structlog

from pipeline import keys, metrics
from pipeline.lua import Lua, run_pipeline
from pipeline.redis_values import as_text
from pipeline.routing import Key
from pipeline.scheduler.sender import TaskSender

__all__ = ["Claim", "RecomputeScheduler", "RequestOutcome", "TaskSender"]

DRAIN_LATE_MS = 2000
"""A request that finds its coaches still due this long after their drain should have run
presumes that drain lost (its sender was killed between marking and sending) and sends
another: an extra drain claims only what is due, so a false alarm costs one empty task."""

log = structlog.get_logger("pipeline.scheduler")


def _script(client: redis.Redis, name: str) -> Lua:
    return Lua(client, files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8"))


def _seconds(countdown_ms: int) -> float | None:
    """A script's countdown (ms, -1 for "no drain to send") in seconds."""
    return countdown_ms / 1000 if countdown_ms >= 0 else None


@dataclass(frozen=True)
class RequestOutcome:
    """What one batch of requests did: counts, and the drains sent (aggregate → countdown s)."""

    enqueued: int = 0
    suppressed: int = 0
    drains: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """The coaches a drain task holds, with the commit time of the change behind each."""

    coaches: list[UUID]
    commit_ms: dict[UUID, int | None]


class RecomputeScheduler:
    def __init__(
        self,
        client: redis.Redis,
        sender: TaskSender,
        *,
        window_ms: int,
        stale_ms: int,
        late_ms: int = DRAIN_LATE_MS,
    ) -> None:
        self._redis = client
        self.late_ms = late_ms
        self._sender = sender
        self.window_ms = window_ms
        self.stale_ms = stale_ms
        self._request = _script(client, "request")
        self._claim = _script(client, "claim")
        self._release = _script(client, "release")
        self._sweep = _script(client, "sweep")
        self._request_wide = _script(client, "request_wide")

    def _send_drain(self, aggregate: str, countdown_s: float) -> None:
        self._sender.send_drain(aggregate, countdown_s)
        metrics.DRAINS_ENQUEUED.labels(aggregate).inc()

    def request(
        self, items: Iterable[Key], commit_ms: Mapping[Key, int | None] | None = None
    ) -> RequestOutcome:
        """Mark (aggregate, coach) pairs due, in one round trip per call, and send the drains
        that are not scheduled yet.

        `commit_ms` gives, per pair, the commit time of the change behind it (for latency
        metrics); the oldest pending one is kept.
        """
        by_aggregate: dict[str, list[str]] = {}
        for aggregate, coach in sorted(set(items)):
            commit = (commit_ms or {}).get((aggregate, coach))
            by_aggregate.setdefault(aggregate, []).extend(
                (str(coach), "" if commit is None else str(commit))
            )
        if not by_aggregate:
            return RequestOutcome()

        def build(pipe: Any) -> None:
            for aggregate, pairs in by_aggregate.items():
                self._request.queue(
                    pipe,
                    keys=[
                        keys.due(aggregate),
                        keys.last_run(aggregate),
                        keys.drain_scheduled(aggregate),
                        keys.commits(aggregate),
                    ],
                    args=[self.window_ms, self.stale_ms, self.late_ms, *pairs],
                )

        outcomes = run_pipeline(self._redis, [self._request], build)
        enqueued = suppressed = 0
        drains: dict[str, float] = {}
        for aggregate, (added, skipped, countdown_ms) in zip(by_aggregate, outcomes, strict=True):
            enqueued += int(added)
            suppressed += int(skipped)
            countdown = _seconds(int(countdown_ms))
            if countdown is not None:
                drains[aggregate] = countdown
        for aggregate, countdown in drains.items():
            self._send_drain(aggregate, countdown)
        metrics.RECOMPUTE_REQUESTS.labels("enqueued").inc(enqueued)
        metrics.RECOMPUTE_REQUESTS.labels("suppressed").inc(suppressed)
        return RequestOutcome(enqueued=enqueued, suppressed=suppressed, drains=drains)

    def claim(self, aggregate: str, task_id: str, batch: int) -> Claim:
        """Take up to `batch` due coaches (plus any this task claimed on an earlier delivery);
        send a follow-up drain if coaches remain due."""
        raw = self._claim(
            keys=[
                keys.due(aggregate),
                keys.last_run(aggregate),
                keys.drain_scheduled(aggregate),
                keys.commits(aggregate),
                keys.claim(aggregate, task_id),
                keys.claims(aggregate),
            ],
            args=[batch, self.window_ms, self.stale_ms, task_id],
        )
        follow_up = _seconds(int(raw[0]))
        if follow_up is not None:
            self._send_drain(aggregate, follow_up)
        pairs = raw[1:]
        commit_ms: dict[UUID, int | None] = {}
        for coach, commit in zip(pairs[::2], pairs[1::2], strict=True):
            commit_ms[UUID(as_text(coach))] = int(commit) if commit else None
        return Claim(coaches=sorted(commit_ms), commit_ms=commit_ms)

    def release(self, aggregate: str, task_id: str) -> None:
        """The claimed coaches are stored: forget the claim."""
        self._release(keys=[keys.claim(aggregate, task_id), keys.claims(aggregate)], args=[task_id])

    def sweep(self, aggregate: str) -> int:
        """Requeue the coaches of claims whose task vanished, send a drain if none is
        scheduled; return how many coaches were requeued."""
        requeued, countdown_ms = self._sweep(
            keys=[keys.due(aggregate), keys.drain_scheduled(aggregate), keys.claims(aggregate)],
            args=[self.stale_ms, keys.claim(aggregate, "")],
        )
        countdown = _seconds(int(countdown_ms))
        if countdown is not None:
            self._send_drain(aggregate, countdown)
        return int(requeued)

    def request_wide(self, aggregates: Iterable[str], reason: str) -> list[str]:
        """Refresh every coach's `aggregates`, at most one pending refresh per aggregate;
        return the aggregates whose refresh this call sent."""
        started = []
        for aggregate in sorted(set(aggregates)):
            if self._request_wide(keys=[keys.wide_pending(aggregate)], args=[self.stale_ms]):
                self._sender.send_wide_refresh(aggregate, reason)
                started.append(aggregate)
        if started:
            log.info("wide_refresh_requested", aggregates=started, reason=reason)
        return started

    def start_wide(self, aggregate: str) -> None:
        """A wide refresh starts: later requests must send another one."""
        self._redis.delete(keys.wide_pending(aggregate))
