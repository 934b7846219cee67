"""Changes from Supabase Realtime `postgres_changes`, through the official `realtime` client.

The client gives up reconnecting after a few attempts, reports SUBSCRIBED before the server
captures anything, dies silently if a callback raises, and can leave a channel CLOSED for good
(see the Realtime reference). So this source supervises it:

- it counts as connected only after the server's "Subscribed to PostgreSQL" system message;
- any sign of trouble (channel error or timeout, closed channel, socket gone, receive loop
  ended) tears the client down and builds a new one, with backoff 500 ms → 8 s and jitter,
  forever;
- callbacks only validate and queue, and never raise;
- Realtime delivers at most once and never replays, so every successful (re)connect yields a
  `Resync` from the last event seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import structlog
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.types import RealtimePostgresChangesListenEvent

from config import Settings
from listeners.backoff import reconnect_delay
from listeners.realtime_payload import SOURCE, parse_change
from listeners.source import Batch, Resync, Source, SourceStatus
from pipeline import metrics
from pipeline.errors import BadEventError
from pipeline.events import ChangeEvent
from pipeline.health import ListenerState
from pipeline.tables import WATCHED_TABLES

log = structlog.get_logger("listeners.supabase")

CHANNEL = "coachpipe"
READY_TIMEOUT_S = 20.0
LIVENESS_CHECK_S = 1.0
MAX_QUEUED = 100_000
MAX_BATCH = 5000
MESSAGE_TOO_BIG = 1009


class _ClientLogCounter(logging.Filter):
    """The client reports frames it cannot parse only in its log: count them, shorten them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Unrecognized message format"):
            metrics.BAD_INPUT.labels(SOURCE, "malformed_frame").inc()
            record.msg, record.args = "Unrecognized message format (frame dropped)", ()
        elif len(message) > 500:
            record.msg, record.args = message[:500] + "…", ()
        return True


_CLIENT_LOG_FILTER = _ClientLogCounter()


