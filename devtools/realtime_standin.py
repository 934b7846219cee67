"""A Supabase Realtime stand-in for tests: `postgres_changes` over Phoenix channels, fed by a
real slot.

The real `realtime` client (2.34.1) connects to it exactly as it connects to Supabase, so the
listeners are tested against the wire protocol rather than against a mock of the client. The
change feed comes from a temporary wal2json slot on the test database, polled and rendered the way
the real server's `postgres_cdc_rls` extension does it (supabase/realtime `replication_poller.ex`,
`realtime.list_changes` and `realtime.cast`; frames as Phoenix's V1 and V2 JSON serializers write
them). Production's losses are kept on purpose: changes that reach no ready channel are dropped,
never buffered or replayed, so the listeners' resync paths are really exercised. Failure
switches (closed sockets, HTTP 503, slow or malformed frames, system errors, oversized
frames) let tests provoke what production does rarely.

The server runs in its own thread with its own event loop, so synchronous tests can drive it;
every switch schedules its work on that loop and returns once the frames are queued, without
waiting on the peer, so it is also safe to call from a coroutine running the client.

This is a test fixture, not a product feature.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from devtools.erlang_phash2 import phash2

log = logging.getLogger(__name__)

T = TypeVar("T")

PATHS = ("/realtime/v1/websocket", "/socket/websocket")
VSN_1, VSN_2 = "1.0.0", "2.0.0"
TOPIC_PREFIX = "realtime:"
READY_MESSAGE = "Subscribed to PostgreSQL"
ACTION_TYPES = {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}
COMMIT_TIMESTAMP_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'
BYTEA_OID = 17
# Prefix of the logical message that flushes WAL (see FLUSH_WAL); the poller skips it.
FLUSH_MESSAGE_PREFIX = "coachpipe.realtime_standin"
FILTER_OPERATORS = ("eq", "neq")
RENDER_CHUNK = 500
# The real server's `max_record_bytes`: a change whose WAL text is larger is sent as an
# "Error 413" row keeping only values of at most 64 bytes (supabase/walrus `apply_rls`).
MAX_RECORD_BYTES = 1024 * 1024
MAX_KEPT_VALUE_BYTES = 64
PAYLOAD_TOO_LARGE = "Error 413: Payload Too Large"
# A refused join is answered after this delay (the real server's CHANNEL_ERROR_BACKOFF_MS).
JOIN_ERROR_DELAY_S = 5.0

# The option list of the real server's `realtime.list_changes`, with the tables appended.
GET_CHANGES = """
SELECT data FROM pg_logical_slot_get_changes(
    %(slot)s, NULL, %(limit)s,
    'include-pk', 'true', 'include-transaction', 'false', 'include-timestamp', 'true',
    'include-type-oids', 'true', 'format-version', '2', 'actions', 'insert,update,delete',
    'add-tables', %(tables)s)
"""

# The test cluster runs with synchronous_commit=off, so a commit reaches the slot only when the
# WAL writer flushes it, up to 200 ms later (measured: 200 ms median delivery instead of 40 ms).
# Production flushes at commit. Committing a logical message synchronously flushes everything
# before it; it is written only when something is unflushed. Off with `flush_wal=False`.
FLUSH_WAL = f"""
SELECT CASE WHEN pg_current_wal_insert_lsn() > pg_current_wal_flush_lsn()
    THEN pg_logical_emit_message(true, '{FLUSH_MESSAGE_PREFIX}', '') END
"""

TABLE_COLUMNS = """
SELECT a.attname, t.typname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

CAST_TYPES = (
    "SELECT oid::int8, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(%s::int8[]::oid[])"
)

PUBLICATION_TABLES = "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s"


def binding_id(binding: Mapping[str, Any]) -> int:
    """The server's id of a binding: `:erlang.phash2(params)` of the binding map as the join
    carried it (supabase/realtime `RealtimeChannel.add_id_to_postgres_changes`), in [0, 2**27).
    Same params give the same id on every join and socket; a binding with equal params twice in
    one join gets one id twice. Raises ValueError for values phash2 is not ported for (floats)."""
    try:
        return phash2(dict(binding))
    except TypeError as error:
        raise ValueError(f"unsupported binding value: {error}") from error


