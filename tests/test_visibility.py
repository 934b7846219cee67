"""A batch is held until a fresh snapshot sees its transactions (pipeline.visibility)."""

from __future__ import annotations

import threading
import time

import psycopg

from pipeline.db import make_engine
from pipeline.visibility import XID_SPACE, Snapshot, wait_until_visible


def test_snapshot_sees_finished_transactions_only() -> None:
    snapshot = Snapshot.parse("740:745:741,743")
    assert snapshot == Snapshot(740, 745, frozenset({741, 743}))
    assert snapshot.sees(739)  # finished before the snapshot's xmin
    assert snapshot.sees(742)  # finished between xmin and xmax
    assert not snapshot.sees(741)  # still in the ProcArray when the snapshot was taken
    assert not snapshot.sees(745)  # had not started
    assert Snapshot.parse("5:5:").sees(4)


def test_32_bit_ids_from_wal_are_widened_with_the_snapshot_epoch() -> None:
    epoch = 3 * XID_SPACE
    snapshot = Snapshot(epoch + 5, epoch + 10, frozenset({epoch + 7}))
    assert snapshot.full_id(3) == epoch + 3
    assert snapshot.full_id(XID_SPACE - 2) == epoch - 2  # just before the wraparound
    assert snapshot.full_id(12) == epoch + 12  # above xmax: still this epoch
    assert snapshot.sees(3) and snapshot.sees(XID_SPACE - 2) and snapshot.sees(8)
    assert not snapshot.sees(7) and not snapshot.sees(10) and not snapshot.sees(12)
    late = Snapshot(epoch - 3, epoch - 1, frozenset())  # xmax just before a wraparound
    assert late.full_id(2) == epoch + 2 and not late.sees(2)


def test_waits_until_an_open_transaction_leaves_the_procarray(database_url: str) -> None:
    """An open transaction stands in for one whose commit was decoded before the committing
    backend left the ProcArray: a snapshot taken meanwhile does not see it."""
    engine = make_engine(database_url, snapshots=True)  # REPEATABLE READ, as the listener's
    writer = psycopg.connect(database_url)
    try:
        full = writer.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert full is not None
        xid = int(full[0]) % XID_SPACE
        with engine.connect() as connection:
            visible, polls = wait_until_visible(connection, [xid], timeout_s=0.2)
            assert not visible and polls > 1

            committing_at: list[float] = []

            def commit_later() -> None:
                time.sleep(0.3)
                committing_at.append(time.monotonic())
                writer.commit()

            committer = threading.Thread(target=commit_later)
            committer.start()
            visible, polls = wait_until_visible(connection, [xid], timeout_s=30)
            returned_at = time.monotonic()
            committer.join()
            assert visible and polls > 1
            assert returned_at >= committing_at[0]
            assert wait_until_visible(connection, [xid], timeout_s=0) == (True, 1)
    finally:
        writer.close()
        engine.dispose()
