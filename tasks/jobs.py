"""Celery tasks: thin, idempotent wrappers over `pipeline` functions.

Every task is `acks_late` (requeued if its worker dies), retried with exponential backoff on
transient errors (`pipeline.errors.TRANSIENT_ERRORS`), and bounded by time limits (the app's
`task_annotations`, from the settings). Running any of them twice is harmless: recomputes are
versioned writes of values derived from a snapshot.

Tasks reach their settings, connections and task sender through the app they are registered
on (`PipelineTask`), never through module globals: `register(app)` is called by `create_app`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog
from celery import Task
from redis.exceptions import RedisClusterException, RedisError
from sqlalchemy import func, select

from config import Settings
from pipeline import audit, backfill, keys, redis_fencing
from pipeline.aggregates import CRITICAL, NAMES, get
from pipeline.clock import Marker, behind_the_clock, tick_window
from pipeline.coaches import active_coach_batches, coaches_crossing
from pipeline.errors import TRANSIENT_ERRORS
from pipeline.fallback import Announcement, on_transition, poll_due
from pipeline.metrics import CLOCK_TICK_COACHES, EPOCH_CHECK_ERRORS, FENCE_CHECK_ERRORS
from pipeline.read import settled_as_of
from pipeline.recompute import RecomputeResult, batches, recompute, recompute_due
from pipeline.redis_client import MASTER_CHECK_S
from pipeline.redis_epoch import record_epoch
from pipeline.redis_fencing import Fence
from pipeline.redis_values import as_text
from pipeline.refresh import count_active_coaches
from tasks import names
from tasks.runtime import Runtime

if TYPE_CHECKING:
    from tasks.pipeline_app import PipelineApp
    from tasks.producer import CeleryTaskSender

log = structlog.get_logger("tasks.jobs")
FAILOVER_REFRESH_DELAY_S = 2 * MASTER_CHECK_S

RETRY: dict[str, Any] = {
    "acks_late": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 8,
}


class PipelineTask(Task):  # type: ignore[misc]  # celery ships no type information
    """Base of the pipeline's tasks: typed access to what the app carries."""

    app: PipelineApp

    @property
    def settings(self) -> Settings:
        return self.app.settings

    @property
    def runtime(self) -> Runtime:
        return self.app.runtime

    @property
    def sender(self) -> CeleryTaskSender:
        return self.app.sender


def drain(task: PipelineTask, shard: int) -> dict[str, Any]:
    """Recompute the due pairs of scheduler shard `shard`: every due aggregate of up to a batch
    of coaches, while a lease keeps the claim ours; its cheap coaches in one snapshot stored at
    one version, then its costly ones in another (`Claim.cheap_first`)."""
    runtime = task.runtime
    scheduler = runtime.scheduler
    claim = scheduler.claim(shard, task.request.id, task.settings.recompute_batch_size)
    results: list[RecomputeResult] = []
    if claim.commit_ms:
        with scheduler.lease(shard, task.request.id):
            # Cheap coaches first, stored before a costly one's recompute starts.
            for part in claim.cheap_first():
                due = [(get(name), coaches) for name, coaches in part.by_aggregate().items()]
                results.append(
                    recompute_due(
                        runtime.engine,
                        runtime.store,
                        due,
                        commit_ms=part.commit_ms,
                        weigh=True,
                        incremental=True,
                    )
                )
    # Each part's time, charged to its coaches by the size of their values (µs each), widens
    # the window of a costly one.
    scheduler.release(
        shard,
        task.request.id,
        claim.coaches,
        sum(result.seconds for result in results) if results else None,
        {coach: us for result in results for coach, us in result.charged_us().items()},
    )
    return {
        "shard": shard,
        "coaches": len(claim.coaches),
        "pairs": len(claim.commit_ms),
        "stale": sum(result.stale for result in results),
    }


