"""The pipeline's reads end in COMMIT, so `xact_rollback` in pg_stat_database counts failures.

A SQLAlchemy `engine.connect()` block that only reads ends its transaction with ROLLBACK, and
Postgres counts every ROLLBACK as a rolled-back transaction: a chaos run counted tens of
thousands, against a handful in a quiet one, which made the metric useless for telling errors
(see the README, Monitoring).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import redis

from devtools.processes import wait_for
from pipeline import seed
from pipeline.aggregates import CRITICAL
from pipeline.audit import next_sample
from pipeline.changelog import changes_after
from pipeline.coaches import active_coach_batches, coaches_changed_since, not_coaches
from pipeline.db import make_engine
from pipeline.migrate import current_revision, upgrade
from pipeline.recompute import compute_snapshot
from pipeline.refresh import count_active_coaches

ROUNDS = 20


def transactions(admin_url: str, database: str) -> tuple[int, int]:
    """(xact_commit, xact_rollback) of `database` once none of its sessions is left (a backend
    reports its counts at the latest when it exits)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:

        def counted() -> tuple[int, int] | None:
            row = conn.execute(
                "SELECT xact_commit, xact_rollback, (SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = %s) FROM pg_stat_database WHERE datname = %s",
                (database, database),
            ).fetchone()
            assert row is not None
            return None if row[2] else (int(row[0]), int(row[1]))

        return wait_for(counted, 20, interval=0.1, message=f"every session of {database} to end")


def reset_counts(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_reset()")


def test_reads_and_recomputes_count_no_rollback(
    fresh_database: str, postgres_server: object, redis_client: redis.Redis
) -> None:
    admin_url = postgres_server.admin_url()  # type: ignore[attr-defined]
    database = fresh_database.rsplit("/", 1)[1]
    setup = make_engine(fresh_database)
    upgrade(setup, "coachpipe")
    setup.dispose()
    seed.load(fresh_database, seed.SeedPlan(coaches=3, clients_per_coach=2, sessions_per_client=2))
    with psycopg.connect(fresh_database) as conn:
        coaches = [row[0] for row in conn.execute("SELECT id FROM users WHERE role = 'coach'")]
        (snapshot,) = conn.execute("SELECT pg_current_snapshot()::text").fetchone()  # type: ignore[misc]
    plain = make_engine(fresh_database)
    readers = make_engine(fresh_database, snapshots=True)
    for engine in (plain, readers):  # SQLAlchemy's first connect ends with one ROLLBACK
        with engine.begin():
            pass
        engine.dispose()
    transactions(admin_url, database)
    reset_counts(fresh_database)
    for _ in range(ROUNDS):
        compute_snapshot(readers, CRITICAL, coaches)
        list(active_coach_batches(plain, 2))
        count_active_coaches(plain)
        coaches_changed_since(plain, datetime.now(UTC), timedelta(minutes=5))
        changes_after(plain, snapshot)
        not_coaches(plain, coaches)
        next_sample(plain, redis_client, 2)
        current_revision(plain)
    plain.dispose()
    readers.dispose()
    commits, rollbacks = transactions(admin_url, database)
    assert commits >= ROUNDS * 9  # active_coach_batches reads twice (the last page is empty)
    assert rollbacks == 0
