"""The listener loop: source → routing → recompute scheduler → Celery, plus heartbeat and catch-up.

Blocking work (Redis round trips, broker publishes, catch-up queries) runs in one worker thread,
in order, so the event loop keeps reading the socket while a batch is being enqueued.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import sqlalchemy.exc
import structlog
from sqlalchemy import Engine
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from config import Settings
from listeners import last_event
from listeners.backoff import reconnect_delay
from listeners.invalidation import Invalidation, ScheduledInvalidation
from listeners.source import Batch, Resync, Source
from pipeline import keys, metrics
from pipeline.aggregates import CRITICAL
from pipeline.cancellation import cancel_and_wait
from pipeline.changelog import changes_after
from pipeline.changelog import prune as prune_change_log
from pipeline.coaches import coaches_changed_since
from pipeline.errors import is_transient
from pipeline.events import ChangeEvent
from pipeline.freshness import Freshness
from pipeline.health import HealthBoard, ListenerHealth, ListenerState
from pipeline.redis_client import RedisClient
from pipeline.scheduler import RecomputeScheduler, TaskSender
from pipeline.visibility import wait_until_visible

log = structlog.get_logger("listeners.runner")
CATCH_UP_MARGIN = timedelta(seconds=5)
"""Rows stamped up to this long before the last event seen are caught up too (clock skew)."""
PRUNE_EVERY_S = 300.0
"""How often a listener prunes the change log (see `pipeline.changelog.prune`)."""
SNAPSHOT_WAIT_S = 1.0
"""How long a batch waits for its transactions to become visible before it is sent anyway
(normally microseconds; short enough not to hold the heartbeat, which shares the thread)."""


def new_listener_id(source: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{source}"


class Listener:
    def __init__(
        self,
        source: Source,
        settings: Settings,
        *,
        client: RedisClient,
        engine: Engine,
        sender: TaskSender,
        invalidation: Invalidation | None = None,
        listener_id: str | None = None,
    ) -> None:
        self.source = source
        self.settings = settings
        self.engine = engine
        self.redis = client
        self.listener_id = listener_id or new_listener_id(source.name)
        self.scheduler = RecomputeScheduler.from_settings(client, sender, settings)
        self.freshness = Freshness(client)
        self.invalidation = invalidation or ScheduledInvalidation(self.scheduler, self.freshness)
        """How batches become recompute work (the benchmark's naive baseline injects its own)."""
        self.board = HealthBoard.from_settings(client, settings)
        self.last_event_at: float | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enqueue")
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0

    async def _blocking(self, function: Any, *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, function, *args)

    # --- health -------------------------------------------------------------------------
    def health(self) -> ListenerHealth:
        status = self.source.status
        return ListenerHealth(
            listener_id=self.listener_id,
            source=self.source.name,
            state=status.state,
            heartbeat_at=time.time(),
            last_event_at=self.last_event_at,
            reconnect_attempts=status.attempts,
            detail=status.detail,
            connected_at=status.connected_at,
            started_at=status.started_at,
        )

    def _report(self) -> None:
        health = self.health()
        for state in ListenerState:
            metrics.LISTENER_STATE.labels(self.source.name, state.value).set(
                int(state is health.state)
            )
        try:
            self.board.report(health)
        except redis.RedisError as error:
            log.warning("heartbeat_failed", error_type=type(error).__name__, error=str(error))

    def _state_changed(self) -> None:
        """Called by the source on every state change: report at once, not at the next beat."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(
                lambda: self._loop.run_in_executor(self._executor, self._report)  # type: ignore[union-attr]
            )

    def _prune_change_log(self) -> None:
        try:
            deleted = prune_change_log(self.engine)
        except sqlalchemy.exc.SQLAlchemyError as error:  # retried at the next round
            log.warning("change_log_prune_failed", error_type=type(error).__name__)
            return
        if deleted:
            log.info("change_log_pruned", rows=deleted)

    async def _heartbeat(self) -> None:
        pruned_at = time.monotonic()  # not at start: a restart loop must not prune each time
        while True:
            metrics.LISTENER_TASKS.set(len(asyncio.all_tasks()))
            await self._blocking(self._report)
            if time.monotonic() - pruned_at > PRUNE_EVERY_S:
                pruned_at = time.monotonic()
                await self._blocking(self._prune_change_log)
            lag = await self.source.lag_bytes()
            if lag is not None:
                metrics.SLOT_LAG_BYTES.labels(self.settings.slot_name).set(lag)
                if lag > self.settings.slot_lag_warn_bytes:
                    log.warning(
                        "slot_lag_high",
                        slot=self.settings.slot_name,
                        lag_bytes=lag,
                        warn_bytes=self.settings.slot_lag_warn_bytes,
                    )
            await asyncio.sleep(self.settings.heartbeat_s)

    # --- dispatch -----------------------------------------------------------------------
    def _dispatch(self, events: list[ChangeEvent]) -> None:
        newest: float | None = None
        now = time.time()
        for event in events:
            metrics.EVENTS.labels(self.source.name, event.table, event.type.value).inc()
            if event.commit_ts is not None:
                stamp = event.commit_ts.timestamp()
                newest = stamp if newest is None else max(newest, stamp)
                metrics.EVENT_LAG_SECONDS.labels(self.source.name).observe(max(now - stamp, 0))
        self.invalidation.invalidate(events)
        if newest is not None:
            self.last_event_at = max(newest, self.last_event_at or newest)
            self.redis.set(
                keys.source_last_event(self.source.name), last_event.encode(self.last_event_at)
            )

    def _await_visible(self, xids: tuple[int, ...]) -> None:
        """Hold the batch until a new snapshot sees its transactions, so the recomputes it
        asks for cannot read a snapshot without them (see `pipeline.visibility`)."""
        started = time.monotonic()
        try:
            with self.engine.connect() as connection:
                autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
                visible, polls = wait_until_visible(autocommit, xids, timeout_s=SNAPSHOT_WAIT_S)
        except sqlalchemy.exc.SQLAlchemyError as error:
            # The check only narrows a rare race: a failing check must not stop invalidation.
            metrics.VISIBILITY_WAITS.labels(self.source.name, "error").inc()
            log.error("visibility_check_failed", error_type=type(error).__name__, error=str(error))
            return
        if visible and polls == 1:
            return
        metrics.VISIBILITY_WAITS.labels(self.source.name, "visible" if visible else "timeout").inc()
        # Routine (counted in the metric): a line only at DEBUG, unless the wait ran out.
        (log.debug if visible else log.warning)(
            "commits_not_yet_visible",
            transactions=len(xids),
            visible=visible,
            waited_ms=round((time.monotonic() - started) * 1000, 2),
        )

    def _catch_up(self, resync: Resync) -> None:
        since = None if resync.everything else (resync.since or self._stored_last_event())
        names = [aggregate.name for aggregate in CRITICAL]
        if resync.snapshot is not None and not resync.everything:
            coaches, truncated = changes_after(self.engine, resync.snapshot)
            self.scheduler.request([(name, coach) for coach in coaches for name in names])
            if truncated:
                self.scheduler.request_wide(names, f"catch-up: truncate {sorted(truncated)}")
            log.info("catch_up", reason=resync.reason, scope="change log", coaches=len(coaches))
            return
        if since is None:
            started = self.scheduler.request_wide(names, f"catch-up: {resync.reason}")
            log.info("catch_up", reason=resync.reason, scope="all active coaches", started=started)
            return
        coaches = coaches_changed_since(self.engine, since, CATCH_UP_MARGIN)
        self.scheduler.request([(name, coach) for coach in coaches for name in names])
        log.info("catch_up", reason=resync.reason, since=since.isoformat(), coaches=len(coaches))

    def _stored_last_event(self) -> datetime | None:
        """Where a catch-up without a bound of its own starts; None (every active coach) when
        the marker is missing or unusable, never a guess that could skip changes."""
        raw = self.redis.get(keys.source_last_event(self.source.name))
        moment = last_event.decode(raw, datetime.now(UTC))
        if isinstance(moment, datetime):
            return moment
        metrics.CATCH_UP_FALLBACKS.labels(self.source.name, moment.value).inc()
        log.warning(
            "last_event_marker_unusable",
            source=self.source.name,
            reason=moment.value,
            stored=None if raw is None else repr(raw)[:80],
            fallback="every active coach",
        )
        return None

    async def _retrying(self, function: Callable[..., None], *args: Any) -> None:
        """Run `function` until it succeeds: an unconfirmed batch must not be skipped.

        Only transient errors (Redis, Postgres or the broker unavailable) are retried; any
        other error is a bug and ends the listener, whose durable source keeps the batch."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=self._retry_delay,
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._blocking(function, *args)

    def _retry_delay(self, state: RetryCallState) -> float:
        return reconnect_delay(
            state.attempt_number, self.settings.reconnect_initial_s, self.settings.reconnect_max_s
        )

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        metrics.ENQUEUE_RETRIES.labels(self.source.name).inc()
        log.error(
            "enqueue_failed",
            error_type=type(error).__name__,
            error=str(error),
            attempt=state.attempt_number,
            retry_in_s=round(state.upcoming_sleep, 2),
        )

    # --- main loop ----------------------------------------------------------------------
    async def run(self) -> None:
        """Consume until the source is closed (see `stop`), then report `disconnected`."""
        self._loop = asyncio.get_running_loop()
        self.source.status.on_change = self._state_changed
        heartbeat = asyncio.create_task(self._heartbeat(), name="heartbeat")
        log.info("listener_started", listener=self.listener_id, source=self.source.name)
        try:
            async for item in self.source.items():
                if isinstance(item, Resync):
                    await self._retrying(self._catch_up, item)
                    await self.source.confirm(item.position)
                    continue
                assert isinstance(item, Batch)
                if item.events:
                    if item.xids:
                        await self._blocking(self._await_visible, item.xids)
                    await self._retrying(self._dispatch, item.events)
                    self.batches += 1
                await self.source.confirm(item.position)
        finally:
            await cancel_and_wait(heartbeat)
            self.source.status.on_change = None
            await self._blocking(self._report)
            self._executor.shutdown(wait=True)
            log.info("listener_stopped", listener=self.listener_id, batches=self.batches)

    async def stop(self) -> None:
        await self.source.close()
