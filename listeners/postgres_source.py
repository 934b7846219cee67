"""Changes from a durable logical replication slot on the database itself (pgoutput).

Why psycopg2: psycopg 3 (3.3 at the time of writing) has no streaming replication protocol, and
polling the slot with SQL adds its polling interval to every change. psycopg2's replication
cursor streams: the server pushes each transaction as it commits.

The stream runs in its own thread (psycopg2 blocks). Batches are handed to the listener's
event loop; the slot's confirmed position only moves when the listener confirms a batch, i.e.
after its invalidations are enqueued. Killed at any moment, the listener restarts from the last
confirmed transaction: at-least-once, and recomputes are idempotent.

PostgreSQL lets one process consume a slot at a time. A second listener finds the slot active,
reports itself as standby and retries every second, taking over as soon as the first dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import psycopg2
import psycopg2.errors
import psycopg2.extras
import structlog

from config import Settings
from listeners.backoff import reconnect_delay
from listeners.pgoutput import Begin, Commit, Decoder, lsn_text
from listeners.source import Batch, Resync, Source, SourceStatus
from pipeline import metrics
from pipeline.db import libpq_dsn
from pipeline.errors import BadEventError
from pipeline.events import ChangeEvent
from pipeline.health import ListenerState

log = structlog.get_logger("listeners.postgres")

MAX_BATCH = 5000
"""Events handed over at once under load; small transactions arriving together share a batch."""
STANDBY_RETRY_S = 1.0
FEEDBACK_EVERY_S = 1.0
_DONE = object()


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


class PostgresSource(Source):
    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dsn = libpq_dsn(settings.require_database_url())
        self.slot = settings.slot_name
        self.publication = settings.publication_name
        self.status = SourceStatus()
        self._stopping = threading.Event()
        self._confirmed = 0
        self._queue: asyncio.Queue[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- Source interface ---------------------------------------------------------------
    async def items(self) -> AsyncIterator[Batch | Resync]:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=4)  # backpressure: the slot keeps what we don't take
        self._thread = threading.Thread(target=self._run, name="pg-replication", daemon=True)
        self._thread.start()
        while True:
            item = await self._queue.get()
            if item is _DONE:
                return
            yield item

    async def confirm(self, position: str | None) -> None:
        if position is not None:
            self._confirmed = max(self._confirmed, parse_lsn(position))

    async def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    async def lag_bytes(self) -> int | None:
        return await asyncio.to_thread(self._lag)

    def _lag(self) -> int | None:
        try:
            with psycopg.connect(self.dsn, connect_timeout=5) as conn:
                row = conn.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
                    "FROM pg_replication_slots WHERE slot_name = %s",
                    (self.slot,),
                ).fetchone()
        except psycopg.Error as error:
            log.warning("slot_lag_unknown", error_type=type(error).__name__, error=str(error))
            return None
        return None if row is None or row[0] is None else int(row[0])

    # --- replication thread -------------------------------------------------------------
    def _hand_over(self, item: Any) -> bool:
        """Put `item` on the listener's queue, waiting while it is full; False if stopping."""
        assert self._loop is not None and self._queue is not None
        future = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                future.result(timeout=0.2)
                return True
        future.cancel()
        return False

    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stopping.is_set():
                try:
                    self._stream()
                    attempt = 0
                except psycopg2.errors.ObjectInUse:
                    self.status.set(ListenerState.DISCONNECTED, "standby: slot in use elsewhere")
                    self._stopping.wait(STANDBY_RETRY_S)
                except (psycopg2.Error, OSError) as error:
                    attempt += 1
                    metrics.RECONNECTS.labels(self.name).inc()
                    delay = reconnect_delay(
                        attempt, self.settings.reconnect_initial_s, self.settings.reconnect_max_s
                    )
                    self.status.set(
                        ListenerState.RECONNECTING, type(error).__name__, attempts=attempt
                    )
                    log.error(
                        "replication_error",
                        error_type=type(error).__name__,
                        error=str(error).strip(),
                        retry_in_s=round(delay, 2),
                        attempt=attempt,
                    )
                    self._stopping.wait(delay)
        finally:
            self.status.set(ListenerState.DISCONNECTED, "stopped")
            assert self._loop is not None and self._queue is not None
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                asyncio.run_coroutine_threadsafe(self._queue.put(_DONE), self._loop)

    def _ensure_slot(self, cursor: Any) -> bool:
        """Create the slot if it does not exist. True when it was just created."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
            ).fetchone()
        if exists:
            return False
        try:
            cursor.create_replication_slot(self.slot, output_plugin="pgoutput")
        except psycopg2.errors.DuplicateObject:
            return False  # another listener created it first
        log.info("slot_created", slot=self.slot, publication=self.publication)
        return True

    def _stream(self) -> None:
        conn = psycopg2.connect(
            self.dsn,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            application_name="coachpipe-listener",
            connect_timeout=10,
        )
        try:
            cursor = conn.cursor()
            created = self._ensure_slot(cursor)
            cursor.start_replication(
                slot_name=self.slot,
                decode=False,
                options={"proto_version": "1", "publication_names": self.publication},
                status_interval=10,
            )
            self.status.set(ListenerState.CONNECTED, f"slot {self.slot}", attempts=0)
            log.info("replication_started", slot=self.slot, publication=self.publication)
            if created and not self._hand_over(Resync("slot created: position unknown")):
                return
            self._consume(conn, cursor)
        finally:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def _consume(self, conn: Any, cursor: Any) -> None:
        decoder = Decoder(source=self.name)
        pending: list[ChangeEvent] = []  # the open transaction's events
        ready: list[ChangeEvent] = []  # committed, not yet handed over
        ready_position: int | None = None
        ready_xids: list[int] = []
        xid = 0
        in_transaction = False
        handed = 0  # position of the last batch handed over
        idle_flush = 0
        sent_feedback = 0
        last_feedback = 0.0
        while not self._stopping.is_set():
            message = cursor.read_message()
            if message is not None:
                try:
                    decoded = decoder.decode(message.payload, message.data_start)
                except BadEventError as error:
                    metrics.BAD_INPUT.labels(self.name, error.reason).inc()
                    log.error(
                        "bad_wal_message",
                        error_type=error.reason,
                        error=str(error),
                        position=lsn_text(message.data_start),
                    )
                    continue
                if isinstance(decoded, Begin):
                    pending, in_transaction, xid = [], True, decoded.xid
                elif isinstance(decoded, Commit):
                    if pending:
                        ready_xids.append(xid)
                    ready.extend(pending)
                    pending, in_transaction = [], False
                    ready_position = decoded.end_lsn
                else:
                    pending.extend(decoded)
                if len(ready) < MAX_BATCH:
                    continue  # drain what is already buffered before handing over
            if ready_position is not None:
                batch = Batch(ready, lsn_text(ready_position), tuple(ready_xids))
                if not self._hand_over(batch):
                    return
                handed = ready_position
                ready, ready_position, ready_xids = [], None, []
            if not in_transaction and self._confirmed >= handed:
                # Nothing of ours is unconfirmed: let the slot follow the server's WAL, so
                # activity on other tables or databases does not pile up behind an idle slot.
                idle_flush = max(idle_flush, cursor.wal_end)
            flush = max(self._confirmed, idle_flush)
            now = time.monotonic()
            if flush > sent_feedback or now - last_feedback > FEEDBACK_EVERY_S:
                cursor.send_feedback(flush_lsn=flush, reply=False)
                sent_feedback, last_feedback = flush, now
            if message is None:
                select.select([conn], [], [], 0.2)
