"""The `postgres` source end to end: slot → listener → dedup → real worker → Redis."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis

from coachpipe.embedded import free_port
from devtools.processes import Proc, listener_connected, running, start_listener, wait_for
from devtools.scrape import scrape
from listeners.postgres_source import MAX_BATCH, join_queued
from listeners.source import Batch, Resync
from pipeline import seed
from pipeline.events import ChangeEvent, ChangeType
from pipeline.health import HealthBoard, ListenerState
from tests.pipeline_checks import settle

SMALL = seed.SeedPlan(coaches=4, clients_per_coach=3, sessions_per_client=2)


def states(client: redis.Redis) -> dict[str, tuple[ListenerState, str]]:
    board = HealthBoard(client, stale_after_s=3)
    return {h.listener_id: (h.state, h.detail) for h in board.listeners()}


def burst(database_url: str, changes: int, seed_value: int = 7) -> None:
    """`changes` single-statement transactions over the seeded coaches: inserts, status changes,
    reassignments and deletes of sessions, ratings and goals."""
    rng = random.Random(seed_value)
    with psycopg.connect(database_url, autocommit=True) as conn:
        pairs = conn.execute("SELECT coach_id, id FROM users WHERE role = 'client'").fetchall()
        coaches = sorted({coach for coach, _ in pairs})
        for _ in range(changes):
            coach, client = rng.choice(pairs)
            roll = rng.random()
            if roll < 0.4:
                conn.execute(
                    "INSERT INTO sessions (coach_id, client_id, status, scheduled_at, completed_at,"
                    " price_cents) VALUES (%s, %s, 'completed', now() - interval '1 day', now(), 5000)",
                    (coach, client),
                )
            elif roll < 0.6:
                conn.execute(
                    "UPDATE sessions SET status = 'cancelled' WHERE id = (SELECT id FROM sessions"
                    " WHERE coach_id = %s ORDER BY random() LIMIT 1)",
                    (coach,),
                )
            elif roll < 0.7:
                conn.execute(
                    "UPDATE sessions SET coach_id = %s WHERE id = (SELECT id FROM sessions"
                    " WHERE coach_id = %s ORDER BY random() LIMIT 1)",
                    (rng.choice(coaches), coach),
                )
            elif roll < 0.85:
                conn.execute(
                    "INSERT INTO goals (coach_id, client_id, title, progress) VALUES (%s, %s, 'g', %s)",
                    (coach, client, rng.randint(0, 100)),
                )
            else:
                conn.execute(
                    "DELETE FROM sessions WHERE id = (SELECT id FROM sessions WHERE coach_id = %s"
                    " ORDER BY random() LIMIT 1)",
                    (coach,),
                )


@pytest.mark.stacks
def test_committed_rows_end_as_correct_aggregates(
    database_url: str,
    redis_client: redis.Redis,
    service_env: dict[str, str],
    tmp_path: Path,
    worker: Proc,
) -> None:
    seed.load(database_url, SMALL)
    listener = start_listener(service_env, tmp_path)
    with running(listener):
        wait_for(
            lambda: listener_connected(redis_client, listener), 20, message="listener to connect"
        )
        settle(database_url, redis_client)  # the new slot's position was unknown: full refresh
        burst(database_url, 200)
        settle(database_url, redis_client)
        assert listener.terminate() == 0


def test_listener_killed_during_a_burst_resumes_and_loses_nothing(
    database_url: str,
    redis_client: redis.Redis,
    service_env: dict[str, str],
    tmp_path: Path,
    worker: Proc,
) -> None:
    seed.load(database_url, SMALL)
    port = free_port()
    listener = start_listener(service_env, tmp_path, "listener-1", metrics_port=port)
    wait_for(lambda: listener_connected(redis_client, listener), 20, message="listener to connect")
    settle(database_url, redis_client)
    writer = threading.Thread(target=burst, args=(database_url, 2000, 11))
    writer.start()
    # Mid-burst, as observed: the listener has taken in part of the burst, the writer goes on.
    wait_for(lambda: scrape(port, "coachpipe_events_total") >= 200 or not writer.is_alive(), 60,
             interval=0.02, message="the listener to take in 200 changes of the burst")  # fmt: skip
    listener.kill()
    assert writer.is_alive(), "the burst ended before the listener was killed"
    # Restarted once the burst is over, so the changes written meanwhile reach it only through
    # the slot (a restart that skipped them would not be healed by later changes).
    writer.join()
    restarted = start_listener(service_env, tmp_path, "listener-2")
    with running(restarted):
        settle(database_url, redis_client, timeout=120)


def test_a_standby_listener_takes_over_the_slot_when_the_active_one_dies(
    database_url: str,
    redis_client: redis.Redis,
    service_env: dict[str, str],
    tmp_path: Path,
    worker: Proc,
) -> None:
    seed.load(database_url, SMALL)
    first = start_listener(service_env, tmp_path, "first")
    wait_for(
        lambda: listener_connected(redis_client, first), 20, message="first listener to connect"
    )
    second = start_listener(service_env, tmp_path, "second")
    with running(first, second):
        wait_for(
            lambda: any("standby" in detail for _, detail in states(redis_client).values()),
            20,
            message="second listener to stand by",
        )
        first.kill()
        taken_over = time.monotonic()
        wait_for(
            lambda: listener_connected(redis_client, second), 30, message="standby to take over"
        )
        print(f"\nstandby took over {time.monotonic() - taken_over:.1f} s after kill -9")
        burst(database_url, 50)
        settle(database_url, redis_client)


def test_sigterm_finishes_the_batch_reports_disconnected_and_exits_zero(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path
) -> None:
    listener = start_listener(service_env, tmp_path)
    wait_for(lambda: listener_connected(redis_client, listener), 20, message="listener to connect")
    assert listener.terminate(timeout=20) == 0
    ((state, _),) = states(redis_client).values()
    assert state is ListenerState.DISCONNECTED
    assert "listener_stopped" in listener.output()


def test_slot_lag_is_measured_while_the_listener_is_paused(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path
) -> None:
    import signal

    from config import load_settings
    from listeners.postgres_source import PostgresSource

    listener = start_listener(service_env, tmp_path)
    with running(listener):
        wait_for(
            lambda: listener_connected(redis_client, listener), 20, message="listener to connect"
        )
        source = PostgresSource(load_settings(_env_file=None))
        listener.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            seed.load(database_url, SMALL)
            held = source._lag() or 0
            assert held > 10_000
        finally:
            listener.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        wait_for(lambda: (source._lag() or 0) < held / 10, 20, message="lag to drain")


def test_a_transaction_larger_than_a_batch_is_handed_over_in_parts(
    database_url: str,
    redis_client: redis.Redis,
    service_env: dict[str, str],
    tmp_path: Path,
    worker: Proc,
) -> None:
    """Memory stays bounded whatever the transaction's size: parts of MAX_BATCH events."""
    import re

    from listeners.postgres_source import MAX_BATCH

    seed.load(database_url, SMALL)
    listener = start_listener(service_env, tmp_path)
    with running(listener):
        wait_for(
            lambda: listener_connected(redis_client, listener), 20, message="listener to connect"
        )
        settle(database_url, redis_client)
        with psycopg.connect(database_url) as conn:  # one transaction
            conn.execute(
                "INSERT INTO goals (coach_id, client_id, title, progress)"
                " SELECT u.coach_id, u.id, 'g', n %% 101 FROM users u"
                " CROSS JOIN generate_series(1, %s) AS n WHERE u.role = 'client'",
                (3 * MAX_BATCH // 12 + 1,),
            )
        settle(database_url, redis_client)
        assert listener.terminate() == 0
    (batches,) = re.findall(r"listener_stopped .*batches=(\d+)", listener.output())
    assert int(batches) >= 3


def test_batches_queued_behind_one_are_joined_into_one_dispatch() -> None:
    """Batches that queued while the listener dispatched the last one go out as one (one
    visibility check, one round of requests), confirmed at the last position; a `Resync` is
    never joined, and a full batch takes nothing more."""

    def event(n: int) -> ChangeEvent:
        return ChangeEvent("goals", ChangeType.INSERT, {"id": str(n)}, None, None)

    async def scenario() -> None:
        queue: asyncio.Queue[Batch | Resync] = asyncio.Queue()
        resync = Resync("reconnected")
        for item in (
            Batch([event(1)], "0/10", (1,)),
            Batch([event(2)], None, (2,)),  # a part of a transaction still being read
            Batch([event(3)], "0/30", (2, 3)),
            resync,
            Batch([event(4)], "0/40", (4,)),
        ):
            queue.put_nowait(item)
        first = queue.get_nowait()
        assert isinstance(first, Batch)
        joined, carried = join_queued(first, queue)
        assert joined == Batch([event(1), event(2), event(3)], "0/30", (1, 2, 3))
        assert carried is resync
        assert queue.qsize() == 1
        part = Batch([event(5)], None, (5,))
        assert Batch([event(4)], "0/40", (4,)).joined(part).position == "0/40"
        full = Batch([event(6)] * MAX_BATCH, "0/60", (6,))
        assert join_queued(full, queue) == (full, None)
        assert queue.qsize() == 1

    asyncio.run(scenario())
