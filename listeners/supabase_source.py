"""Changes from Supabase Realtime `postgres_changes`, through the official `realtime` client.

The client gives up reconnecting after a few attempts, reports SUBSCRIBED before the server
captures anything, dies silently if a callback raises, never checks its heartbeat replies, can
leave a channel CLOSED for good, and keeps reporting through its callbacks after it is torn down
(see the Realtime reference). So this source supervises it:

- **One generation at a time.** Each connection is a `_Link` owning one client; every callback
  and every received frame is tied to its link, and a report from any link but the current one
  is counted (`stale_generation`) and ignored, so tearing down an old client never touches the
  new one.
- **Own liveness.** The link sends its own Phoenix heartbeat every `HEARTBEAT_S` with a unique
  ref and expects the reply within `HEARTBEAT_REPLY_S`. With it goes a channel probe: an
  `access_token` push with the join's own token, a no-op for a live channel (supabase/realtime
  `RealtimeChannel.handle_in("access_token")`), answered `unmatched topic` by Phoenix when the
  server no longer has the channel. And every `CANARY_S` it commits a canary
  row to a table in the publication and expects that change back through the channel within
  `CANARY_DEADLINE_S`. The heartbeat finds a half-open socket, the canary a subscription that
  stopped delivering while the socket answers.
- **States.** Reconnecting until the join is answered; subscribing (patiently, up to
  `SUBSCRIBE_TIMEOUT_S`) until the server's "Subscribed to PostgreSQL"; connected after it.
- **Every frame read here.** Change frames are taken from the socket before the client validates
  them (it drops error rows whose commit timestamp is null), checked against the ids the join
  assigned, and answered: a coach refresh when a coach id survives, else a wide refresh.
- **Partitioned tables by their partitions.** Realtime's wal2json poller names a change by the
  partition it landed in, and keeps only the tables `pg_publication_tables` lists: each
  partition when the publication does not publish via the root, none of them when it does (the
  root alone is listed, and no change carries its name). So `supabase_realtime` publishes
  partitions as themselves, the link binds every partition of a partitioned watched table (read
  at each connect, re-read every `partition_check_s`: a new partition means a new link), and a
  change is routed by its partitioned table's name.
- **A teardown never waits on a timer.** Every wait of a link's tasks also ends when the link
  breaks, and deadlines are `asyncio.timeout` scopes, never `asyncio.wait_for`: on Python 3.11
  `wait_for` swallows a cancellation that arrives just as the awaited operation completes
  (CPython gh-86296), and a canary task whose cancellation was lost so slept a whole
  `CANARY_S` (5 s) while the teardown waited for it, before the next connect.
- **Nothing lost across a gap.** Realtime never replays, so every successful (re)connect yields
  a `Resync` carrying the last snapshot known delivered (the watermark); the catch-up reads the
  change log for every change committed after it (deletes and TRUNCATE included).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.message import Message
from realtime.types import RealtimePostgresChangesListenEvent
from websockets.asyncio.client import ClientConnection

from config import Settings
from listeners.backoff import reconnect_delay
from listeners.realtime_payload import SOURCE, parse_change, server_error
from listeners.source import Batch, Resync, Source, SourceStatus
from pipeline import metrics
from pipeline.cancellation import cancel_and_wait
from pipeline.changelog import (
    CANARY_PREFIX,
    SIGNAL_TABLE,
    TRUNCATE_PREFIX,
    WRITE_CANARY,
)
from pipeline.errors import BadEventError
from pipeline.events import ChangeEvent, ChangeType
from pipeline.health import ListenerState
from pipeline.tables import PARTITION_LEAVES, WATCHED_TABLES

log = structlog.get_logger("listeners.supabase")

CHANNEL = "coachpipe"
TOPIC = f"realtime:{CHANNEL}"
LIVENESS_CHECK_S = 1.0
CLOSE_TIMEOUT_S = 1.0
"""A close handshake on a dead socket waits this long, then the TCP connection is dropped."""
MAX_QUEUED = 100_000
MAX_BATCH = 5000
MESSAGE_TOO_BIG = 1009
UNMATCHED_TOPIC = "unmatched topic"
"""Phoenix's reply to a push on a topic the socket has no channel for."""
WATERMARK_MAX_AGE_S = 1800.0
"""A watermark older than this may predate the pruned change log: catch up the wide way."""
DB_TIMEOUT_S = 5.0
"""A partition, watermark or canary query slower than this is given up (logged, retried)."""


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