def refresh_batch(
    task: PipelineTask,
    aggregates: str | list[str],
    coach_ids: list[str],
    commit_ms: int | None = None,
) -> dict[str, Any]:
    """Recompute one batch of coaches directly (beat's bulk work, no dedup), every aggregate
    named from one snapshot.

    `commit_ms`, when a change triggered the refresh, feeds the commit → stored latency.
    """
    aggregate_names = [aggregates] if isinstance(aggregates, str) else aggregates
    coaches = [UUID(c) for c in coach_ids]
    commits = dict.fromkeys(coaches, commit_ms) if commit_ms is not None else None
    runtime = task.runtime
    result = recompute(
        runtime.engine, runtime.store, [get(n) for n in aggregate_names], coaches, commit_ms=commits
    )
    return {"aggregates": aggregate_names, "coaches": result.coaches, "stale": result.stale}


def _fan_out(task: PipelineTask, aggregates: list[str], expires: float | None) -> int:
    """One `refresh_batch` per batch of active coaches, for all `aggregates`; returns coaches."""
    coaches = 0
    for batch in active_coach_batches(task.runtime.engine, task.settings.refresh_batch_size):
        coaches += len(batch)
        task.sender.send_refresh_batch(aggregates, batch, expires=expires)
    return coaches


def _mark_refreshed(task: PipelineTask, *aggregates: str) -> None:
    now = time.time()
    task.runtime.redis.hset(keys.LAST_REFRESH, mapping=dict.fromkeys(aggregates, now))


def refresh_all(task: PipelineTask, aggregate: str, reason: str = "manual") -> dict[str, Any]:
    """Refresh `aggregate` for every active coach, in parallel batches."""
    get(aggregate)
    task.runtime.scheduler.start_wide(aggregate)
    coaches = _fan_out(task, [aggregate], expires=None)
    _mark_refreshed(task, aggregate)
    log.info("refresh_all_enqueued", aggregate=aggregate, coaches=coaches, reason=reason)
    return {"aggregate": aggregate, "coaches": coaches}


def tick_clock(task: PipelineTask, aggregate: str) -> dict[str, Any]:
    """Recompute the coaches whose `aggregate` changed by the clock alone since the last tick.

    They go as refresh batches (`REFRESH_BATCH_SIZE` coaches each) to the bulk queue, never
    into the realtime scheduler: its drains take the oldest due coaches first, so a tick that
    finds many coaches behind (its first run, with no marker: 60 days back; the first after
    beat was down) put all of them in front of every change that came after, and every
    coach's commit → stored waited for the lot (the whale-fairness runs: up to 0.4 s, in the
    seconds after the first tick). On the bulk queue a worker takes them only while no drain
    waits (`tasks.celery.QUEUE_ORDER`). They never expire: the marker has moved past them."""
    definition = get(aggregate)
    runtime = task.runtime
    key = keys.clock_last_tick(aggregate)
    with runtime.engine.begin() as connection:
        until: datetime = connection.execute(select(func.now())).scalar_one()
        raw = runtime.redis.get(key)
        window = tick_window(as_text(raw) if raw else None, until)
        if window.marker is not Marker.FOUND:
            log.warning("clock_tick_marker_unusable", aggregate=aggregate, marker=window.marker,
                        since=window.since.isoformat())  # fmt: skip
        crossing = coaches_crossing(connection, definition, window.since, until)
    behind = behind_the_clock(crossing, settled_as_of(runtime.redis, aggregate, crossing))
    for batch in batches(behind, task.settings.refresh_batch_size):
        task.sender.send_refresh_batch([aggregate], batch)
    CLOCK_TICK_COACHES.labels(aggregate, "recomputed").inc(len(behind))
    CLOCK_TICK_COACHES.labels(aggregate, "current").inc(len(crossing) - len(behind))
    runtime.redis.set(key, until.isoformat())
    return {"aggregate": aggregate, "coaches": len(behind), "crossing": len(crossing)}


