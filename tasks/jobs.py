"""Celery tasks: thin, idempotent wrappers over `pipeline` functions.

Every task is `acks_late` (requeued if its worker dies), retried with exponential backoff on
database and Redis errors, and bounded by time limits. Running any of them twice is harmless:
recomputes are versioned writes of values derived from a snapshot.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import redis
import sqlalchemy.exc
import structlog
from sqlalchemy import func, select

from pipeline import keys
from pipeline.aggregates import CRITICAL, NAMES, get
from pipeline.clock import Marker, tick_window
from pipeline.coaches import active_coach_batches, coaches_crossing
from pipeline.health import Color
from pipeline.recompute import recompute
from tasks.celery import REFRESH_QUEUE, app, runtime, settings

log = structlog.get_logger("tasks.jobs")

TRANSIENT = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    psycopg.OperationalError,
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
)
RETRY = {
    "acks_late": True,
    "autoretry_for": TRANSIENT,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 8,
}
REALTIME_LIMITS = {
    "time_limit": settings.realtime_time_limit_s,
    "soft_time_limit": max(settings.realtime_time_limit_s - 5, 1),
}
REFRESH_LIMITS = {
    "time_limit": settings.refresh_time_limit_s,
    "soft_time_limit": max(settings.refresh_time_limit_s - 5, 1),
}
FALLBACK_LAST_RUN = "fallback"


@app.task(bind=True, name="tasks.jobs.drain", **RETRY, **REALTIME_LIMITS)
def drain(self: Any, aggregate: str) -> dict[str, Any]:
    """Recompute every coach of `aggregate` that is due, in one set-based batch."""
    definition = get(aggregate)
    claim = runtime.scheduler.claim(aggregate, self.request.id, settings.recompute_batch_size)
    result = None
    if claim.coaches:
        result = recompute(
            runtime.engine, runtime.store, definition, claim.coaches, commit_ms=claim.commit_ms
        )
    runtime.scheduler.release(aggregate, self.request.id)
    return {"aggregate": aggregate, "coaches": len(claim.coaches), "stale": result and result.stale}


@app.task(name="tasks.jobs.refresh_batch", **RETRY, **REFRESH_LIMITS)
def refresh_batch(
    aggregates: str | list[str], coach_ids: list[str], commit_ms: int | None = None
) -> dict[str, Any]:
    """Recompute one batch of coaches directly (beat's bulk work, no dedup), every aggregate
    named from one snapshot.

    `commit_ms`, when a change triggered the refresh, feeds the commit → stored latency.
    """
    names = [aggregates] if isinstance(aggregates, str) else aggregates
    coaches = [UUID(c) for c in coach_ids]
    commits = dict.fromkeys(coaches, commit_ms) if commit_ms is not None else None
    result = recompute(
        runtime.engine, runtime.store, [get(n) for n in names], coaches, commit_ms=commits
    )
    return {"aggregates": names, "coaches": result.coaches, "stale": result.stale}


def _fan_out(aggregates: list[str], expires: float | None) -> int:
    """One `refresh_batch` per batch of active coaches, for all `aggregates`; returns coaches."""
    coaches = 0
    for batch in active_coach_batches(runtime.engine, settings.refresh_batch_size):
        coaches += len(batch)
        ids = [str(coach) for coach in batch]
        refresh_batch.apply_async((aggregates, ids), queue=REFRESH_QUEUE, expires=expires)
    return coaches


def _mark_refreshed(*names: str) -> None:
    now = time.time()
    runtime.redis.hset(keys.LAST_REFRESH, mapping=dict.fromkeys(names, now))


@app.task(name="tasks.jobs.refresh_all", **RETRY, **REFRESH_LIMITS)
def refresh_all(aggregate: str, reason: str = "manual") -> dict[str, Any]:
    """Refresh `aggregate` for every active coach, in parallel batches."""
    get(aggregate)
    runtime.scheduler.start_wide(aggregate)
    coaches = _fan_out([aggregate], expires=None)
    _mark_refreshed(aggregate)
    log.info("refresh_all_enqueued", aggregate=aggregate, coaches=coaches, reason=reason)
    return {"aggregate": aggregate, "coaches": coaches}


@app.task(name="tasks.jobs.tick_clock", **RETRY, **REFRESH_LIMITS)
def tick_clock(aggregate: str) -> dict[str, Any]:
    """Recompute the coaches whose `aggregate` changed by the clock alone since the last tick."""
    definition = get(aggregate)
    key = f"{keys.CLOCK_LAST_TICK}:{aggregate}"
    with runtime.engine.connect() as connection:
        until: datetime = connection.execute(select(func.now())).scalar_one()
        raw = runtime.redis.get(key)
        window = tick_window(raw.decode() if raw else None, until)
        if window.marker is not Marker.FOUND:
            log.warning("clock_tick_marker_unusable", aggregate=aggregate, marker=window.marker,
                        since=window.since.isoformat())  # fmt: skip
        crossing = coaches_crossing(connection, definition, window.since, until)
    if crossing:
        runtime.scheduler.request([(aggregate, coach) for coach in crossing])
    runtime.redis.set(key, until.isoformat())
    return {"aggregate": aggregate, "coaches": len(crossing)}


def _fallback_refresh(reason: str) -> int:
    """Refresh every critical aggregate of every active coach (the polling fallback)."""
    runtime.redis.hset(keys.LAST_REFRESH, FALLBACK_LAST_RUN, time.time())
    coaches = _fan_out([a.name for a in CRITICAL], expires=settings.fallback_poll_s)
    _mark_refreshed(*(a.name for a in CRITICAL))
    log.info("fallback_refresh", coaches=coaches, reason=reason)
    return coaches


@app.task(name="tasks.jobs.check_realtime", **RETRY, **REFRESH_LIMITS)
def check_realtime() -> dict[str, Any]:
    """Follow the realtime status; on a transition, start or stop polling at once."""
    status = runtime.board.status()
    previous = runtime.board.record_transition(status)
    if previous is not None:
        if status.color is Color.GREEN:
            log.info("Realtime connection restored. Refreshing once, then polling stops.")
            _fallback_refresh("recovered")
        else:
            if previous is Color.GREEN:
                log.warning(
                    "Realtime connection lost. Using polling.",
                    status=status.color.value,
                    reason=status.reason,
                )
            _fallback_refresh(f"status {status.color.value}")
    return {"status": status.color.value, "changed_from": previous and previous.value}


@app.task(name="tasks.jobs.fallback_poll", **RETRY, **REFRESH_LIMITS)
def fallback_poll() -> dict[str, Any]:
    """While realtime is not green, refresh critical aggregates every FALLBACK_POLL_S."""
    status = runtime.board.status()
    if status.color is Color.GREEN:
        return {"status": "green", "polled": False}
    last = runtime.redis.hget(keys.LAST_REFRESH, FALLBACK_LAST_RUN)
    if last is not None and time.time() - float(last) < settings.fallback_poll_s * 0.9:
        return {"status": status.color.value, "polled": False}
    return {"status": status.color.value, "polled": True, "coaches": _fallback_refresh("poll")}


@app.task(name="tasks.jobs.sweep", **RETRY, **REFRESH_LIMITS)
def sweep() -> dict[str, Any]:
    """Requeue coaches of claims whose drain task vanished; re-enqueue lost drains."""
    requeued = {}
    for aggregate in CRITICAL:
        count = runtime.scheduler.sweep(aggregate.name)
        if count:
            requeued[aggregate.name] = count
    if requeued:
        log.warning("lost_claims_requeued", requeued=requeued)
    return requeued


@app.task(name="tasks.jobs.reconcile", **RETRY, **REFRESH_LIMITS)
def reconcile() -> dict[str, Any]:
    """Refresh every aggregate of every active coach: the hourly safety net."""
    coaches = _fan_out(list(NAMES), expires=settings.reconcile_s)
    _mark_refreshed(*NAMES)
    return {"coaches": coaches}
