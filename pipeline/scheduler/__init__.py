"""The recompute scheduler: dedup, debounce, batching and leased claims of recomputes, atomic
in Redis.

The unit of work is a pair (aggregate, coach). Pairs are sharded by coach (`shard_of`, `shards`
shards, setting `SCHEDULER_SHARDS`): every pair of a coach lives in the same shard, and the keys
of a shard share one hash tag, so each script below touches one Redis Cluster slot and load
spreads over shards. Each shard has one sorted set of due pairs (member "coach|aggregate").
Membership is the pending marker: a request for a pair already in it is suppressed. The window
is a per-pair throttle ("at most one recompute per pair per window"): a pair whose last
recompute started more than a window ago is due at once (leading edge, no added latency);
otherwise it is due when the window since that start has passed (trailing edge, one recompute
absorbs the burst).

The window is per coach: a coach whose recompute is costly gets a wider one, so no single coach
holds more than `coach_share` of a worker (setting `COACH_SHARE`). Each drain, on release, charges
its recompute time to its coaches in proportion to the bytes of the values it computed for them (a
set-based drain has no per-coach timer; what it reads for a coach is bounded by the rows it returns
for it), each coach's cost an EWMA in µs, weight 1/4 (`coach_cost`), and a coach's window is
`max(window_ms, cost / coach_share)`, at most `stale_ms`: ordinary coaches (1 to 3 ms) keep
`window_ms`; a whale (say 20 ms a recompute) is recomputed at most every 200 ms, so its staleness
stays bounded by about cost / share plus one recompute. A claim that meets a coach one recompute of
which takes longer than the window (cost > `window_ms`) takes it alone and only when it is the
oldest due coach of the shard (otherwise it leaves it to the follow-up drain): a whale's drain never
holds the shard's other coaches behind it, and its time measures it alone, while coaches merely
widened keep being batched (drained one by one, a shard's coaches would cost a task each). Widening
and restoring are logged (`coach_window_widened`, `coach_window_restored`) and counted
(`coachpipe_scheduler_widened_windows_total`).

A *drain* task of a shard claims up to a batch of due coaches, each with **every** pair of it
that is due, and removes them from the set **before** it reads Postgres, so a change committed
during the recompute makes the pair due again and gets one more recompute: nothing is lost. The
drain recomputes every aggregate of a coach in one snapshot and stores them at one version (its
cheap coaches in one, its costly ones in a second), so one change (routed to several aggregates
of a coach) is answered by one task, not one per aggregate. A pair can therefore sit in two
live claims, but only if it was requested again after the first claim took it. Requests only
send a drain when none is scheduled early enough, so a burst over many coaches sends a few
tasks, not one per change; a claim that leaves pairs due sends the follow-up drain.

A claim is a **lease**: kept under its task id with an expiry `lease_ms` ahead, renewed by the
drain while it recomputes (`renew`, from a background thread: `Lease`), forgotten once the
values are stored (`release`). A redelivered task (same id) gets its claim back. A worker that
dies stops renewing: `sweep`, run about every second by every worker (and by beat as a
backstop), puts the pairs of expired leases back in the due set and sends a drain, so a dead
worker's work is redone within about `lease_ms` plus a second, without waiting for the broker's
visibility timeout (`acks_late` stays, for what the broker does). A drain whose lease was taken
back while it still ran stores anyway: stores are versioned compare-and-set writes of a
snapshot, so the second recompute of those pairs is harmless. Lost drains are resent: a request
or a sweep that finds pairs still due `late_ms` after the scheduled drain should have run
presumes it lost (its sender died, or a killed worker holds it prefetched) and sends another;
a due entry older than `stale_ms` no longer suppresses.

Every step is one Lua script (`*.lua` beside this module), run by SHA (`pipeline.lua`). Tasks
are sent through a `TaskSender`, so this package knows no task queue.

State table, per shard (key names in `pipeline.keys`; one hash tag `{s<shard>}` per shard;
"pair" is the member "coach|aggregate"):

`keys.due` — sorted set: pair → when it is due (ms). Membership is the pending marker.
    written  `request` adds; `sweep` re-adds the pairs of expired leases; `claim` removes what
             it takes
    read     `request` (suppressed while pending), `claim` (due ≤ now), `sweep` (earliest due)
    expires  no TTL: an entry leaves when claimed; older than `stale_ms` it no longer
             suppresses (the next request re-adds it and sends a drain)
`keys.commits` — hash: pair → commit time (ms) of the oldest change its pending recompute
    answers.
    written  `request` (the first one is kept); `sweep` restores an expired claim's (the older
             one is kept)
    read     `claim` (copies it into the claim)
    expires  no TTL: an entry is deleted when `claim` takes the pair
`keys.not_before` — sorted set: pair → the earliest its next recompute may start (ms): when
    its last claim took it plus its coach's window.
    written  `claim`
    read     `request` (a pair requested earlier is due then)
    expires  every `claim` prunes entries that have passed
`keys.coach_cost` — hash: coach → measured recompute cost (µs), only while it widens the
    coach's window (cost / `coach_share` > `window_ms`).
    written  `release` (EWMA of the drain's time per coach; deleted once below the threshold)
    read     `claim` (the coach's window; alone if costlier than `window_ms`; named costly in
             the claim), `widened`
    expires  no TTL: deleted when the cost falls below the threshold
`keys.drain_scheduled` — string: when the earliest drain sent will run (ms).
    written  `request`, `claim`, `sweep` set it with each drain they send; `claim` deletes it
             once that time has passed; `request` deletes it on finding a lost marker
    read     `request`, `claim`, `sweep`: send a drain only if none is scheduled early enough,
             or if pairs are still due `late_ms` after that time (the drain was lost)
    expires  PX countdown + `stale_ms` (a lost drain does not block the next one for long)
`keys.claim` — hash, one per drain task: pair → commit ms, the pairs the task holds.
    written  `claim` (a redelivery of the task adds to it, never replaces)
    read     `claim` (a redelivered task gets it back), `sweep` (requeues it)
    expires  no TTL: deleted by `release`, or by `sweep` once its lease expired
`keys.claims` — sorted set: task id → when its lease expires (ms), for tasks holding pairs.
    written  `claim` (now + `lease_ms`), `renew` (only while present)
    read     `sweep` (expired leases belong to dead tasks), `renew`
    expires  entry removed by `release` or `sweep`
`keys.wide_pending` — string, per aggregate: a refresh of every coach's aggregate is pending.
    written  `request_wide` (set only if absent)
    read     `request_wide` (sends the refresh only if it set the marker)
    expires  deleted by `start_wide` when the refresh begins; PX `stale_ms`
`keys.SHARDS_SEEN` — string, one for all shards: the most shards any process used.
    written  a process's first `request` or `sweep`, then every `sweep` (raised to its
             `shards`, never lowered; delete it once the former shards are empty)
    read     `sweep`, `shards_in_use`: shards past this process's count that may hold work
    expires  never

Callers: listeners `request` (routed changes, catch-up) and `request_wide` (changes without a
coach id); every worker (about every second) and beat's sweep task
call `sweep`; a drain task calls `claim`, recomputes while a `Lease` renews its claim, then
`release`; a wide refresh task calls `start_wide`.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from types import TracebackType
from typing import Any
from uuid import UUID

import structlog

from config import Settings
from pipeline import keys, metrics
from pipeline.aggregates import NAMES
from pipeline.errors import TRANSIENT_ERRORS
from pipeline.lua import Lua, run_pipeline
from pipeline.redis_client import RedisClient
from pipeline.redis_values import as_text
from pipeline.routing import Key
from pipeline.scheduler.sender import TaskSender

__all__ = [
    "Backlog",
    "Claim",
    "Lease",
    "LeaseKeeper",
    "RecomputeScheduler",
    "RequestOutcome",
    "TaskSender",
    "backlog",
    "coach_window_ms",
    "idle",
    "shard_of",
    "shards_in_use",
    "widened_costs",
]

DRAIN_LATE_MS = 2000
"""A request or sweep that finds pairs still due this long after their drain should have run
presumes that drain lost (its sender was killed between marking and sending, or a killed worker
holds it prefetched) and sends another: an extra drain claims only what is due, so a false
alarm costs one empty task."""
DEFAULT_LEASE_MS = 3000
"""How long a claim stays with its drain without being renewed (setting `CLAIM_LEASE_S`)."""
DEFAULT_SHARDS = 1
"""Scheduler shards (setting `SCHEDULER_SHARDS`). One by default. Shards do not bound how many
drains run at once (a claim that leaves pairs due sends the follow-up drain, and the first
request after a claim sends the next), but a change waits for a drain of its own shard: with
several, that drain queues behind the other shards' drains in the one `realtime` queue, each
with its fixed cost, while with one shard the next drain to run takes every due coach.
Measured on 2 cores at 200 changes/s with beat (`make bench`, README "Scheduler shards"),
same code, back to back: commit → every routed aggregate p50 / p99 87.6 / 339.5 ms with 8
shards (63 task messages a second), 18.5 / 81.1 ms with 1 (87 a second). More shards spread
the scheduler's scripts over a Redis Cluster's masters."""
FORMER_DEFAULT_SHARDS = 8
"""The shard count of every release before `DEFAULT_SHARDS` became 1: always swept and
counted (`shards_in_use`), so work those releases left in shards 1 to 7 is drained after an
upgrade."""
DEFAULT_COACH_SHARE = 0.1
"""Share of one worker a single coach's recomputes may hold (setting `COACH_SHARE`)."""

