"""Cross-process dedup, debounce and batching of recompute requests, atomically in Redis.

Each aggregate has a sorted set of due coaches (`keys.due`). Membership is the pending marker:
a request for a coach already in it is suppressed. The window is a per-key throttle ("at most
one recompute per key per window"): a coach whose last recompute started more than a window ago
is due at once (leading edge, no added latency); otherwise it is due when the window since that
start has passed (trailing edge, one recompute absorbs the burst).

A *drain* task of the aggregate takes every due coach at once (batching) and removes them from
the set **before** it reads Postgres, so a change committed during the recompute adds the coach
again and gets one more recompute: nothing is lost. Requests only enqueue a drain when none is
scheduled early enough (`keys.drain_scheduled`), so a burst over many coaches enqueues a few
tasks, not one per change.

A drain's claim is kept under its task id until the values are stored, so a redelivered task
(worker killed, `acks_late`) recomputes the same coaches. Markers are never stuck: a due entry
older than `stale_ms` is treated as lost and rescheduled, and `sweep` finds the claims of tasks
that vanished.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import redis

from pipeline import keys
from pipeline.lua import Lua, run_pipeline
from pipeline.redis_values import as_text
from pipeline.routing import Key

# KEYS: due, last_run, drain_scheduled, commits
# ARGV: window_ms, stale_ms, then (coach, commit_ms or "") pairs
# Returns {enqueued, suppressed, countdown_ms (-1: no drain to enqueue)}
REQUEST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local stale = tonumber(ARGV[2])
local enqueued, suppressed, earliest = 0, 0, nil
for i = 3, #ARGV, 2 do
    local coach, commit = ARGV[i], ARGV[i + 1]
    local pending = redis.call('ZSCORE', KEYS[1], coach)
    if pending and now - tonumber(pending) < stale then
        suppressed = suppressed + 1
    else
        local due = now
        local last = redis.call('ZSCORE', KEYS[2], coach)
        if last and tonumber(last) + window > now then
            due = tonumber(last) + window
        end
        redis.call('ZADD', KEYS[1], due, coach)
        if commit ~= '' then
            redis.call('HSETNX', KEYS[4], coach, commit)
        end
        enqueued = enqueued + 1
        if pending then
            redis.call('DEL', KEYS[3])  -- the drain that should have taken it was lost
        end
        if earliest == nil or due < earliest then
            earliest = due
        end
    end
end
local countdown = -1
if earliest ~= nil then
    local scheduled = redis.call('GET', KEYS[3])
    if not scheduled or tonumber(scheduled) > earliest then
        redis.call('SET', KEYS[3], earliest, 'PX', earliest - now + stale)
        countdown = earliest - now
    end
end
return {enqueued, suppressed, countdown}
"""

# KEYS: due, last_run, drain_scheduled, commits, claim, claims
# ARGV: batch, window_ms, stale_ms, task_id
# Returns {countdown_ms of a follow-up drain (-1: none), coach, commit, coach, commit, ...}
CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, stale = tonumber(ARGV[2]), tonumber(ARGV[3])
local taken = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, coach in ipairs(taken) do
    local commit = redis.call('HGET', KEYS[4], coach) or ''
    redis.call('HSETNX', KEYS[5], coach, commit)
    redis.call('ZADD', KEYS[2], now, coach)
end
if #taken > 0 then
    redis.call('ZREM', KEYS[1], unpack(taken))
    redis.call('HDEL', KEYS[4], unpack(taken))
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
if redis.call('EXISTS', KEYS[5]) == 1 then
    redis.call('ZADD', KEYS[6], 'NX', now, ARGV[4])
end
local scheduled = redis.call('GET', KEYS[3])
if scheduled and tonumber(scheduled) <= now then
    redis.call('DEL', KEYS[3])
    scheduled = nil
end
local countdown = -1
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[1] then
    local at = math.max(tonumber(nxt[2]), now)
    if not scheduled or tonumber(scheduled) > at then
        redis.call('SET', KEYS[3], at, 'PX', at - now + stale)
        countdown = at - now
    end