def _fallback_refresh(task: PipelineTask, reason: str) -> int:
    """Refresh every critical aggregate of every active coach (the polling fallback)."""
    task.runtime.redis.hset(keys.LAST_REFRESH, keys.LAST_REFRESH_FALLBACK, time.time())
    critical = [aggregate.name for aggregate in CRITICAL]
    coaches = _fan_out(task, critical, expires=task.settings.fallback_poll_s)
    _mark_refreshed(task, *critical)
    log.info("fallback_refresh", coaches=coaches, reason=reason)
    return coaches


def check_realtime(task: PipelineTask) -> dict[str, Any]:
    """Follow the realtime status; on a transition, start or stop polling at once. Follow the
    data store's failovers too: after one, refresh everything (`pipeline.redis_epoch`)."""
    _follow_failovers(task)
    board = task.runtime.board
    status = board.status()
    previous = board.record_transition(status)
    action = on_transition(previous, status.color)
    if action.announce is Announcement.RESTORED:
        log.info("Realtime connection restored. Refreshing once, then polling stops.")
    elif action.announce is Announcement.LOST:
        log.warning(
            "Realtime connection lost. Using polling.",
            status=status.color.value,
            reason=status.reason,
        )
    if action.refresh_reason is not None:
        _fallback_refresh(task, action.refresh_reason)
    return {"status": status.color.value, "changed_from": previous and previous.value}


def _follow_failovers(task: PipelineTask) -> None:
    """On a new epoch of the data store (`pipeline.redis_epoch`) refresh everything
    `FAILOVER_REFRESH_DELAY_S` later, once every process follows the new master
    (`MASTER_CHECK_S`), so that the refresh is not itself written to a demoted one; and, when
    a former master still takes writes then, once more as soon as it no longer does
    (`pipeline.redis_fencing`): what was written to it in between is lost. The fence is
    armed before the first refresh is sent, so a refresh sent is never left unfenced."""
    client = task.runtime.redis
    try:
        previous_epoch = record_epoch(client)
        if previous_epoch is not None:
            log.warning("redis_failover_detected", previous_epoch=previous_epoch)
            _arm_fence(task)
            task.sender.send_reconcile(countdown_s=FAILOVER_REFRESH_DELAY_S)
    except (RedisError, RedisClusterException) as error:  # the status must still be followed
        EPOCH_CHECK_ERRORS.inc()
        log.warning("redis_epoch_check_failed", error_type=type(error).__name__)
        previous_epoch = None
    try:
        found = redis_fencing.check(client, time.time(), just_seen=previous_epoch is not None)
    except (RedisError, RedisClusterException) as error:
        FENCE_CHECK_ERRORS.inc()
        log.warning("redis_fence_check_failed", error_type=type(error).__name__)
        return
    waited = round(found.waited_s, 1)
    if found.fence is Fence.WAITING:
        log.info("redis_failover_not_fenced", waiting=list(found.waiting), seconds=waited)
    elif found.fence is Fence.FENCED:
        log.warning("redis_failover_fenced", seconds=waited)
        task.sender.send_reconcile()
    elif found.fence is Fence.TIMED_OUT:
        log.warning("redis_failover_fence_timeout", seconds=waited)
        task.sender.send_reconcile()


def _arm_fence(task: PipelineTask) -> None:
    """Arm the fence of a failover just seen; when that fails (the change is seen only once),
    send the second refresh for when the fence would have timed out instead."""
    try:
        redis_fencing.arm(task.runtime.redis, time.time())
    except (RedisError, RedisClusterException) as error:
        FENCE_CHECK_ERRORS.inc()
        log.warning("redis_fence_arm_failed", error_type=type(error).__name__)
        task.sender.send_reconcile(countdown_s=redis_fencing.FENCE_WAIT_MAX_S)