class SupabaseSource(Source):
    name = SOURCE

    def __init__(self, settings: Settings) -> None:
        if settings.supabase_url is None or settings.supabase_key is None:
            from config import SettingsError

            raise SettingsError("the supabase source needs SUPABASE_URL and SUPABASE_KEY")
        self.url = settings.supabase_url.get_secret_value().rstrip("/") + "/realtime/v1"
        self.key = settings.supabase_key.get_secret_value()
        self.settings = settings
        self.status = SourceStatus()
        self._out: deque[ChangeEvent | Resync | None] = deque()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._broken = asyncio.Event()
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._client: AsyncRealtimeClient | None = None
        self._last_payload: object = None
        self._overflowed = False
        for name in ("realtime._async.client", "realtime._async.channel"):
            logger = logging.getLogger(name)
            if _CLIENT_LOG_FILTER not in logger.filters:
                logger.addFilter(_CLIENT_LOG_FILTER)

    # --- Source interface ---------------------------------------------------------------
    async def items(self) -> AsyncIterator[Batch | Resync]:
        self._supervisor = asyncio.create_task(self._supervise(), name="realtime-supervisor")
        while True:
            await self._wake.wait()
            self._wake.clear()
            events: list[ChangeEvent] = []
            while self._out:
                item = self._out.popleft()
                if isinstance(item, ChangeEvent):
                    events.append(item)
                    if len(events) < MAX_BATCH:
                        continue
                    yield Batch(events)
                    events = []
                    continue
                if events:  # keep order: the events before a resync or the end go first
                    yield Batch(events)
                    events = []
                if item is None:
                    return
                yield item
            if events:
                yield Batch(events)

    def _push(self, item: ChangeEvent | Resync | None) -> None:
        self._out.append(item)
        self._wake.set()

    async def confirm(self, position: str | None) -> None:
        """Realtime has no positions to confirm."""

    async def close(self) -> None:
        self._stopping.set()
        self._broken.set()
        if self._supervisor is not None:
            await asyncio.gather(self._supervisor, return_exceptions=True)

    # --- callbacks (must never raise) ---------------------------------------------------
    def _on_change(self, payload: Any) -> None:
        try:
            if payload is self._last_payload:
                return  # one frame matching several bindings reaches every binding's callback
            self._last_payload = payload
            event, warning = parse_change(payload)
            if warning:
                metrics.BAD_INPUT.labels(SOURCE, warning).inc()
                log.warning("degraded_change", table=event.table, error_type=warning)
            self._queue_event(event)
        except BadEventError as error:
            metrics.BAD_INPUT.labels(SOURCE, error.reason).inc()
            log.warning(
                "bad_change", table=error.table, error_type=error.reason, error=str(error)[:300]
            )
        except Exception as error:  # a callback that raises would kill the client's receive loop
            metrics.BAD_INPUT.labels(SOURCE, "callback_error").inc()
            log.exception("change_callback_failed", error_type=type(error).__name__)

    def _queue_event(self, event: ChangeEvent) -> None:
        if self._overflowed and len(self._out) < MAX_QUEUED // 2:
            self._overflowed = False
            self._push(Resync("events dropped while the queue was full"))
        if len(self._out) >= MAX_QUEUED:
            if not self._overflowed:  # Redis or the broker is down; resync once they are back
                self._overflowed = True
                metrics.BAD_INPUT.labels(SOURCE, "queue_overflow").inc()
                log.error("change_queue_full", queued=len(self._out))
            return
        self._push(event)

    def _on_system(self, message: Any) -> None:
        try:
            if message.extension == "postgres_changes" and message.status == "ok":
                self._ready.set()
        except Exception:
            log.exception("system_callback_failed")

    def _on_state(self, state: RealtimeSubscribeStates, error: Exception | None) -> None:
        try:
            if state is RealtimeSubscribeStates.SUBSCRIBED:
                return
            codes = {getattr(getattr(error, side, None), "code", None) for side in ("sent", "rcvd")}
            if MESSAGE_TOO_BIG in codes:  # the client closed on a frame over its 1 MiB limit
                metrics.BAD_INPUT.labels(SOURCE, "oversized_frame").inc()
                log.error(
                    "oversized_frame", error_type="message_too_big", close_code=MESSAGE_TOO_BIG
                )
            log.warning(
                "channel_state",
                state=state.value,
                error_type=type(error).__name__ if error else None,
                error=str(error)[:300] if error else None,
            )
            self._broken.set()
        except Exception:
            log.exception("state_callback_failed")

    # --- supervision --------------------------------------------------------------------
    async def _supervise(self) -> None:
        attempt = 0
        try:
            while not self._stopping.is_set():
                if attempt:
                    self.status.set(ListenerState.RECONNECTING, "reconnecting", attempts=attempt)
                try:
                    await self._connect_once()
                    if self._stopping.is_set():
                        break
                    self.status.set(ListenerState.CONNECTED, "subscribed to PostgreSQL", attempts=0)
                    self._overflowed = False
                    self._push(Resync("connected" if not attempt else "reconnected"))
                    attempt = 0
                    await self._watch()
                except Exception as error:
                    log.error(
                        "realtime_connect_failed",
                        error_type=type(error).__name__,
                        error=str(error)[:300],
                        attempt=attempt + 1,
                    )
                finally:
                    await self._teardown()
                if self._stopping.is_set():
                    break
                attempt += 1
                metrics.RECONNECTS.labels(SOURCE).inc()
                delay = reconnect_delay(
                    attempt, self.settings.reconnect_initial_s, self.settings.reconnect_max_s
                )
                self.status.set(
                    ListenerState.RECONNECTING, f"retry in {delay:.1f} s", attempts=attempt
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            self.status.set(ListenerState.DISCONNECTED, "stopped")
            self._push(None)

    async def _connect_once(self) -> None:
        self._ready.clear()
        self._broken.clear()
        client = AsyncRealtimeClient(self.url, token=self.key, auto_reconnect=False, max_retries=1)
        self._client = client
        channel = client.channel(CHANNEL)
        for table in WATCHED_TABLES:
            channel.on_postgres_changes(
                RealtimePostgresChangesListenEvent.All,
                callback=self._on_change,
                table=table,
                schema="public",
            )
        channel.on_system(self._on_system)
        await channel.subscribe(self._on_state)
        ready = asyncio.create_task(self._ready.wait())
        broken = asyncio.create_task(self._broken.wait())
        done, pending = await asyncio.wait(
            {ready, broken}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if ready not in done:
            raise ConnectionError("no 'Subscribed to PostgreSQL' from the server")

    def _healthy(self) -> bool:
        client = self._client
        if client is None or not client.is_connected:
            return False
        listen = client._listen_task  # the receive loop: if it ended, the client is deaf
        if listen is None or listen.done():
            return False
        return all(channel.is_joined for channel in client.get_channels())

    async def _watch(self) -> None:
        """Return when the connection is lost or the source is closing."""
        while not self._broken.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._broken.wait(), LIVENESS_CHECK_S)
            if not self._broken.is_set() and not self._healthy():
                log.warning("realtime_connection_lost", error_type="liveness_check")
                self._broken.set()

    async def _teardown(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if client.is_connected:  # leave politely; on a dead socket a leave only waits to time out
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.remove_all_channels(), 5)
        with contextlib.suppress(Exception):
            await client.close()
