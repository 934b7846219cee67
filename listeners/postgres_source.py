"""Changes from a durable logical replication slot on the database itself (pgoutput).

Why psycopg2: psycopg 3 (3.3 at the time of writing) has no streaming replication protocol, and
polling the slot with SQL adds its polling interval to every change. psycopg2's replication
cursor streams: the server pushes each transaction as it commits.

The stream runs in its own thread (psycopg2 blocks). Batches are handed to the listener's
event loop; the slot's confirmed position only moves when the listener confirms a batch, i.e.
after its invalidations are enqueued. Killed at any moment, the listener restarts from the last
confirmed transaction: at-least-once, and recomputes are idempotent.

The slot is only created once the publication exists (pgoutput reads the catalog as of the
slot's position: a publication created later stays invisible there). A slot that cannot stream
any more (see `listeners.slot_faults`) is replaced by a new one at the current position, and a
`Resync` of every active coach follows: the status stays red (`recovering`) until it is enqueued.

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
import redis
import structlog

from config import Settings
from listeners.backoff import reconnect_delay
from listeners.pgoutput import Begin, Commit, Decoder, lsn_text
from listeners.slot_faults import SlotFault, SlotRow, Suspicion, fault_of_error, fault_of_slot
from listeners.source import Batch, Resync, Source, SourceStatus
from pipeline import keys, metrics
from pipeline.db import libpq_dsn
from pipeline.errors import BadEventError
from pipeline.events import ChangeEvent
from pipeline.health import ListenerState
from pipeline.redis_client import connect

log = structlog.get_logger("listeners.postgres")

MAX_BATCH = 5000
"""Events handed over at once under load; small transactions arriving together share a batch."""
STANDBY_RETRY_S = 1.0
PUBLICATION_WAIT_S = 1.0
FEEDBACK_EVERY_S = 1.0
_DONE = object()


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def join_queued(batch: Batch, queue: asyncio.Queue[Any]) -> tuple[Batch, Any]:
    """`batch` joined with the batches queued behind it (those that arrived while the listener
    dispatched the one before), up to `MAX_BATCH` events: one visibility check and one round of
    requests for all instead of one each in turn, so a listener that fell behind catches up.
    Returns (the joined batch, the first other item taken from the queue, or None)."""
    while len(batch.events) < MAX_BATCH and not queue.empty():
        following = queue.get_nowait()
        if not isinstance(following, Batch):
            return batch, following
        batch = batch.joined(following)
    return batch, None


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
        self._redis = connect(settings.require_redis_url(), socket_timeout=5)
        self._had_slot = False
        self._suspicion: Suspicion | None = None
        self._awaiting_publication = False
        self._resync: Resync | None = None  # to hand over once streaming
        self._recovery: int | None = None  # the position whose confirm ends `recovering`
        self._recovery_reason = ""
        self._state_lock = threading.Lock()  # `recovering` is ended by the event loop's thread

    # --- Source interface ---------------------------------------------------------------
    async def items(self) -> AsyncIterator[Batch | Resync]:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=4)  # backpressure: the slot keeps what we don't take
        self._thread = threading.Thread(target=self._run, name="pg-replication", daemon=True)
        self._thread.start()
        carried: Any = None
        while True:
            item = carried if carried is not None else await self._queue.get()
            carried = None
            if item is _DONE:
                return
            if isinstance(item, Batch):
                item, carried = join_queued(item, self._queue)
            yield item

    async def confirm(self, position: str | None) -> None:
        if position is None:
            return
        lsn = parse_lsn(position)
        self._confirmed = max(self._confirmed, lsn)
        if self._recovery is not None and lsn >= self._recovery:
            await asyncio.to_thread(self._recovered)

    async def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        self._redis.close()

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

    def _set_state(self, state: ListenerState, detail: str, attempts: int | None = None) -> None:
        """Report `state`, except that a pending recovery keeps the listener `recovering`."""
        with self._state_lock:
            if self._recovery is not None and state is not ListenerState.DISCONNECTED:
                state, detail = ListenerState.RECOVERING, f"{self._recovery_reason} ({detail})"
            self.status.set(state, detail, attempts=attempts)

    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stopping.is_set():
                try:
                    self._stream()
                    attempt = 0
                except (psycopg2.errors.ObjectInUse, psycopg.errors.ObjectInUse):
                    self._set_state(ListenerState.DISCONNECTED, "standby: slot in use elsewhere")
                    self._stopping.wait(STANDBY_RETRY_S)
                except (psycopg2.Error, psycopg.Error, OSError) as error:
                    attempt += 1
                    metrics.RECONNECTS.labels(self.name).inc()
                    delay = reconnect_delay(
                        attempt, self.settings.reconnect_initial_s, self.settings.reconnect_max_s
                    )
                    self._suspect(error)
                    self._set_state(
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

    def _suspect(self, error: Exception) -> None:
        """Remember a fault the error reveals, with the slot it was seen on."""
        sqlstate = getattr(error, "pgcode", None) or getattr(error, "sqlstate", None)
        fault = fault_of_error(sqlstate, str(error))
        if fault is None:
            return
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as catalog:
                slot = self._slot_row(catalog)
        except psycopg.Error:
            return  # the next attempt meets the error again
        if slot is not None:
            self._suspicion = Suspicion(fault, slot.confirmed_flush_lsn)

    def _slot_row(self, catalog: psycopg.Connection[Any]) -> SlotRow | None:
        row = catalog.execute(
            "SELECT confirmed_flush_lsn::text, wal_status, active_pid FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (self.slot,),
        ).fetchone()
        return None if row is None else SlotRow(*row)

    def _publication_ready(self, catalog: psycopg.Connection[Any]) -> bool:
        """True when the publication exists; otherwise wait a moment (logged once)."""
        exists = catalog.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)
        ).fetchone()
        if exists:
            if self._awaiting_publication:
                log.info("publication_found", publication=self.publication)
                self._awaiting_publication = False
            return True
        if not self._awaiting_publication:
            log.warning(
                "publication_missing",
                publication=self.publication,
                slot=self.slot,
                fix="coachpipe migrate",
            )
            self._awaiting_publication = True
        self._set_state(
            ListenerState.RECONNECTING,
            f"waiting for publication {self.publication} (coachpipe migrate)",
        )
        self._stopping.wait(PUBLICATION_WAIT_S)
        return False

    def _prepare_slot(self, catalog: psycopg.Connection[Any]) -> None:
        """Make sure a slot that can stream exists, replacing a broken one."""
        slot = self._slot_row(catalog)
        fault = fault_of_slot(slot, self._had_slot, self._suspicion)
        self._suspicion = None
        if slot is not None and fault is None:
            self._had_slot = True
            self._resume_unfinished_recovery(slot)
            return
        if slot is not None:
            # Raises ObjectInUse when another listener streams from it: it is not ours to drop.
            catalog.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
        try:
            row = catalog.execute(
                "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                (self.slot,),
            ).fetchone()
        except psycopg.errors.DuplicateObject:
            return  # another listener created it first, and answers for it
        assert row is not None
        self._had_slot = True
        reason = (
            f"slot recreated ({fault}): changes before {row[0]} may be missed"
            if fault is not None
            else "slot created: position unknown"
        )
        if fault is not None:
            metrics.SLOT_RECREATED.labels(fault.value).inc()
            log.error(
                "slot_recreated",
                slot=self.slot,
                reason=fault.value,
                position=row[0],
                action="refreshing every active coach",
            )
        else:
            log.info("slot_created", slot=self.slot, publication=self.publication, position=row[0])
        self._record_recovery(fault, reason, row[0])
        self._begin_recovery(reason, row[0])

    def _begin_recovery(self, reason: str, position: str) -> None:
        with self._state_lock:
            self._recovery, self._recovery_reason = parse_lsn(position), reason
        self._resync = Resync(reason, everything=True, position=position)
        self._set_state(ListenerState.RECOVERING, "refresh of every coach not enqueued yet")

    def _record_recovery(self, fault: SlotFault | None, reason: str, position: str) -> None:
        """Kept in Redis for `coachpipe status`, and so that a listener restarted before the
        refresh was enqueued still asks for it."""
        key = keys.slot_recreations(self.slot)
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(key, "pending", reason)
            if fault is not None:
                pipe.hset(key, "last_reason", fault.value)
                pipe.hset(key, "last_at", time.time())
                pipe.hset(key, "position", position)
                pipe.hincrby(key, "count", 1)
            pipe.execute()
        except redis.RedisError as error:
            log.warning(
                "slot_recovery_unrecorded", error_type=type(error).__name__, error=str(error)
            )

    def _resume_unfinished_recovery(self, slot: SlotRow) -> None:
        if self._resync is not None or self._recovery is not None:
            return
        try:
            pending = self._redis.hget(keys.slot_recreations(self.slot), "pending")
        except redis.RedisError:
            return  # Redis down: the runner cannot enqueue anything yet either
        if pending and slot.confirmed_flush_lsn is not None:
            reason = pending.decode() if isinstance(pending, bytes) else str(pending)
            self._begin_recovery(reason, slot.confirmed_flush_lsn)

    def _recovered(self) -> None:
        """The refresh answering the recovery is enqueued: changes are trusted again."""
        try:
            self._redis.hdel(keys.slot_recreations(self.slot), "pending")
        except redis.RedisError as error:
            log.warning(
                "slot_recovery_unrecorded", error_type=type(error).__name__, error=str(error)
            )
        log.info("slot_recovered", slot=self.slot)
        with self._state_lock:
            self._recovery = None
            if self.status.state is ListenerState.RECOVERING:
                self.status.set(ListenerState.CONNECTED, f"slot {self.slot}")

    def _stream(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as catalog:
            if not self._publication_ready(catalog):
                return
            self._prepare_slot(catalog)
        conn = psycopg2.connect(
            self.dsn,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            application_name="coachpipe-listener",
            connect_timeout=10,
        )
        try:
            cursor = conn.cursor()
            cursor.start_replication(
                slot_name=self.slot,
                decode=False,
                options={"proto_version": "1", "publication_names": self.publication},
                status_interval=10,
            )
            self._set_state(ListenerState.CONNECTED, f"slot {self.slot}", attempts=0)
            log.info("replication_started", slot=self.slot, publication=self.publication)
            if self._resync is not None:
                if not self._hand_over(self._resync):
                    return
                self._resync = None
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

        def hand_over_ready() -> bool:
            """Hand over the committed events (if any) with their position; False: stopping."""
            nonlocal ready, ready_position, ready_xids, handed
            if ready_position is None:
                return True
            if not self._hand_over(Batch(ready, lsn_text(ready_position), tuple(ready_xids))):
                return False
            handed = ready_position
            ready, ready_position, ready_xids = [], None, []
            return True

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
                    if len(pending) >= MAX_BATCH:
                        # A transaction larger than a batch goes in bounded parts, so memory
                        # does not grow with it. pgoutput (v1) sends a transaction only once it
                        # committed, so its id can be waited for; the parts carry no position:
                        # the slot moves at the commit, a restart replays the whole transaction.
                        if not hand_over_ready():
                            return
                        if not self._hand_over(Batch(pending, None, (xid,))):
                            return
                        pending = []
                if len(ready) < MAX_BATCH:
                    continue  # drain what is already buffered before handing over
            if not hand_over_ready():
                return
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