log = structlog.get_logger("pipeline.scheduler")


def _script(client: RedisClient, name: str) -> Lua:
    return Lua(client, files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8"))


def _seconds(countdown_ms: int) -> float | None:
    """A script's countdown (ms, -1 for "no drain to send") in seconds."""
    return countdown_ms / 1000 if countdown_ms >= 0 else None


def shard_of(coach: UUID, shards: int) -> int:
    """The scheduler shard (0 ≤ shard < `shards`) holding every pair of `coach` (CRC-32 of its
    16 bytes, so any UUID version spreads evenly)."""
    return zlib.crc32(coach.bytes) % shards


def _member(aggregate: str, coach: UUID) -> str:
    return f"{coach}|{aggregate}"


def _pair(member: str) -> Key:
    coach, aggregate = member.split("|", 1)
    return aggregate, UUID(coach)


@dataclass(frozen=True)
class Backlog:
    """Pairs due and pairs held by live claims, by aggregate name (only names with some)."""

    pending: dict[str, int]
    claimed: dict[str, int]


def shards_in_use(client: RedisClient, shards: int) -> int:
    """How many shards may hold work (shards 0 … n-1): this process's `shards`, the former
    default (`FORMER_DEFAULT_SHARDS`) and the most any process of this release has used
    (`keys.SHARDS_SEEN`, recorded at its first request or sweep), so lowering
    `SCHEDULER_SHARDS` strands nothing. One round trip."""
    return _in_use(shards, client.get(keys.SHARDS_SEEN))


def _in_use(shards: int, seen: bytes | str | int | None) -> int:
    """`shards_in_use` from the value of `keys.SHARDS_SEEN` (None: never recorded)."""
    return max(shards, FORMER_DEFAULT_SHARDS, int(seen) if seen is not None else 0)


def backlog(client: RedisClient, shards: int) -> Backlog:
    """Count the scheduler's pending and claimed pairs by aggregate, for `coachpipe status`:
    reads every due member and claim of every shard in use (`shards_in_use`; a few round
    trips, O(pairs)); not for a hot path."""
    shards = shards_in_use(client, shards)
    pipe = client.pipeline(transaction=False)
    for shard in range(shards):
        pipe.zrange(keys.due(shard), 0, -1)
        pipe.zrange(keys.claims(shard), 0, -1)
    found = pipe.execute()
    pipe = client.pipeline(transaction=False)
    for shard in range(shards):
        for task in found[2 * shard + 1]:
            pipe.hkeys(keys.claim(shard, as_text(task)))
    held = pipe.execute()
    pending: dict[str, int] = {}
    claimed: dict[str, int] = {}
    for counts, members in [
        *((pending, found[2 * shard]) for shard in range(shards)),
        *((claimed, members) for members in held),
    ]:
        for member in members:
            aggregate, _ = _pair(as_text(member))
            counts[aggregate] = counts.get(aggregate, 0) + 1
    return Backlog(pending=pending, claimed=claimed)


def coach_window_ms(cost_us: int | None, window_ms: int, stale_ms: int, coach_share: float) -> int:
    """A coach's window (whole ms) for its measured recompute cost (µs; None: not widened):
    `max(window_ms, cost / coach_share)`, at most `stale_ms` (as `claim.lua` computes it)."""
    if cost_us is None:
        return window_ms
    return math.floor(min(stale_ms, max(window_ms, cost_us / 1000 / coach_share)))


def widened_costs(client: RedisClient, shards: int) -> dict[UUID, int]:
    """Coach → measured recompute cost (µs), for every coach whose cost widens its window
    (one round trip, O(such coaches): for `coachpipe status` and tests). Only the `shards`
    this process uses: a former shard's costs are no longer updated (nothing releases there
    once its last claim has), so they would show coaches widened long after the fact."""
    pipe = client.pipeline(transaction=False)
    for shard in range(shards):
        pipe.hgetall(keys.coach_cost(shard))
    return {
        UUID(as_text(coach)): int(cost) for costs in pipe.execute() for coach, cost in costs.items()
    }


def idle(client: RedisClient, shards: int) -> bool:
    """No pair is due or claimed in any shard in use (two round trips)."""
    pipe = client.pipeline(transaction=False)
    for shard in range(shards_in_use(client, shards)):
        pipe.exists(keys.due(shard), keys.claims(shard))
    return not any(pipe.execute())


@dataclass(frozen=True)
class RequestOutcome:
    """What one batch of requests did: counts, and the drains sent (shard → countdown s)."""

    enqueued: int = 0
    suppressed: int = 0
    drains: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """The (aggregate, coach) pairs a drain task holds, with the commit time (ms, None when
    unknown) of the change behind each, and which of its coaches are costly (a measured cost
    widens their window, `keys.coach_cost`) when it was claimed."""

    commit_ms: dict[Key, int | None]
    costly: frozenset[UUID] = frozenset()

    @property
    def pairs(self) -> list[Key]:
        return sorted(self.commit_ms)

    @property
    def coaches(self) -> list[UUID]:
        """Every coach with at least one pair held, sorted."""
        return sorted({coach for _, coach in self.commit_ms})

    def by_aggregate(self) -> dict[str, list[UUID]]:
        """Aggregate name → the coaches held for it, sorted."""
        grouped: dict[str, list[UUID]] = {}
        for aggregate, coach in self.pairs:
            grouped.setdefault(aggregate, []).append(coach)
        return grouped

    def cheap_first(self) -> list[Claim]:
        """The claim in the order a drain recomputes it: its cheap coaches, then its costly
        ones (each part present only if it holds a pair), so the recompute of a costly coach
        batched with cheap ones never delays theirs."""
        cheap = {key: at for key, at in self.commit_ms.items() if key[1] not in self.costly}
        costly = {key: at for key, at in self.commit_ms.items() if key[1] in self.costly}
        parts = (Claim(commit_ms=cheap), Claim(commit_ms=costly, costly=self.costly))
        return [part for part in parts if part.commit_ms]


class RecomputeScheduler:
    def __init__(
        self,
        client: RedisClient,
        sender: TaskSender,
        *,
        window_ms: int,
        stale_ms: int,
        late_ms: int = DRAIN_LATE_MS,
        lease_ms: int = DEFAULT_LEASE_MS,
        shards: int = DEFAULT_SHARDS,
        coach_share: float = DEFAULT_COACH_SHARE,
        aggregates: Sequence[str] = NAMES,
    ) -> None:
        self._redis = client
        self._sender = sender
        self.window_ms = window_ms
        self.stale_ms = stale_ms
        self.late_ms = late_ms
        self.lease_ms = lease_ms
        self.shards = shards
        self.coach_share = coach_share
        self._aggregates = list(aggregates)
        self._request = _script(client, "request")
        self._claim = _script(client, "claim")
        self._renew = _script(client, "renew")
        self._release = _script(client, "release")
        self._sweep = _script(client, "sweep")
        self._shards_seen = _script(client, "shards_seen")
        self._swept: int | None = None  # shards_in_use, learnt at the first sweep
        self._recorded = False  # this count is in keys.SHARDS_SEEN (first request or sweep)
        self._request_wide = _script(client, "request_wide")
        self._keeper = LeaseKeeper(client, self._renew, lease_ms)

    @classmethod
    def from_settings(
        cls, client: RedisClient, sender: TaskSender, settings: Settings
    ) -> RecomputeScheduler:
        """The scheduler every process builds the same way. Listeners and workers should agree
        on the shard count: a request is deduplicated within its coach's shard, so two counts
        at once may recompute a change twice (harmless) while both run. Nothing is stranded:
        a drain carries its shard, and every sweep covers every shard in use."""
        return cls(
            client,
            sender,
            window_ms=settings.debounce_ms,
            stale_ms=int(settings.pending_stale_s * 1000),
            lease_ms=int(settings.claim_lease_s * 1000),
            shards=settings.scheduler_shards,
            coach_share=settings.coach_share,
        )

    def shard_of(self, coach: UUID) -> int:
        return shard_of(coach, self.shards)

    def due_pairs(self) -> set[Key]:
        """Every pair marked due, in every shard in use (two round trips, O(pairs): for tools
        and tests, not a hot path)."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(shards_in_use(self._redis, self.shards)):
            pipe.zrange(keys.due(shard), 0, -1)
        return {_pair(as_text(member)) for members in pipe.execute() for member in members}

    def _send_drain(self, shard: int, countdown_s: float, reason: str) -> None:
        self._sender.send_drain(shard, countdown_s)
        metrics.DRAINS_ENQUEUED.labels(str(shard), reason).inc()

    def request(
        self, items: Iterable[Key], commit_ms: Mapping[Key, int | None] | None = None
    ) -> RequestOutcome:
        """Mark (aggregate, coach) pairs due, in one round trip per call, and send the drains
        that are not scheduled yet (at most one per shard).

        `commit_ms` gives, per pair, the commit time of the change behind it (for latency
        metrics); the oldest pending one is kept.
        """
        by_shard: dict[int, list[str]] = {}
        for aggregate, coach in sorted(set(items)):
            commit = (commit_ms or {}).get((aggregate, coach))
            by_shard.setdefault(self.shard_of(coach), []).extend(
                (_member(aggregate, coach), "" if commit is None else str(commit))
            )
        if not by_shard:
            return RequestOutcome()

        record = not self._recorded

        def build(pipe: Any) -> None:
            for shard, pairs in by_shard.items():
                self._request.queue(
                    pipe,
                    keys=[
                        keys.due(shard),
                        keys.not_before(shard),
                        keys.drain_scheduled(shard),
                        keys.commits(shard),
                    ],
                    args=[self.stale_ms, self.late_ms, *pairs],
                )
            if record:  # a listener never sweeps: its first request records its shard count
                self._shards_seen.queue(pipe, keys=[keys.SHARDS_SEEN], args=[self.shards])

        outcomes = run_pipeline(self._redis, [self._request, self._shards_seen], build)
        if record:
            outcomes.pop()
            self._recorded = True
        enqueued = suppressed = 0
        drains: dict[int, float] = {}
        for shard, (added, skipped, countdown_ms) in zip(by_shard, outcomes, strict=True):
            enqueued += int(added)
            suppressed += int(skipped)
            countdown = _seconds(int(countdown_ms))
            if countdown is not None:
                drains[shard] = countdown
        for shard, countdown in drains.items():
            self._send_drain(shard, countdown, "request")
        metrics.RECOMPUTE_REQUESTS.labels("enqueued").inc(enqueued)
        metrics.RECOMPUTE_REQUESTS.labels("suppressed").inc(suppressed)
        return RequestOutcome(enqueued=enqueued, suppressed=suppressed, drains=drains)

    def claim(self, shard: int, task_id: str, batch: int) -> Claim:
        """Take up to `batch` due coaches of `shard`, each with every pair of it that is due
        (plus any pair this task claimed on an earlier delivery), under a lease of `lease_ms`
        (a coach costlier than the window: alone, and only if it is the oldest due); send a
        follow-up drain if pairs remain due."""
        raw = self._claim(
            keys=[
                keys.due(shard),
                keys.not_before(shard),
                keys.drain_scheduled(shard),
                keys.commits(shard),
                keys.claim(shard, task_id),
                keys.claims(shard),
                keys.coach_cost(shard),
            ],
            args=[
                batch,
                self.window_ms,
                self.stale_ms,
                self.lease_ms,
                repr(self.coach_share),
                task_id,
                *self._aggregates,
            ],
        )
        follow_up = _seconds(int(raw[0]))
        if follow_up is not None:
            self._send_drain(shard, follow_up, "follow_up")
        if int(raw[1]) >= 0:
            metrics.WIDENED_CLAIMS.inc()
        costly = int(raw[2])
        held = raw[3 + costly :]
        commit_ms: dict[Key, int | None] = {}
        for member, commit in zip(held[::2], held[1::2], strict=True):
            commit_ms[_pair(as_text(member))] = int(commit) if commit else None
        return Claim(
            commit_ms=commit_ms,
            costly=frozenset(UUID(as_text(coach)) for coach in raw[3 : 3 + costly]),
        )

    def renew(self, shard: int, task_id: str) -> bool:
        """Extend the lease of `task_id`'s claim to `lease_ms` from now; False when a sweep
        already took it back (its pairs are due again: another drain redoes them, and what this
        task stores is harmless, being versioned compare-and-set writes)."""
        return bool(self._renew(keys=[keys.claims(shard)], args=[self.lease_ms, task_id]))

    def lease(self, shard: int, task_id: str) -> Lease:
        """A context during which this process's `LeaseKeeper` renews `task_id`'s claim every
        third of `lease_ms`."""
        return Lease(self._keeper, shard, task_id)

    def release(
        self,
        shard: int,
        task_id: str,
        coaches: Sequence[UUID] = (),
        seconds: float | None = None,
        weights: Mapping[UUID, int] | None = None,
    ) -> None:
        """The claimed pairs are stored: forget the claim, and charge the drain's recompute
        time (`seconds`, None: not measured) to its `coaches` (their cost, which widens the
        window of a costly one; see the module): in proportion to `weights` (≥ 0, e.g. bytes
        of each coach's values; a coach missing counts 0), in equal parts without them or when
        they sum to 0."""
        elapsed_us = -1 if seconds is None else max(int(seconds * 1_000_000), 0)
        charged = [
            (coach, 1 if weights is None else max(int(weights.get(coach, 0)), 0))
            for coach in coaches
        ]
        changes = self._release(
            keys=[keys.claim(shard, task_id), keys.claims(shard), keys.coach_cost(shard)],
            args=[
                task_id,
                elapsed_us,
                self.window_ms,
                repr(self.coach_share),
                *(part for coach, weight in charged for part in (str(coach), weight)),
            ],
        )
        for coach, cost_us in zip(changes[::2], changes[1::2], strict=True):
            if int(cost_us):
                metrics.WIDENED_WINDOWS.labels("widened").inc()
                log.info(
                    "coach_window_widened",
                    coach=as_text(coach),
                    cost_ms=int(cost_us) / 1000,
                    window_ms=round(self.window_of(int(cost_us))),
                )
            else:
                metrics.WIDENED_WINDOWS.labels("restored").inc()
                log.info("coach_window_restored", coach=as_text(coach), window_ms=self.window_ms)

    def window_of(self, cost_us: int | None) -> int:
        """A coach's window (ms) for its measured cost (µs; None: not widened)."""
        return coach_window_ms(cost_us, self.window_ms, self.stale_ms, self.coach_share)

    def widened(self) -> dict[UUID, int]:
        """Coach → its window (ms), for every coach whose cost widens it (one round trip)."""
        return {
            coach: self.window_of(cost)
            for coach, cost in widened_costs(self._redis, self.shards).items()
        }

    def sweep(self, shards: Iterable[int] | None = None) -> dict[int, int]:
        """In one round trip (two at a process's first sweep, which reads `keys.SHARDS_SEEN`
        first): requeue the pairs of expired leases and send a drain where none
        is scheduled or the scheduled one is `late_ms` overdue, for `shards` (default: every
        shard in use, `shards_in_use`: a drain task answers any shard, so what a former shard
        count left is drained like the rest). Returns shard → pairs requeued, for the shards
        where some were."""
        if shards is not None:
            chosen = list(shards)
        else:
            if self._swept is None:
                self._swept = shards_in_use(self._redis, self.shards)
            chosen = list(range(self._swept))

        def build(pipe: Any) -> None:
            for shard in chosen:
                self._sweep.queue(
                    pipe,
                    keys=[
                        keys.due(shard),
                        keys.drain_scheduled(shard),
                        keys.claims(shard),
                        keys.commits(shard),
                    ],
                    args=[self.stale_ms, self.late_ms, keys.claim(shard, "")],
                )
            self._shards_seen.queue(pipe, keys=[keys.SHARDS_SEEN], args=[self.shards])

        *outcomes, seen = run_pipeline(self._redis, [self._sweep, self._shards_seen], build)
        self._swept = _in_use(self.shards, seen)
        self._recorded = True
        requeued: dict[int, int] = {}
        for shard, (count, countdown_ms) in zip(chosen, outcomes, strict=True):
            countdown = _seconds(int(countdown_ms))
            if countdown is not None:
                self._send_drain(shard, countdown, "sweep")
            if int(count):
                requeued[shard] = int(count)
        if requeued:
            metrics.CLAIMS_REQUEUED.inc(sum(requeued.values()))
            log.warning("expired_claims_requeued", requeued=requeued)
        return requeued

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


class Lease:
    """A drain's claim, renewed by its process's `LeaseKeeper` while the drain recomputes.

    `with scheduler.lease(shard, task_id) as lease: ...`; `lease.lost` tells afterwards whether
    a renewal found the claim taken back by a sweep (the drain stored anyway: harmless, see
    `RecomputeScheduler.renew`).
    """

    def __init__(self, keeper: LeaseKeeper, shard: int, task_id: str) -> None:
        self._keeper = keeper
        self.shard = shard
        self.task_id = task_id
        self.lost = False
        self.held_since = time.monotonic()
        self.renewed_at = self.held_since
        """`time.monotonic()` of the last renewal that found the lease held (or of the hold)."""

    def __enter__(self) -> Lease:
        self._keeper.hold(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._keeper.drop(self)


class LeaseKeeper:
    """One daemon thread a process, started with its first lease, that renews every lease held
    in the process every third of `lease_ms`, in one round trip (no thread a drain: starting and
    joining one cost ~5 ms a drain on a loaded 2-core machine). A renewal that fails on a
    transient Redis error is retried at the next tick; the lease may lapse meanwhile, which
    costs a second recompute, not a loss. Created after a fork, never inherited (the scheduler
    is rebuilt in each pool child)."""

    def __init__(self, client: RedisClient, renew: Lua, lease_ms: int) -> None:
        self._redis = client
        self._renew = renew
        self._lease_ms = lease_ms
        self._held: dict[int, Lease] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, lease: Lease) -> None:
        with self._lock:
            self._held[id(lease)] = lease
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()

    def drop(self, lease: Lease) -> None:
        with self._lock:
            self._held.pop(id(lease), None)

    def _run(self) -> None:
        interval = self._lease_ms / 3000
        while True:
            time.sleep(interval)
            with self._lock:
                held = list(self._held.values())
            if not held:
                continue
            try:
                self.renew(held)
            except TRANSIENT_ERRORS as error:
                log.warning("claim_lease_renewal_failed", leases=len(held), error=str(error))
            except Exception:  # a bug must not end the keeper: every later lease would lapse
                log.exception("claim_lease_keeper_error", leases=len(held))

    def renew(self, held: Sequence[Lease]) -> None:
        """Renew `held` in one round trip; mark the leases a sweep took back as lost."""

        def build(pipe: Any) -> None:
            for lease in held:
                self._renew.queue(
                    pipe, keys=[keys.claims(lease.shard)], args=[self._lease_ms, lease.task_id]
                )

        asked = time.monotonic()
        renewed = run_pipeline(self._redis, [self._renew], build)
        with self._lock:
            # A drain drops its lease before it releases the claim: a lease dropped since
            # `held` was listed may have been released before this renewal reached Redis, and
            # that is a drain that ended, not a lease lost (seen 4 ms into a fast drain).
            dropped = {id(lease) for lease in held} - set(self._held)
        for lease, held_still in zip(held, renewed, strict=True):
            if held_still:
                lease.renewed_at = asked
            elif not lease.lost and id(lease) not in dropped:
                lease.lost = True
                # How long the drain had held it, and since when nothing renewed it: a gap
                # past the lease says this process (or its keeper thread) stalled that long.
                log.warning(
                    "claim_lease_lost",
                    shard=lease.shard,
                    task_id=lease.task_id,
                    held_s=round(asked - lease.held_since, 3),
                    since_renewal_s=round(asked - lease.renewed_at, 3),
                )