def _text_value(value: Any) -> str | None:
    """wal2json's JSON value as the text Postgres would parse (numbers were kept as text)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _filter_text(value: Any) -> str:
    """A record value as it compares with the text of an `eq` filter."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Binding:
    """One `postgres_changes` binding of a join, parsed for matching."""

    id: int
    event: str
    schema: str
    table: str | None
    filters: tuple[tuple[str, str, str], ...]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Binding:
        """Parse a client binding; raises ValueError for filters the stand-in does not support."""
        filters = []
        for condition in filter(None, str(raw.get("filter") or "").split(",")):
            column, _, rest = condition.partition("=")
            operator, _, value = rest.partition(".")
            if not column or operator not in FILTER_OPERATORS:
                raise ValueError(f"unsupported filter {condition!r}")
            filters.append((column, operator, value))
        table = raw.get("table")
        return cls(
            id=binding_id(raw),
            event=str(raw.get("event", "*")),
            schema=str(raw.get("schema") or "public"),
            table=None if table in (None, "*") else str(table),
            filters=tuple(filters),
        )

    def matches(self, data: Mapping[str, Any]) -> bool:
        """Schema, table, event and filter, like the real server; DELETEs filter on old_record."""
        if data.get("schema") != self.schema:
            return False
        if self.table is not None and data.get("table") != self.table:
            return False
        if self.event != "*" and data.get("type") != self.event:
            return False
        row = data.get("old_record" if data.get("type") == "DELETE" else "record") or {}
        for column, operator, value in self.filters:
            if column not in row:
                return False
            equal = row[column] is not None and _filter_text(row[column]) == value
            if equal != (operator == "eq"):
                return False
        return True


@dataclass(eq=False)
class _Channel:
    """One joined topic on one socket."""

    topic: str
    join_ref: str | None
    """The join's `join_ref` as the client sent it (None from a vsn 1 client that sends none)."""
    bindings: list[Binding]
    ready: bool = False
    ready_task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.topic.removeprefix(TOPIC_PREFIX)

    def cancel(self) -> None:
        self.ready = False
        if self.ready_task is not None:
            self.ready_task.cancel()


@dataclass(eq=False)
class _Peer:
    """One websocket: its serializer version, joined channels and an ordered outbox.

    Every frame goes through the outbox, so frames keep their order even when changes are
    delayed, and no caller ever waits for the peer to read.
    """

    ws: ServerConnection
    vsn: str
    channels: dict[str, _Channel] = field(default_factory=dict)
    outbox: asyncio.Queue[tuple[float, str]] = field(default_factory=asyncio.Queue)
    blackholed: bool = False
    """Neither read nor written any more, yet open: a frozen server or dropped packets."""

    def encode(
        self, topic: str, event: str, payload: Any, ref: str | None, join_ref: str | None
    ) -> str:
        """vsn 1.0.0 sends objects (always with `ref`, never `join_ref`); 2.0.0 sends arrays."""
        if self.vsn == VSN_2:
            frame: Any = [join_ref, ref, topic, event, payload]
        else:
            frame = {"event": event, "payload": payload, "ref": ref, "topic": topic}
        return json.dumps(frame, separators=(",", ":"))

    def send(
        self,
        topic: str,
        event: str,
        payload: Any,
        *,
        ref: str | None = None,
        join_ref: str | None = None,
        delay: float = 0.0,
    ) -> None:
        self.send_text(self.encode(topic, event, payload, ref, join_ref), delay)

    def send_text(self, text: str, delay: float = 0.0) -> None:
        self.outbox.put_nowait((asyncio.get_running_loop().time() + delay, text))

    def reply(
        self, topic: str, ref: str | None, join_ref: str | None, status: str, response: Any
    ) -> None:
        self.send(
            topic, "phx_reply", {"status": status, "response": response}, ref=ref, join_ref=join_ref
        )

    def close_channel(self, channel: _Channel) -> None:
        """`phx_close` carries the join ref as its ref, as Phoenix sends it."""
        channel.cancel()
        self.send(channel.topic, "phx_close", {}, ref=channel.join_ref, join_ref=channel.join_ref)

    async def drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, text = await self.outbox.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if self.blackholed:
                continue
            try:
                await self.ws.send(text)
            except ConnectionClosed:
                return


@dataclass
class _Column:
    name: str
    type: str