end
local result = {countdown}
local held = redis.call('HGETALL', KEYS[5])
for i = 1, #held do
    result[#result + 1] = held[i]
end
return result
"""

# KEYS: claim, claims; ARGV: task_id
RELEASE = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: due, drain_scheduled, claims; ARGV: stale_ms, claim key prefix
# Requeues the coaches of claims older than stale_ms; reports whether a drain is needed.
SWEEP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[1])
local requeued = 0
for _, task in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - stale)) do
    local claim = ARGV[2] .. task
    for _, coach in ipairs(redis.call('HKEYS', claim)) do
        redis.call('ZADD', KEYS[1], 'NX', now, coach)
        requeued = requeued + 1
    end
    redis.call('DEL', claim)
    redis.call('ZREM', KEYS[3], task)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local countdown = -1
if nxt[1] then
    local scheduled = redis.call('GET', KEYS[2])
    if not scheduled or tonumber(nxt[2]) < now - stale then
        local at = math.max(tonumber(nxt[2]), now)
        redis.call('SET', KEYS[2], at, 'PX', at - now + stale)
        countdown = at - now
    end
end
return {requeued, countdown}
"""

# KEYS: wide marker; ARGV: stale_ms. 1 if this call set the marker (enqueue the refresh).
REQUEST_WIDE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', tonumber(ARGV[1])) then
    return 1
end
return 0
"""


@dataclass(frozen=True)
class RequestOutcome:
    """What one batch of requests did: counts, and the drains to enqueue (aggregate → countdown)."""

    enqueued: int = 0
    suppressed: int = 0
    drains: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    coaches: list[UUID]
    commit_ms: dict[UUID, int | None]
    follow_up_s: float | None
    """Countdown of the follow-up drain the caller must enqueue, if any."""


class Dedup:
    def __init__(self, client: redis.Redis, *, window_ms: int, stale_ms: int) -> None:
        self._redis = client
        self.window_ms = window_ms
        self.stale_ms = stale_ms
        self._request = Lua(client, REQUEST)
        self._claim = Lua(client, CLAIM)
        self._release = Lua(client, RELEASE)
        self._sweep = Lua(client, SWEEP)
        self._request_wide = Lua(client, REQUEST_WIDE)

    def request(
        self, items: Iterable[Key], commit_ms: Mapping[Key, int | None] | None = None
    ) -> RequestOutcome:
        """Mark (aggregate, coach) pairs due, in one round trip per call.

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
                    args=[self.window_ms, self.stale_ms, *pairs],
                )

        outcomes = run_pipeline(self._redis, [self._request], build)
        enqueued = suppressed = 0
        drains: dict[str, float] = {}
        for aggregate, (added, skipped, countdown) in zip(by_aggregate, outcomes, strict=True):
            enqueued += int(added)
            suppressed += int(skipped)
            if int(countdown) >= 0:
                drains[aggregate] = int(countdown) / 1000
        return RequestOutcome(enqueued=enqueued, suppressed=suppressed, drains=drains)

    def claim(self, aggregate: str, task_id: str, batch: int) -> Claim:
        """Take up to `batch` due coaches (plus any this task claimed on an earlier delivery)."""
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
        countdown = int(raw[0])
        pairs = raw[1:]
        commit_ms: dict[UUID, int | None] = {}
        for coach, commit in zip(pairs[::2], pairs[1::2], strict=True):
            commit_ms[UUID(as_text(coach))] = int(commit) if commit else None
        return Claim(
            coaches=sorted(commit_ms),
            commit_ms=commit_ms,
            follow_up_s=countdown / 1000 if countdown >= 0 else None,
        )

    def release(self, aggregate: str, task_id: str) -> None:
        """The claimed coaches are stored: forget the claim."""
        self._release(keys=[keys.claim(aggregate, task_id), keys.claims(aggregate)], args=[task_id])

    def sweep(self, aggregate: str) -> tuple[int, float | None]:
        """Requeue coaches of claims whose task vanished; return (requeued, drain countdown)."""
        requeued, countdown = self._sweep(
            keys=[keys.due(aggregate), keys.drain_scheduled(aggregate), keys.claims(aggregate)],
            args=[self.stale_ms, keys.claim(aggregate, "")],
        )
        return int(requeued), (int(countdown) / 1000 if int(countdown) >= 0 else None)

    def request_wide(self, aggregate: str) -> bool:
        """True if the caller should enqueue a refresh of every coach's `aggregate`."""
        return bool(self._request_wide(keys=[keys.wide_pending(aggregate)], args=[self.stale_ms]))

    def start_wide(self, aggregate: str) -> None:
        """A wide refresh starts: later requests must schedule another one."""
        self._redis.delete(keys.wide_pending(aggregate))
