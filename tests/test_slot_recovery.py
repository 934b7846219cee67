"""The slot listener recovers by itself from what operators and PostgreSQL do to its slot and
publication (issue 16), on a real private Postgres, with real workers: each case ends with every
aggregate equal to the oracle and the realtime status green."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import redis

from coachpipe.embedded import PrivatePostgres
from devtools.processes import (
    Proc,
    listener_connected,
    running,
    start_listener,
    start_worker,
    wait_for,
)
from pipeline import keys, seed
from pipeline.db import make_engine
from pipeline.health import Color, HealthBoard, ListenerState
from pipeline.migrate import upgrade
from tests.pipeline_checks import settle
from tests.test_cli import coachpipe
from tests.test_listener_postgres import SMALL, states

SLOT = "coachpipe"


def migrate(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine, "coachpipe")
    engine.dispose()


def green(client: redis.Redis) -> bool:
    return HealthBoard(client, stale_after_s=3).status().color is Color.GREEN


def recreations(client: redis.Redis) -> dict[str, str]:
    raw = client.hgetall(keys.slot_recreations(SLOT))
    return {key.decode(): value.decode() for key, value in raw.items()}


def change_every_coach(database_url: str) -> None:
    """A rating for every coach and one deleted session each: a catch-up "since the last
    event" would miss the deletes, only a refresh of every coach repairs them."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO session_ratings (session_id, coach_id, client_id, rating)"
            " SELECT DISTINCT ON (coach_id) id, coach_id, client_id, 2 FROM sessions"
        )
        conn.execute(
            "DELETE FROM sessions WHERE id IN"
            " (SELECT DISTINCT ON (coach_id) id FROM sessions ORDER BY coach_id, id)"
        )


def outrun_the_slot(database_url: str) -> None:
    """Write WAL segments past `max_slot_wal_keep_size` and checkpoint: the server invalidates
    a slot that did not follow."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ballast (filler text)")
        for _ in range(4):
            conn.execute(
                "INSERT INTO ballast SELECT repeat('x', 500) FROM generate_series(1, 2000)"
            )
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")


def ends_correct_and_green(
    database_url: str,
    client: redis.Redis,
    listener: Proc,
    reason: str | None,
    fault_at: float | None = None,
) -> None:
    """Every aggregate equals the oracle and the status is green (printed: how long after the
    fault ended, for the report; not asserted)."""
    settle(database_url, client, timeout=90)
    wait_for(lambda: green(client), 30, message="status to turn green")
    if fault_at is not None:
        print(f"\n{reason or 'first start'}: correct and green {time.monotonic() - fault_at:.1f} s")
    if reason is not None:
        assert recreations(client)["last_reason"] == reason
        assert "pending" not in recreations(client)
        assert listener.output().count("slot_recreated") == 1


def test_a_listener_started_before_migrate_waits_for_the_publication(
    own_database: tuple[str, dict[str, str], Proc], redis_client: redis.Redis, tmp_path: Path
) -> None:
    database_url, env, worker = own_database
    listener = start_listener(env, tmp_path)
    with running(listener, worker):
        wait_for(
            lambda: any("waiting for publication" in d for _, d in states(redis_client).values()),
            20,
            message="listener to wait for the publication",
        )
        assert HealthBoard(redis_client, stale_after_s=3).status().color is Color.YELLOW
        with psycopg.connect(database_url) as conn:
            assert not conn.execute("SELECT 1 FROM pg_replication_slots").fetchone()
        migrate(database_url)
        migrated_at = time.monotonic()
        seed.load(database_url, SMALL)
        wait_for(
            lambda: listener_connected(redis_client, listener), 20, message="listener to connect"
        )
        change_every_coach(database_url)
        ends_correct_and_green(database_url, redis_client, listener, None, migrated_at)
        assert listener.output().count("publication_missing") == 1
        assert listener.terminate() == 0


def test_a_slot_created_before_its_publication_is_replaced(
    own_database: tuple[str, dict[str, str], Proc], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Left by an older listener: pgoutput never sees a publication created after the slot."""
    database_url, env, worker = own_database
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))
    migrate(database_url)
    seed.load(database_url, SMALL)
    listener = start_listener(env, tmp_path)
    started_at = time.monotonic()
    with running(listener, worker):
        change_every_coach(database_url)
        ends_correct_and_green(
            database_url, redis_client, listener, "publication_missing_at_position", started_at
        )
        assert listener.terminate() == 0


def test_a_publication_dropped_and_recreated(
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
        settle(database_url, redis_client)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP PUBLICATION coachpipe")
        change_every_coach(database_url)  # decoded while the publication is missing
        wait_for(
            lambda: any("waiting for publication" in d for _, d in states(redis_client).values()),
            20,
            message="listener to wait for the publication",
        )
        migrate(database_url)
        migrated_at = time.monotonic()
        change_every_coach(database_url)
        ends_correct_and_green(
            database_url, redis_client, listener, "publication_missing_at_position", migrated_at
        )
        assert listener.terminate() == 0


def test_a_slot_dropped_by_hand(
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
        settle(database_url, redis_client)

        def dropped() -> bool:
            """What an operator does: end the walsender, drop the slot before it is back."""
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                    " WHERE slot_name = %s AND active_pid IS NOT NULL",
                    (SLOT,),
                )
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
                except psycopg.errors.ObjectInUse:
                    return False
            return True

        wait_for(dropped, 20, interval=0.01, message="the slot to be dropped")
        dropped_at = time.monotonic()
        change_every_coach(database_url)
        ends_correct_and_green(database_url, redis_client, listener, "slot_dropped", dropped_at)
        shown = coachpipe({**service_env, "COLUMNS": "200"}, "status")
        assert "slot recreated 1 time(s)" in shown.stdout and "slot_dropped" in shown.stdout
        assert "wal_status reserved" in shown.stdout
        assert listener.terminate() == 0


def test_an_invalidated_slot_is_replaced(
    small_wal_server: PrivatePostgres,
    pipeline_env: dict[str, str],
    redis_client: redis.Redis,
    broker_url: str,
    tmp_path: Path,
) -> None:
    database_url = small_wal_server.url
    env = {**pipeline_env, "DATABASE_URL": database_url}
    seed.load(database_url, SMALL)
    redis.Redis.from_url(broker_url).flushdb()
    worker = start_worker(env, tmp_path, broker_url=broker_url)
    first = start_listener(env, tmp_path, "first")
    with running(first, worker):
        wait_for(lambda: listener_connected(redis_client, first), 20, message="listener to connect")
        settle(database_url, redis_client)
        assert first.terminate() == 0
        change_every_coach(database_url)
        outrun_the_slot(database_url)
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
            ).fetchone()
        assert row == ("lost",)
        second = start_listener(env, tmp_path, "second")
        started_at = time.monotonic()
        with running(second):
            ends_correct_and_green(database_url, redis_client, second, "slot_lost", started_at)
            assert second.terminate() == 0
    states_left = {state for state, _ in states(redis_client).values()}
    assert ListenerState.RECOVERING not in states_left