class RealtimeStandIn:
    """Supabase Realtime `postgres_changes` over websockets, fed by a temporary wal2json slot.

    Pass `f"{standin.url}/realtime/v1"` to `AsyncRealtimeClient`. `ready_delay` is the time
    between the join reply and the "Subscribed to PostgreSQL" system frame (1-3 s in
    production); `poll_interval` is the idle wait between slot polls (500 ms in production).
    """

    def __init__(
        self,
        database_url: str,
        tables: Sequence[str] | None = None,
        publication: str = "supabase_realtime",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ready_delay: float = 0.2,
        poll_interval: float = 0.05,
        flush_wal: bool = True,
    ) -> None:
        self.database_url = database_url
        # None: the publication's tables, read at every poll as the real `realtime.list_changes`
        # does (`pg_publication_tables`: a partitioned table's partitions, or only the table
        # itself under publish_via_partition_root, whose changes wal2json never names).
        self.tables = (
            None
            if tables is None
            else tuple(table if "." in table else f"public.{table}" for table in tables)
        )
        self.publication = publication
        self.host = host
        self.port = port
        self.ready_delay = ready_delay
        self.poll_interval = poll_interval
        self.flush_wal = flush_wal
        self.slot_name = f"realtime_standin_{uuid.uuid4().hex[:12]}"

        self.total_connections = 0
        self.joins = 0
        self.changes_sent = 0
        self.changes_dropped = 0
        self.stale_messages = 0  # client messages dropped for carrying an older join's ref
        self.poll_errors = 0
        self.close_codes: list[int | None] = []  # the code each closed socket received

        self._peers: set[_Peer] = set()
        self._down = False
        self._stalled = False
        self._down_status = HTTPStatus.SERVICE_UNAVAILABLE
        self._refused_joins: list[str] = []
        self._ignored_joins = 0
        self._blackholed: set[_Peer] = set()
        self._change_delay = 0.0
        self._extra_ready_delay = 0.0
        self._columns: dict[tuple[str, str], list[_Column]] = {}
        self._cast_types: dict[int, str] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._db: psycopg.AsyncConnection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = threading.Event()  # also seen by a loop that is still starting
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> RealtimeStandIn:
        """Start the thread; return once the slot exists and the server listens."""
        if self._thread is not None or self._started.done():
            raise RuntimeError("a RealtimeStandIn starts once")
        self._thread = threading.Thread(target=self._run, name="realtime-standin", daemon=True)
        self._thread.start()
        try:
            self._started.result(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30) -> None:
        """Close the sockets and the server, drop the slot (by closing its connection), join."""
        thread = self._thread
        if thread is None:
            return
        self._stop_requested.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("realtime stand-in thread did not stop")
        self._thread = None

    def __enter__(self) -> RealtimeStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The HTTP base URL, like a Supabase project URL (the client rewrites it to ws://)."""
        if not self.port:
            raise RuntimeError("RealtimeStandIn is not started")
        return f"http://{self.host}:{self.port}"

    # -- introspection ---------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Currently open websockets (a dropped socket stops counting at once)."""
        return len(self._peers)

    def ready_topics(self) -> list[str]:
        """Topics (one entry per socket) that got their system-ready frame and receive changes."""
        if not self._running():
            return []
        return self._call(
            lambda: sorted(
                channel.topic
                for peer in self._peers
                for channel in peer.channels.values()
                if channel.ready
            )
        )

    # -- failure switches ------------------------------------------------------------------------

    def drop_connections(self, code: int = 1011, reason: str = "") -> int:
        """Close every websocket with `code`; returns how many were closed."""
        return self._call(lambda: self._drop_all(code, reason))

    def set_down(
        self, down: bool, code: int = 1001, status: HTTPStatus = HTTPStatus.SERVICE_UNAVAILABLE
    ) -> None:
        """While down, refuse upgrades with HTTP `status` (503; 401 as for a rejected JWT) and
        close open sockets; the slot is still consumed, so changes committed meanwhile are
        lost, as in production."""

        def apply() -> None:
            self._down = down
            self._down_status = status
            if down:
                self._drop_all(code, "down")

        self._call(apply)

    def delay_changes(self, seconds: float) -> None:
        """Add latency before each change frame (later frames on a socket wait behind it)."""
        self._call(lambda: setattr(self, "_change_delay", max(0.0, seconds)))

    def blackhole(self) -> int:
        """Stop reading and writing every open socket without closing it: the client sees
        silence (no heartbeat replies, no changes) while TCP stays up. New sockets are served
        normally. Returns how many sockets went silent."""

        def apply() -> int:
            peers = list(self._peers)
            self._peers.clear()
            for peer in peers:
                peer.blackholed = True
                for channel in peer.channels.values():
                    channel.cancel()
                peer.ws.transport.pause_reading()
                self._blackholed.add(peer)
            return len(peers)

        return self._call(apply)

    def refuse_joins(
        self,
        count: int,
        reason: str = "Unauthorized: You do not have permissions to read from this Channel topic",
    ) -> None:
        """Answer the next `count` joins with an error reply, after the server's 5 s delay."""
        self._call(lambda: self._refused_joins.extend([reason] * count))

    def ignore_joins(self, count: int) -> None:
        """Leave the next `count` joins unanswered (the client's join times out)."""
        self._call(lambda: setattr(self, "_ignored_joins", self._ignored_joins + count))

    def stall_changes(self, stalled: bool) -> None:
        """While stalled, sockets stay up and heartbeats are answered, but changes are dropped
        (a poller that stopped: the silent stall clients report)."""
        self._call(lambda: setattr(self, "_stalled", stalled))

    def pause_ready(self, seconds: float) -> None:
        """Delay the system-ready frame of subsequent joins by `seconds` more (0 to reset)."""
        self._call(lambda: setattr(self, "_extra_ready_delay", max(0.0, seconds)))

    def send_raw(self, text: str) -> int:
        """Send a raw text frame (e.g. malformed JSON) to every open socket."""

        def send() -> int:
            for peer in self._peers:
                peer.send_text(text)
            return len(self._peers)

        return self._call(send)

    def send_change(self, data: Mapping[str, Any], *, ids: Sequence[int] | None = None) -> int:
        """Push a `postgres_changes` frame with arbitrary `data` to every ready channel; `ids`
        default to all binding ids of each channel. Returns the number of frames."""
        return self._call(lambda: self._push_to_ready(dict(data), ids))

    def send_oversized(self, size_bytes: int = 2 * 1024 * 1024) -> int:
        """Push a change whose frame exceeds the client's 1 MiB limit (it closes with 1009).

        The real server never sends this for a committed row (it sends the `Error 413` row
        instead, as the stand-in does for real rows over 1 MiB); it is a client test."""
        data = {
            "schema": "public",
            "table": "sessions",
            "type": "INSERT",
            "commit_timestamp": _now_timestamp(),
            "errors": None,
            "columns": [{"name": "id", "type": "uuid"}, {"name": "padding", "type": "text"}],
            "record": {"id": str(uuid.uuid4()), "padding": "x" * size_bytes},
        }
        return self._call(lambda: self._push_to_ready(data, None))

    def send_system_error(self, message: str = "boom", extension: str = "postgres_changes") -> int:
        """A `system` error on every joined topic; the channel stops receiving changes. With
        extension "system" (a shut-down channel) `phx_close` follows, as the real server does."""

        def send() -> int:
            count = 0
            for peer, channel in self._joined():
                payload = {
                    "channel": channel.name,
                    "extension": extension,
                    "status": "error",
                    "message": message,
                }
                peer.send(channel.topic, "system", payload)
                channel.cancel()
                if extension == "system":
                    del peer.channels[channel.topic]
                    peer.close_channel(channel)
                count += 1
            return count

        return self._call(send)

    def send_phx_close(self) -> int:
        """`phx_close` on every joined topic (the server ended the channel), with the join ref."""

        def send() -> int:
            joined = self._joined()
            for peer, channel in joined:
                del peer.channels[channel.topic]
                peer.close_channel(channel)
            return len(joined)

        return self._call(send)

    def send_stale_close(self, join_ref: str = "stale") -> int:
        """`phx_close` carrying an older join's ref on every joined topic, the channel staying
        joined: what a client sees of Phoenix closing the older join after a duplicate join."""

        def send() -> int:
            joined = self._joined()
            for peer, channel in joined:
                peer.send(channel.topic, "phx_close", {}, ref=join_ref, join_ref=join_ref)
            return len(joined)

        return self._call(send)

    def forget_channels(self) -> int:
        """End every channel on the server side without telling the client (a lost
        `phx_error`): its changes stop and its pushes get "unmatched topic"."""

        def forget() -> int:
            joined = self._joined()
            for peer, channel in joined:
                channel.cancel()
                del peer.channels[channel.topic]
            return len(joined)

        return self._call(forget)

    def send_phx_error(self) -> int:
        """`phx_error` (a crashed channel) on every joined topic; the server forgets the join."""

        def send() -> int:
            count = 0
            for peer, channel in self._joined():
                channel.cancel()
                del peer.channels[channel.topic]
                ref = channel.join_ref
                peer.send(channel.topic, "phx_error", {}, ref=ref, join_ref=ref)
                count += 1
            return count

        return self._call(send)

    # -- thread plumbing -------------------------------------------------------------------------

    def _running(self) -> bool:
        return self._loop is not None and self._loop.is_running()

    def _call(self, function: Callable[[], T], timeout: float = 10) -> T:
        """Run `function` on the server loop and return its result."""
        if threading.current_thread() is self._thread:
            return function()
        loop = self._loop
        if loop is None or not loop.is_running():
            raise RuntimeError("RealtimeStandIn is not running")

        async def run() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            if not self._started.done():
                self._started.set_exception(exc)
            else:
                log.exception("realtime stand-in crashed")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server: Server | None = None
        poller: asyncio.Task[None] | None = None
        try:
            await self._open_slot()
            # Phoenix neither compresses nor pings; the client's own pings are answered.
            server = await serve(
                self._serve_peer,
                self.host,
                self.port,
                process_request=self._check_request,
                compression=None,
                ping_interval=None,
                close_timeout=1,
            )
            self.port = next(iter(server.sockets)).getsockname()[1]
            poller = asyncio.create_task(self._poll_forever(), name="realtime-standin-poller")
            self._started.set_result(None)
            if not self._stop_requested.is_set():
                await self._stopping.wait()
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            if server is not None:
                server.close()
                await server.wait_closed()
            for peer in self._blackholed:
                peer.ws.transport.abort()
            if self._closing:
                await asyncio.wait(self._closing)
            if self._db is not None:
                await self._db.close()

    # -- websocket side --------------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Accept both the gateway path and Phoenix's own, any apikey, vsn 1.0.0 and 2.0.0."""
        parts = urlsplit(request.path)
        if parts.path not in PATHS:
            return connection.respond(HTTPStatus.NOT_FOUND, '{"error":"not found"}\n')
        if self._down:
            return connection.respond(self._down_status, '{"error":"down"}\n')
        vsn = parse_qs(parts.query).get("vsn", [VSN_1])[0]
        if vsn not in (VSN_1, VSN_2):
            return connection.respond(HTTPStatus.BAD_REQUEST, '{"error":"unsupported vsn"}\n')
        return None

    async def _serve_peer(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        vsn = parse_qs(urlsplit(ws.request.path).query).get("vsn", [VSN_1])[0]
        peer = _Peer(ws, vsn)
        self._peers.add(peer)
        self.total_connections += 1
        drain = asyncio.create_task(peer.drain())
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    self._on_frame(peer, raw)
        except ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)
            self._peers.discard(peer)
            for channel in peer.channels.values():
                channel.cancel()
            drain.cancel()

    def _on_frame(self, peer: _Peer, raw: str) -> None:
        if peer.blackholed:
            return
        frame = _decode(raw, peer.vsn)
        if frame is None:
            log.warning("realtime stand-in ignored a malformed frame: %.200r", raw)
            return
        join_ref, ref, topic, event, payload = frame
        if topic == "phoenix" and event == "heartbeat":
            peer.reply(topic, ref, join_ref, "ok", {})
        elif event == "phx_join":
            self._join(peer, topic, ref, join_ref, payload if isinstance(payload, dict) else {})
        elif topic in peer.channels:
            channel = peer.channels[topic]
            if channel.join_ref not in (join_ref, None):
                # Phoenix drops a message carrying an older join's ref, a leave included, with
                # no reply (phoenix `Socket.handle_in`: "a stale message to a previous join_ref").
                self.stale_messages += 1
                return
            if event == "phx_leave":
                del peer.channels[topic]
                peer.reply(topic, ref, join_ref, "ok", {})
                peer.close_channel(channel)
            # Broadcast, presence and access_token pushes have no effect on postgres_changes.
        elif event == "phx_leave":  # Phoenix answers the leave of a topic not joined with ok
            peer.reply(topic, ref, join_ref, "ok", {})
        else:  # a push on a topic this socket has not joined (or whose channel the server ended)
            peer.reply(topic, ref, None, "error", {"reason": "unmatched topic"})

    def _join(
        self,
        peer: _Peer,
        topic: str,
        ref: str | None,
        join_ref: str | None,
        payload: Mapping[str, Any],
    ) -> None:
        if not topic.startswith(TOPIC_PREFIX):
            peer.reply(topic, ref, None, "error", {"reason": "unmatched topic"})
            return
        if self._ignored_joins:
            self._ignored_joins -= 1
            return
        if self._refused_joins:
            reason = self._refused_joins.pop(0)
            payload = {"status": "error", "response": {"reason": reason}}
            peer.send(
                topic, "phx_reply", payload, ref=ref, join_ref=join_ref, delay=JOIN_ERROR_DELAY_S
            )
            return
        config = payload.get("config") or {}
        raw_bindings = [b for b in config.get("postgres_changes") or [] if isinstance(b, dict)]
        previous = peer.channels.pop(topic, None)
        channel = _Channel(topic, join_ref, [])
        problems = []
        echoed = []
        for raw in raw_bindings:
            try:
                echoed.append({**raw, "id": binding_id(raw)})
                channel.bindings.append(Binding.parse(raw))
            except ValueError as exc:
                problems.append(str(exc))
        peer.channels[topic] = channel
        self.joins += 1
        peer.reply(topic, ref, join_ref, "ok", {"postgres_changes": echoed})
        if previous is not None:  # Phoenix closes the older join of a duplicate topic
            peer.close_channel(previous)
        if raw_bindings:
            delay = self.ready_delay + self._extra_ready_delay
            channel.ready_task = asyncio.create_task(self._announce(peer, channel, delay, problems))

    async def _announce(
        self, peer: _Peer, channel: _Channel, delay: float, problems: list[str]
    ) -> None:
        """Send the system frame once "subscription rows exist": ok, or the server's error for
        a table outside the publication (or a filter the stand-in cannot evaluate)."""
        await asyncio.sleep(delay)
        if peer.channels.get(channel.topic) is not channel:
            return
        try:
            problems = problems + await self._unpublished(channel.bindings)
        except psycopg.Error:  # the poller reconnects; do not fail the join for it
            log.warning("realtime stand-in could not read publication %r", self.publication)
        if peer.channels.get(channel.topic) is not channel:
            return
        status, message = "ok", READY_MESSAGE
        if problems:
            status = "error"
            message = (
                "Unable to subscribe to changes with given parameters. Please check Realtime "
                f"is enabled for the given connect parameters: {'; '.join(problems)}"
            )
        payload = {
            "channel": channel.name,
            "extension": "postgres_changes",
            "status": status,
            "message": message,
        }
        peer.send(channel.topic, "system", payload)
        channel.ready = status == "ok"

    async def _unpublished(self, bindings: Iterable[Binding]) -> list[str]:
        assert self._db is not None
        cursor = await self._db.execute(PUBLICATION_TABLES, (self.publication,))
        published = {(schema, table) for schema, table in await cursor.fetchall()}
        return [
            f"[event: {b.event}, schema: {b.schema}, table: {b.table}]"
            for b in bindings
            if b.table is not None and (b.schema, b.table) not in published
        ]

    def _joined(self) -> list[tuple[_Peer, _Channel]]:
        return [(peer, channel) for peer in self._peers for channel in peer.channels.values()]

    def _drop_all(self, code: int, reason: str) -> int:
        """Start closing every socket and forget it at once, so no change is routed to it."""
        peers = list(self._peers)
        self._peers.clear()
        for peer in peers:
            for channel in peer.channels.values():
                channel.cancel()
            task = asyncio.create_task(peer.ws.close(code, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return len(peers)

    def _push_to_ready(self, data: dict[str, Any], ids: Sequence[int] | None) -> int:
        frames = 0
        for peer, channel in self._joined():
            if channel.ready:
                frame_ids = list(ids) if ids is not None else [b.id for b in channel.bindings]
                payload = {"ids": frame_ids, "data": data}
                peer.send(channel.topic, "postgres_changes", payload, delay=self._change_delay)
                frames += 1
        self.changes_sent += frames
        return frames

    def _fan_out(self, data: dict[str, Any]) -> None:
        """One frame per ready channel with the ids of its matching bindings; a change that
        reaches no channel is dropped (counted), never kept for later."""
        frames = 0
        for peer, channel in self._joined():
            if not channel.ready or self._stalled:
                continue
            ids = list(dict.fromkeys(b.id for b in channel.bindings if b.matches(data)))
            if ids:
                payload = {"ids": ids, "data": data}
                peer.send(channel.topic, "postgres_changes", payload, delay=self._change_delay)
                frames += 1
        self.changes_sent += frames
        if not frames:
            self.changes_dropped += 1

    # -- slot side -------------------------------------------------------------------------------

    async def _open_slot(self) -> None:
        """One autocommit connection in UTC owning a temporary slot, like the real poller."""
        db = await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, application_name="realtime_standin"
        )
        try:
            await db.execute("SET TimeZone = 'UTC'")
            await db.execute("SET synchronous_commit = on")
            cursor = await db.execute(
                "SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)
            )
            if await cursor.fetchone() is None:
                raise RuntimeError(f"publication {self.publication!r} does not exist")
            await db.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'wal2json', true)",
                (self.slot_name,),
            )
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def _poll_forever(self) -> None:
        """Poll again at once after rows, else wait `poll_interval`; back off on errors."""
        failures = 0
        while True:
            try:
                count = await self._poll_once()
                failures = 0
            except Exception:
                self.poll_errors += 1
                failures += 1
                log.exception("realtime stand-in poll failed")
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                if self._db is None or self._db.broken or self._db.closed:
                    if self._db is not None:
                        await self._db.close()
                    # A new slot: changes committed in between are lost, as in production.
                    with contextlib.suppress(psycopg.Error):  # retried after the next failure
                        await self._open_slot()
                continue
            if not count:
                await asyncio.sleep(self.poll_interval)

    async def _poll_once(self) -> int:
        assert self._db is not None
        if self.flush_wal:
            await self._db.execute(FLUSH_WAL)
        tables = self.tables
        if tables is None:
            cursor = await self._db.execute(PUBLICATION_TABLES, (self.publication,))
            tables = tuple(f"{schema}.{table}" for schema, table in await cursor.fetchall())
        cursor = await self._db.execute(
            GET_CHANGES, {"slot": self.slot_name, "limit": 100, "tables": ",".join(tables)}
        )
        # Numbers stay text, so numeric and int8 values reach Postgres' cast unrounded.
        rows = []
        for (data,) in await cursor.fetchall():
            row = json.loads(data, parse_int=str, parse_float=str, parse_constant=str)
            row["too_large"] = len(data.encode()) > MAX_RECORD_BYTES
            rows.append(row)
        changes = [row for row in rows if row.get("action") in ACTION_TYPES]
        # A poll returns whole transactions, which can be large; render them in chunks so one
        # query stays under Postgres' 65,535 bind parameters.
        for start in range(0, len(changes), RENDER_CHUNK):
            for data in await self._render(changes[start : start + RENDER_CHUNK]):
                self._fan_out(data)
        return len(rows)

    async def _render(self, changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Build `data` like the real server: catalog columns, values cast by Postgres
        (`to_jsonb(value::type)` in a UTC session), millisecond commit timestamp.

        One query renders the whole batch, one SELECT per change.
        """
        assert self._db is not None
        await self._load_catalog(changes)
        selects = []
        params: list[str | None] = []
        commit_timestamp = sql.SQL("to_char({}::timestamptz AT TIME ZONE 'utc', {})").format(
            sql.Placeholder(), sql.Literal(COMMIT_TIMESTAMP_FORMAT)
        )
        for n, change in enumerate(changes):
            parts: list[sql.Composable] = [sql.Literal(n), commit_timestamp]
            params.append(change["timestamp"])
            for key in ("columns", "identity"):
                values = []
                for column in change.get(key) or []:
                    params.append(_text_value(column.get("value")))
                    values.append(self._cast(int(column["typeoid"])))
                parts.append(sql.SQL("ARRAY[{}]::jsonb[]").format(sql.SQL(", ").join(values)))
            selects.append(sql.SQL("SELECT {}").format(sql.SQL(", ").join(parts)))
        query = sql.SQL("SELECT * FROM ({}) AS batch ORDER BY 1").format(
            sql.SQL(" UNION ALL ").join(selects)
        )
        cursor = await self._db.execute(query, params)
        rendered: list[dict[str, Any]] = []
        for (n, timestamp, new_values, old_values), change in zip(
            await cursor.fetchall(), changes, strict=True
        ):
            assert n == len(rendered)
            rendered.append(self._data(change, timestamp, new_values, old_values))
        return rendered

    def _cast(self, typeoid: int) -> sql.Composable:
        """`to_jsonb(value::type)`, as `realtime.cast`; bytea passes through as wal2json's hex."""
        if typeoid == BYTEA_OID:
            return sql.SQL("to_jsonb({}::text)").format(sql.Placeholder())
        return sql.SQL("to_jsonb({}::text::{})").format(
            sql.Placeholder(), sql.SQL(self._cast_types[typeoid])
        )

    def _data(
        self,
        change: Mapping[str, Any],
        timestamp: str,
        new_values: list[Any],
        old_values: list[Any],
    ) -> dict[str, Any]:
        schema, table, action = change["schema"], change["table"], change["action"]
        record = {
            c["name"]: v for c, v in zip(change.get("columns") or [], new_values, strict=True)
        }
        old = {c["name"]: v for c, v in zip(change.get("identity") or [], old_values, strict=True)}
        columns = self._columns[(schema, table)]
        data: dict[str, Any] = {
            "schema": schema,
            "table": table,
            "type": ACTION_TYPES[action],
            "commit_timestamp": timestamp,
            "errors": None,
            "columns": [{"name": c.name, "type": c.type} for c in columns],
        }
        if change.get("too_large"):
            data["errors"] = [PAYLOAD_TOO_LARGE]
            record = _short_values(record, change.get("columns"))
            old = _short_values(old, change.get("identity"))
        if action in ("I", "U"):
            # An unchanged TOASTed value is missing from the WAL: fill it from identity.
            data["record"] = record | {k: v for k, v in old.items() if k not in record}
        if action in ("U", "D"):
            data["old_record"] = old
        return data

    async def _load_catalog(self, changes: Iterable[Mapping[str, Any]]) -> None:
        """Cache table columns (refreshed when the WAL names an unknown one) and cast types."""
        assert self._db is not None
        oids: set[int] = set()
        for change in changes:
            key = (change["schema"], change["table"])
            names = {c["name"] for part in ("columns", "identity") for c in change.get(part) or []}
            known = {c.name for c in self._columns.get(key, [])}
            if key not in self._columns or not names <= known:
                cursor = await self._db.execute(TABLE_COLUMNS, key)
                self._columns[key] = [_Column(n, t) for n, t in await cursor.fetchall()]
            for part in ("columns", "identity"):
                oids.update(int(c["typeoid"]) for c in change.get(part) or [])
        missing = sorted(oids - self._cast_types.keys() - {BYTEA_OID})
        if missing:
            cursor = await self._db.execute(CAST_TYPES, (missing,))
            self._cast_types.update(dict(await cursor.fetchall()))


def _short_values(values: dict[str, Any], wal_columns: Any) -> dict[str, Any]:
    """The values an `Error 413` row keeps: those whose WAL text is at most 64 bytes."""
    short = {
        column["name"]
        for column in wal_columns or []
        if len((_text_value(column.get("value")) or "").encode()) <= MAX_KEPT_VALUE_BYTES
    }
    return {name: value for name, value in values.items() if name in short}


def _decode(raw: str, vsn: str) -> tuple[str | None, str | None, str, str, Any] | None:
    """A client frame as (join_ref, ref, topic, event, payload), or None when malformed."""
    try:
        message = json.loads(raw)
        if vsn == VSN_2:
            join_ref, ref, topic, event, payload = message
        else:
            join_ref, ref = message.get("join_ref"), message.get("ref")
            topic, event, payload = message["topic"], message["event"], message["payload"]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not isinstance(topic, str) or not isinstance(event, str):
        return None
    return join_ref, ref, topic, event, payload


def _now_timestamp() -> str:
    """Now in the `commit_timestamp` format (milliseconds, "Z")."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