def fallback_poll(task: PipelineTask) -> dict[str, Any]:
    """While realtime is not green, refresh critical aggregates every FALLBACK_POLL_S."""
    runtime = task.runtime
    status = runtime.board.status()
    raw = runtime.redis.hget(keys.LAST_REFRESH, keys.LAST_REFRESH_FALLBACK)
    last = float(raw) if raw is not None else None
    if not poll_due(status.color, last, time.time(), task.settings.fallback_poll_s):
        # One line a FALLBACK_POLL_S: shows beat's fallback poll runs while it has nothing to do.
        log.info("fallback_poll_skipped", status=status.color.value)
        return {"status": status.color.value, "polled": False}
    return {
        "status": status.color.value,
        "polled": True,
        "coaches": _fallback_refresh(task, "poll"),
    }


def sweep(task: PipelineTask) -> dict[str, Any]:
    """Requeue the pairs of expired claim leases and resend lost drains (beat's backstop of
    every worker's own periodic sweep, `tasks.sweeper`)."""
    requeued = task.runtime.scheduler.sweep()
    return {str(shard): count for shard, count in requeued.items()}


def reconcile(task: PipelineTask) -> dict[str, Any]:
    """Refresh every aggregate of every active coach: the hourly safety net."""
    coaches = _fan_out(task, list(NAMES), expires=task.settings.reconcile_s)
    _mark_refreshed(task, *NAMES)
    return {"coaches": coaches}


def audit_sample(task: PipelineTask) -> dict[str, Any]:
    """Audit the next slice of active coaches (every one once per AUDIT_CYCLE_S); suspects
    are judged by `audit_confirm` once the grace period has passed."""
    runtime, settings = task.runtime, task.settings
    size = audit.sample_size(
        count_active_coaches(runtime.engine), settings.audit_interval_s, settings.audit_cycle_s
    )
    coaches = audit.next_sample(runtime.engine, runtime.redis, size)
    if not coaches:
        return {"coaches": 0}
    inspection = audit.inspect(runtime.engine, runtime.redis, list(CRITICAL), coaches)
    if inspection.suspects:
        task.sender.send_audit_confirm(audit.inspection_to_json(inspection), settings.audit_grace_s)
    else:
        _audit_confirm(task, inspection)
    return {"coaches": len(coaches), "suspects": len(inspection.suspects)}


def audit_confirm(task: PipelineTask, inspection: dict[str, Any]) -> dict[str, Any]:
    return _audit_confirm(task, audit.inspection_from_json(inspection))


def _audit_confirm(task: PipelineTask, inspection: audit.Inspection) -> dict[str, Any]:
    runtime = task.runtime
    report = audit.confirm(
        runtime.engine,
        runtime.store,
        runtime.redis,
        inspection,
        aggregates={a.name: a for a in CRITICAL},
    )
    audit.record(runtime.redis, report)
    return {"mismatches": len(report.mismatches), "repaired": report.repaired}


def advance_summaries(task: PipelineTask) -> dict[str, Any]:
    """Read again the summaries' next sessions that have begun (`pipeline.backfill.advance`):
    until then each recompute of those coaches probes them itself. A lock it gives up on
    (`LockNotAvailable`) retries like every task's transient errors; the next tick would
    do the same work."""
    return {"coaches": backfill.advance(task.runtime.writer)}


TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    names.DRAIN: drain,
    names.REFRESH_BATCH: refresh_batch,
    names.REFRESH_ALL: refresh_all,
    names.TICK_CLOCK: tick_clock,
    names.CHECK_REALTIME: check_realtime,
    names.FALLBACK_POLL: fallback_poll,
    names.SWEEP: sweep,
    names.RECONCILE: reconcile,
    names.AUDIT_SAMPLE: audit_sample,
    names.AUDIT_CONFIRM: audit_confirm,
    names.ADVANCE_SUMMARIES: advance_summaries,
}


def register(app: PipelineApp) -> None:
    """Register every task on `app` (and only there: not shared with other apps)."""
    for name, function in TASKS.items():
        app.task(name=name, bind=True, base=PipelineTask, shared=False, **RETRY)(function)
