"""A batch is held until a fresh snapshot sees its transactions (pipeline.visibility)."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest
from sqlalchemy import event

from config import Settings
from devtools.processes import wait_for
from listeners.postgres_source import PostgresSource
from listeners.source import Batch, Resync
from pipeline import seed
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


@pytest.mark.parametrize("isolation", ["AUTOCOMMIT", "REPEATABLE READ"])
def test_waits_until_an_open_transaction_leaves_the_procarray(
    database_url: str, isolation: str
) -> None:
    """An open transaction stands in for one whose commit was decoded before the committing
    backend left the ProcArray: a snapshot taken meanwhile does not see it. The listener's
    engine is REPEATABLE READ; it checks on an AUTOCOMMIT connection."""
    engine = make_engine(database_url, snapshots=True)
    writer = psycopg.connect(database_url)
    try:
        full = writer.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert full is not None
        xid = int(full[0]) % XID_SPACE
        snapshots_taken = [0]  # by the waiting connection, counted where SQLAlchemy runs them

        @event.listens_for(engine, "after_cursor_execute")
        def count(*args: object) -> None:
            if "pg_current_snapshot" in str(args[2]):
                snapshots_taken[0] += 1

        with engine.connect() as pooled:
            connection = pooled.execution_options(isolation_level=isolation)
            visible, polls = wait_until_visible(connection, [xid], timeout_s=0.2)
            assert not visible and polls > 1

            taken_before_commit: list[int] = []
            start = snapshots_taken[0]

            def commit_while_waiting() -> None:
                # The waiter has taken two snapshots of this call that could not see the
                # transaction: it is waiting, not done. Then commit.
                wait_for(lambda: snapshots_taken[0] >= start + 2, 10, interval=0.001)
                taken_before_commit.append(snapshots_taken[0] - start)
                writer.commit()

            committer = threading.Thread(target=commit_while_waiting)
            committer.start()
            visible, polls = wait_until_visible(connection, [xid], timeout_s=30)
            committer.join()
            assert taken_before_commit, "the committer did not see the waiter poll"
            # It kept polling across the commit and returned on a snapshot taken after it.
            assert visible and polls > taken_before_commit[0]
            assert wait_until_visible(connection, [xid], timeout_s=0) == (True, 1)
    finally:
        writer.close()
        engine.dispose()


def test_slot_batches_carry_the_ids_of_the_transactions_they_hold(
    settings: Settings, database_url: str
) -> None:
    """The `postgres` source hands each batch over with its transactions' ids (as decoded from
    WAL, 32-bit); a transaction that touched no published table adds none."""
    seed.load(database_url, seed.SeedPlan(coaches=2, clients_per_coach=2, sessions_per_client=1))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS unpublished (x int)")
    source = PostgresSource(settings.model_copy(update={"slot_name": "xid_test"}))

    def write() -> tuple[int, int]:
        ids = []
        with psycopg.connect(database_url) as conn:
            for statement in (
                "INSERT INTO unpublished VALUES (1)",
                "INSERT INTO goals (coach_id, client_id, title, progress)"
                " SELECT coach_id, id, 'g', 5 FROM users WHERE role = 'client' LIMIT 1",
            ):
                conn.execute(statement)
                row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
                assert row is not None
                ids.append(int(row[0]) % XID_SPACE)
                conn.commit()
        return ids[0], ids[1]

    async def consume() -> tuple[tuple[int, int], list[int]]:
        items = source.items()
        written: tuple[int, int] | None = None
        seen: list[int] = []
        async for item in items:
            if isinstance(item, Resync):  # the slot was just created: now write
                written = await asyncio.to_thread(write)
                continue
            assert isinstance(item, Batch)
            seen.extend(item.xids)
            await source.confirm(item.position)
            if any(event.table == "goals" for event in item.events):
                break
        await source.close()
        assert written is not None
        return written, seen

    try:
        (unpublished, goal), seen = asyncio.run(asyncio.wait_for(consume(), 60))
        assert goal in seen and unpublished not in seen
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot('xid_test') FROM pg_replication_slots"
                " WHERE slot_name = 'xid_test' AND NOT active"
            )
