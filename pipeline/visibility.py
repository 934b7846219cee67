"""Wait until decoded transactions are visible to new snapshots.

PostgreSQL writes and flushes a transaction's commit record, then marks it committed in the
commit log, and only then removes it from the ProcArray. Logical decoding reads the flushed WAL,
so a listener can receive a transaction's changes while, for a moment, a new snapshot still
treats that transaction as in progress. A recompute whose snapshot starts in that moment misses
the very change it answers; its pending marker is already consumed, so nothing would recompute
the key again and the stored aggregate would stay stale. (PostgreSQL fixed the same race for
NOTIFY: a listener must not act on a message whose sender is still in the ProcArray.)

So before it requests recomputes, the `postgres` listener checks in one round trip that a fresh
snapshot sees every transaction of the batch, and polls briefly if one is not yet visible. Every
snapshot taken afterwards sees them too: a transaction never re-enters the ProcArray.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Connection

XID_SPACE = 1 << 32


@dataclass(frozen=True)
class Snapshot:
    """`pg_current_snapshot()`: transactions below `xmin` are finished, those from `xmax` on
    had not started, those in `xip` were in progress (all full 64-bit ids)."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def full_id(self, xid: int) -> int:
        """A 32-bit transaction id as decoded from WAL, widened to the full id nearest `xmax`
        (PostgreSQL's own rule: ids within 2^31 of each other compare without wrapping). A
        transaction still in the ProcArray may be at or above `xmax`."""
        full = (self.xmax - self.xmax % XID_SPACE) + xid % XID_SPACE
        if full - self.xmax >= XID_SPACE // 2:
            return full - XID_SPACE
        if self.xmax - full > XID_SPACE // 2:
            return full + XID_SPACE
        return full

    def sees(self, xid: int) -> bool:
        """Whether a *committed* transaction is visible in this snapshot."""
        full = self.full_id(xid)
        return full < self.xmin or (full < self.xmax and full not in self.xip)


def current_snapshot(connection: Connection) -> Snapshot:
    text = connection.exec_driver_sql("SELECT pg_current_snapshot()::text").scalar_one()
    return Snapshot.parse(str(text))


def wait_until_visible(
    connection: Connection,
    xids: Collection[int],
    *,
    timeout_s: float,
    first_poll_s: float = 0.0005,
    max_poll_s: float = 0.02,
) -> tuple[bool, int]:
    """Poll fresh snapshots until each committed transaction in `xids` is visible, backing off
    from `first_poll_s` to `max_poll_s` between polls.

    Returns (all visible, snapshots taken). Each poll ends its transaction, so a fresh
    snapshot is read whatever the connection's isolation level (an AUTOCOMMIT connection
    costs one round trip per poll).
    """
    deadline = time.monotonic() + timeout_s
    polls = 0
    pause = first_poll_s
    while True:
        snapshot = current_snapshot(connection)
        connection.rollback()
        polls += 1
        if all(snapshot.sees(xid) for xid in xids):
            return True, polls
        if time.monotonic() >= deadline:
            return False, polls
        time.sleep(pause)
        pause = min(pause * 2, max_poll_s)