class _TappedConnection:
    """The client's websocket, with every received frame shown to `tap` first; frames the tap
    takes (it returns False) never reach the client."""

    def __init__(self, ws: ClientConnection, tap: Callable[[str | bytes], bool]) -> None:
        self._ws = ws
        self._tap = tap

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        async for frame in self._ws:
            if self._tap(frame):
                yield frame


class _Client(AsyncRealtimeClient):
    """The official client, tapped: one instance per link, never reconnecting on its own."""

    def __init__(self, url: str, token: str, tap: Callable[[str | bytes], bool]) -> None:
        super().__init__(url, token=token, auto_reconnect=False, max_retries=1)
        self._tap = tap

    async def _on_connect(self) -> None:
        ws = self._ws_connection
        if isinstance(ws, ClientConnection):
            ws.close_timeout = CLOSE_TIMEOUT_S
            self._ws_connection = _TappedConnection(ws, self._tap)  # type: ignore[assignment]
        await super()._on_connect()


@dataclass(eq=False)
class _Link:
    """One connection generation: a client, its channel, and what it has seen."""

    number: int
    client: _Client | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    broken: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    binding_ids: frozenset[int] = frozenset()
    partitions: dict[tuple[str, str], str] = field(default_factory=dict)
    """(schema, partition) bound in place of a partitioned watched table -> that table's name."""
    heartbeat_ref: str | None = None
    heartbeat_answered: asyncio.Event = field(default_factory=asyncio.Event)
    canary_back: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the link breaks first."""
        await self.until(seconds)

    async def until(self, seconds: float, event: asyncio.Event | None = None) -> bool:
        """Wait until `event` is set (True), or the link breaks or `seconds` pass (False).

        Every wait of a link's tasks goes through here, so a task ends with its link even if
        its cancellation is lost, and the teardown never waits out a timer."""
        waiters = {asyncio.ensure_future(self.broken.wait())}
        if event is not None:
            waiters.add(asyncio.ensure_future(event.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return event is not None and event.is_set() and not self.broken.is_set()

    def fail(self, reason: str, **fields: Any) -> None:
        """The first reason wins; the supervisor tears the link down."""
        if self.broken.is_set():
            return
        self.reason = reason
        self.broken.set()
        log.warning("realtime_link_lost", link=self.number, error_type=reason, **fields)


@dataclass
class _Canary:
    seq: int
    snapshot: str
    sent_at: float


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
        self.canary_topic = (
            f"{CANARY_PREFIX}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self._out: deque[ChangeEvent | Resync | None] = deque()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._link: _Link | None = None
        self._generations = 0
        self._overflowed = False
        self._db: psycopg.AsyncConnection[Any] | None = None
        self._watermark: tuple[str, float] | None = None
        """(snapshot, when): every change visible in the snapshot is known delivered."""
        self._canary_seq = 0
        self._canaries: deque[_Canary] = deque()
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
        if self._link is not None:
            self._link.fail("stopping")
        if self._supervisor is not None:
            await asyncio.gather(self._supervisor, return_exceptions=True)

    # --- generations ----------------------------------------------------------------------
    def _current(self, link: _Link, kind: str) -> bool:
        """True if `link` is the live generation; otherwise count the report and ignore it."""
        if link is self._link and not link.broken.is_set():
            return True
        metrics.STALE_REPORTS.labels(SOURCE, kind).inc()
        metrics.BAD_INPUT.labels(SOURCE, "stale_generation").inc()
        log.debug("stale_generation", link=link.number, current=self._generations, kind=kind)
        return False

    # --- callbacks and the frame tap (must never raise) -------------------------------------
    def _on_state(
        self, link: _Link, state: RealtimeSubscribeStates, error: Exception | None
    ) -> None:
        try:
            if not self._current(link, f"state_{state.value}"):
                return
            if state is RealtimeSubscribeStates.SUBSCRIBED:
                channel = link.client.channels.get(TOPIC) if link.client else None
                if channel is not None:
                    link.binding_ids = frozenset(
                        callback.id
                        for callback in channel.postgres_changes_callbacks
                        if callback.id
                    )
                return
            codes = {getattr(getattr(error, side, None), "code", None) for side in ("sent", "rcvd")}
            if MESSAGE_TOO_BIG in codes:  # the client closed on a frame over its 1 MiB limit
                metrics.BAD_INPUT.labels(SOURCE, "oversized_frame").inc()
                log.error(
                    "oversized_frame", error_type="message_too_big", close_code=MESSAGE_TOO_BIG
                )
            reason = {
                RealtimeSubscribeStates.TIMED_OUT: "join_timeout",
                RealtimeSubscribeStates.CLOSED: "channel_closed",
            }.get(state, "channel_error")
            link.fail(
                reason,
                state=state.value,
                error=f"{type(error).__name__}: {str(error)[:300]}" if error else None,
            )
        except Exception:
            log.exception("state_callback_failed")

    def _on_system(self, link: _Link, message: Any) -> None:
        try:
            if not self._current(link, "system"):
                return
            if message.extension == "postgres_changes" and message.status == "ok":
                link.ready.set()
        except Exception:
            log.exception("system_callback_failed")

    def _tap(self, link: _Link, raw: str | bytes) -> bool:
        """See every frame before the client does; False takes it from the client."""
        try:
            if not self._current(link, "frame"):
                return False
            try:
                frame = json.loads(raw)
            except ValueError:
                metrics.BAD_INPUT.labels(SOURCE, "malformed_frame").inc()
                log.warning("bad_frame", error_type="malformed_frame", frame=str(raw)[:200])
                return False
            if not isinstance(frame, dict):
                return True  # the client logs and counts it
            topic, event, payload = frame.get("topic"), frame.get("event"), frame.get("payload")
            if topic == "phoenix" and event == "phx_reply":
                if frame.get("ref") is not None and frame.get("ref") == link.heartbeat_ref:
                    link.heartbeat_answered.set()
                return False
            if topic != TOPIC:
                return True
            if event == "postgres_changes":
                self._on_change(link, payload)
                return False
            if event in ("phx_close", "phx_error") and self._stale_join_ref(link, frame.get("ref")):
                return False
            self._watch_channel_frame(link, event, payload)
        except Exception as error:  # an exception here would kill the client's receive loop
            metrics.BAD_INPUT.labels(SOURCE, "callback_error").inc()
            log.exception("frame_tap_failed", error_type=type(error).__name__)
        return True

    def _stale_join_ref(self, link: _Link, ref: object) -> bool:
        """True for a close or error naming an older join of our topic (Phoenix closes the older
        join after a duplicate join, with that join's ref): it does not concern the current
        channel, and the client, which does not check the ref, must not see it."""
        channel = link.client.channels.get(TOPIC) if link.client else None
        current = channel.join_push.ref if channel is not None else None
        if ref is None or current is None or ref == current:
            return False
        metrics.BAD_INPUT.labels(SOURCE, "stale_join_ref").inc()
        log.warning(
            "stale_join_ref", error_type="stale_join_ref", ref=str(ref)[:40], join_ref=current
        )
        return True

    def _watch_channel_frame(self, link: _Link, event: object, payload: object) -> None:
        """Name what ends a channel precisely; the client then reports it as well."""
        body = payload if isinstance(payload, Mapping) else {}
        if event == "phx_error":
            link.fail("phx_error")
        elif event == "phx_close":
            link.fail("channel_closed")
        elif event == "system" and body.get("status") == "error":
            metrics.BAD_INPUT.labels(SOURCE, "system_error").inc()
            link.fail(
                "system_error",
                extension=str(body.get("extension"))[:40],
                error=str(body.get("message"))[:300],
            )
        elif event == "phx_reply" and body.get("status") == "error":
            response = body.get("response")
            reason = response.get("reason") if isinstance(response, Mapping) else response
            if reason == UNMATCHED_TOPIC:  # the server has no channel for our topic any more
                link.fail("unmatched_topic")
            else:
                link.fail("join_refused", error=str(reason)[:300])

    def _on_change(self, link: _Link, payload: object) -> None:
        body = payload if isinstance(payload, Mapping) else {}
        data = body.get("data")
        data = data if isinstance(data, Mapping) else {}
        table = f"{data.get('schema')}.{data.get('table')}"
        ids = body.get("ids")
        matched = isinstance(ids, list) and bool(
            link.binding_ids.intersection(i for i in ids if isinstance(i, int))
        )
        if not matched:
            # A change the server meant for this channel under ids we were not given (a stale
            # join, a server bug): still a committed change, so it is answered below.
            metrics.BAD_INPUT.labels(SOURCE, "unmatched_ids").inc()
            log.warning(
                "unmatched_change",
                table=table,
                error_type="unmatched_ids",
                ids=str(ids)[:100],
                bindings=len(link.binding_ids),
            )
        if data.get("schema") == "public" and data.get("table") == SIGNAL_TABLE:
            self._on_signal(link, data)
            return
        if root := link.partitions.get((str(data.get("schema")), str(data.get("table")))):
            payload = {**body, "data": {**data, "schema": "public", "table": root}}
        try:
            event, problem = parse_change(payload)
        except BadEventError as error:
            metrics.BAD_INPUT.labels(SOURCE, error.reason).inc()
            log.warning(
                "bad_change", table=error.table or table, error_type=error.reason,
                error=str(error)[:300],
            )  # fmt: skip
            return
        if problem:
            metrics.BAD_INPUT.labels(SOURCE, problem).inc()
            log.warning(
                "server_error_row",
                table=event.table,
                type=event.type.value,
                error_type=problem,
                errors=str(data.get("errors"))[:200],
                commit_ts=data.get("commit_timestamp"),
            )
        self._queue_event(event)

    def _on_signal(self, link: _Link, data: Mapping[str, Any]) -> None:
        """A row of the signal table: our canary coming back, or a TRUNCATE announced by the
        trigger (Realtime itself never sends TRUNCATE)."""
        record = data.get("record")
        if not isinstance(record, Mapping) or server_error(data.get("errors")):
            return
        topic, seq = str(record.get("topic")), record.get("seq")
        if topic == self.canary_topic and isinstance(seq, int):
            link.canary_back = max(link.canary_back, seq)
            self._canary_returned(seq)
        elif topic.startswith(TRUNCATE_PREFIX):
            table = topic.removeprefix(TRUNCATE_PREFIX)
            if table in WATCHED_TABLES:
                self._queue_event(
                    ChangeEvent(table, ChangeType.TRUNCATE, None, None, None, source=SOURCE)
                )

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

    # --- supervision --------------------------------------------------------------------
    async def _supervise(self) -> None:
        attempt = 0
        try:
            self.status.set(ListenerState.RECONNECTING, "connecting")
            while not self._stopping.is_set():
                self._generations += 1
                link = _Link(self._generations)
                self._link = link
                try:
                    await self._establish(link)
                    if link.broken.is_set():
                        raise ConnectionError(link.reason)
                    self.status.set(ListenerState.CONNECTED, "subscribed to PostgreSQL", attempts=0)
                    self._overflowed = False
                    await self._resync("connected" if not attempt else "reconnected")
                    attempt = 0
                    link.tasks.append(asyncio.create_task(self._canary(link)))
                    link.tasks.append(asyncio.create_task(self._watch_partitions(link)))
                    await self._watch(link)
                except Exception as error:
                    link.fail(
                        "connect_failed",
                        error=f"{type(error).__name__}: {str(error)[:300]}",
                        attempt=attempt + 1,
                    )
                finally:
                    if not self._stopping.is_set():  # leave green at once, before the teardown
                        self.status.set(
                            ListenerState.RECONNECTING, link.reason, attempts=attempt + 1
                        )
                    metrics.LISTENER_TEARDOWNS.labels(SOURCE, link.reason or "stopping").inc()
                    await self._teardown(link)
                if self._stopping.is_set():
                    break
                attempt += 1
                metrics.RECONNECTS.labels(SOURCE).inc()
                delay = reconnect_delay(
                    attempt, self.settings.reconnect_initial_s, self.settings.reconnect_max_s
                )
                self.status.set(
                    ListenerState.RECONNECTING,
                    f"{link.reason}; retry in {delay:.1f} s",
                    attempts=attempt,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
        finally:
            self.status.set(ListenerState.DISCONNECTED, "stopped")
            if self._db is not None:
                with contextlib.suppress(Exception):
                    await self._db.close()
            self._push(None)

    async def _establish(self, link: _Link) -> None:
        """Connect and join; then wait, patiently, for "Subscribed to PostgreSQL"."""
        try:
            link.partitions = await self._partitions()
        except (psycopg.Error, TimeoutError) as error:  # bind by name; the check retries
            log.warning(
                "partitions_unknown", error_type=type(error).__name__, error=str(error)[:200]
            )
        partitioned = set(link.partitions.values())
        bound = [("public", t) for t in (*WATCHED_TABLES, SIGNAL_TABLE) if t not in partitioned]
        bound += list(link.partitions)
        client = _Client(self.url, self.key, lambda raw: self._tap(link, raw))
        link.client = client
        channel = client.channel(CHANNEL)
        for schema, table in bound:
            # Change frames are read by the tap; the client only needs the bindings for the join.
            channel.on_postgres_changes(
                RealtimePostgresChangesListenEvent.All,
                callback=_ignore,
                table=table,
                schema=schema,
            )
        channel.on_system(lambda message: self._on_system(link, message))
        await channel.subscribe(lambda state, error: self._on_state(link, state, error))
        if link.broken.is_set() or self._stopping.is_set():
            return
        link.tasks.append(asyncio.create_task(self._heartbeat(link)))
        self.status.set(ListenerState.SUBSCRIBING, "joined; waiting for 'Subscribed to PostgreSQL'")
        started = time.monotonic()
        ready = asyncio.create_task(link.ready.wait())
        broken = asyncio.create_task(link.broken.wait())
        done, pending = await asyncio.wait(
            {ready, broken},
            timeout=self.settings.subscribe_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for task in pending:
            task.cancel()
        if not done:
            link.fail("subscribe_timeout", waited_s=round(time.monotonic() - started, 1))
        elif ready in done and time.monotonic() - started > 5:
            log.info("slow_subscription", waited_s=round(time.monotonic() - started, 1))

    async def _partitions(self) -> dict[tuple[str, str], str]:
        """(schema, partition) -> watched table, for every partition of a partitioned watched
        table (see PARTITION_LEAVES)."""
        async with asyncio.timeout(DB_TIMEOUT_S):
            db = await self._database()
            cursor = await db.execute(PARTITION_LEAVES, {"tables": list(WATCHED_TABLES)})
            rows = await cursor.fetchall()
        return {(schema, leaf): table for table, schema, leaf in rows}

    async def _watch_partitions(self, link: _Link) -> None:
        """A partition created, attached, detached or dropped while the link is up is not (or
        no longer) what the link bound: rebuild the link; the catch-up covers the gap."""
        while not link.broken.is_set():
            await link.pause(self.settings.partition_check_s)
            if link.broken.is_set():
                return
            try:
                current = await self._partitions()
            except (psycopg.Error, TimeoutError) as error:  # the canary reports the database
                log.debug("partition_check_failed", error_type=type(error).__name__)
                continue
            if current != link.partitions:
                link.fail(
                    "partitions_changed",
                    bound=len(link.partitions),
                    now=len(current),
                )
                return

    def _healthy(self, link: _Link) -> str | None:
        """Why the client is not healthy, or None."""
        client = link.client
        if client is None or not client.is_connected:
            return "socket_closed"
        listen = client._listen_task  # the receive loop: if it ended, the client is deaf
        if listen is None or listen.done():
            return "receive_loop_ended"
        if not all(channel.is_joined for channel in client.get_channels()):
            return "channel_not_joined"
        return None

    async def _watch(self, link: _Link) -> None:
        """Return when the link is broken or the source is closing."""
        while not link.broken.is_set():
            await link.pause(LIVENESS_CHECK_S)
            if not link.broken.is_set() and (problem := self._healthy(link)):
                link.fail(problem)

    async def _heartbeat(self, link: _Link) -> None:
        """Our own Phoenix heartbeat with a unique ref; an unanswered one is a dead link."""
        client = link.client
        assert client is not None
        number = 0
        while not link.broken.is_set():
            number += 1
            link.heartbeat_ref = f"coachpipe-hb-{link.number}-{number}"
            link.heartbeat_answered.clear()
            sent = time.monotonic()
            message = Message(
                topic="phoenix", event="heartbeat", payload={}, ref=link.heartbeat_ref
            )
            channel = client.channels.get(TOPIC)
            probe = Message(
                topic=TOPIC,
                event="access_token",
                payload={"access_token": self.key},
                ref=f"{link.heartbeat_ref}-probe",
                join_ref=channel.join_push.ref if channel is not None else None,
            )
            reply_s = self.settings.heartbeat_reply_s
            try:
                async with asyncio.timeout(reply_s):
                    await client.send(message)
                    await client.send(probe)
                answered = await link.until(
                    reply_s - (time.monotonic() - sent), link.heartbeat_answered
                )
            except TimeoutError:
                answered = False
            except Exception as error:
                link.fail("heartbeat_failed", error=f"{type(error).__name__}: {str(error)[:200]}")
                return
            if link.broken.is_set():
                return
            if not answered:
                link.fail("heartbeat_timeout", waited_s=round(time.monotonic() - sent, 2))
                return
            metrics.LINK_CHECK_SECONDS.labels(SOURCE, "heartbeat").observe(time.monotonic() - sent)
            await link.pause(max(0.0, self.settings.heartbeat_s - (time.monotonic() - sent)))

    async def _teardown(self, link: _Link) -> None:
        if self._link is link:
            self._link = None  # from here on, whatever the old client reports is stale
        await cancel_and_wait(*link.tasks)
        client = link.client
        if client is None:
            return
        if self._stopping.is_set() and client.is_connected:  # leave politely when stopping
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await client.remove_all_channels()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S + 1):
                await client.close()

    # --- watermark, canary and catch-up ----------------------------------------------------
    async def _database(self) -> psycopg.AsyncConnection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            self._db = await psycopg.AsyncConnection.connect(
                self.settings.require_database_url(),
                autocommit=True,
                application_name="coachpipe-canary",
                connect_timeout=5,
            )
        return self._db

    async def _resync(self, reason: str) -> None:
        """Ask for a catch-up of everything committed after the watermark, then move the
        watermark to now: every change committed from here on is delivered (we are ready)."""
        watermark = self._watermark
        snapshot = None
        if watermark is not None and time.time() - watermark[1] < WATERMARK_MAX_AGE_S:
            snapshot = watermark[0]
        self._canaries.clear()
        try:
            async with asyncio.timeout(DB_TIMEOUT_S):
                db = await self._database()
                cursor = await db.execute("SELECT pg_current_snapshot()::text")
                row = await cursor.fetchone()
            if row is not None:
                self._watermark = (str(row[0]), time.time())
        except (psycopg.Error, OSError, TimeoutError) as error:
            # The older watermark stays: a wider catch-up next time, never a narrower one.
            log.warning("watermark_failed", error_type=type(error).__name__, error=str(error)[:200])
        self._push(Resync(reason, snapshot=snapshot))

    def _canary_returned(self, seq: int) -> None:
        while self._canaries and self._canaries[0].seq <= seq:
            canary = self._canaries.popleft()
            if canary.seq == seq:
                metrics.LINK_CHECK_SECONDS.labels(SOURCE, "canary").observe(
                    time.monotonic() - canary.sent_at
                )
                # Realtime delivers in commit order: all the canary's snapshot saw came first.
                self._watermark = (canary.snapshot, time.time())

    async def _canary(self, link: _Link) -> None:
        """Commit a canary row every CANARY_S and expect it back within CANARY_DEADLINE_S."""
        interval, deadline = self.settings.canary_s, self.settings.canary_deadline_s
        if not interval:
            return
        while not link.broken.is_set():
            if self._canaries and time.monotonic() - self._canaries[0].sent_at > deadline:
                link.fail(
                    "canary_timeout",
                    waited_s=round(time.monotonic() - self._canaries[0].sent_at, 1),
                )
                return
            await self._write_canary()
            await link.pause(interval)

    async def _write_canary(self) -> None:
        self._canary_seq += 1
        try:
            async with asyncio.timeout(DB_TIMEOUT_S):
                db = await self._database()
                sent = time.monotonic()
                cursor = await db.execute(
                    WRITE_CANARY, {"topic": self.canary_topic, "seq": self._canary_seq}
                )
                row = await cursor.fetchone()
            if row is not None:
                self._canaries.append(_Canary(self._canary_seq, str(row[0]), sent))
        except (psycopg.Error, OSError, TimeoutError) as error:
            # The database, not the link, is down: nothing to prove either way.
            log.warning(
                "canary_write_failed", error_type=type(error).__name__, error=str(error)[:200]
            )


def _ignore(payload: Any) -> None:
    """Bindings need a callback; their frames are read by the tap instead."""
