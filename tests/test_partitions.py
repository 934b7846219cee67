"""A partitioned watched table (issue 16, case 5): published via its root, routed by the root's
name, `coachpipe migrate` idempotent over it, and `coachpipe doctor` aware of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import redis

from coachpipe.doctor import Severity
from devtools.processes import Proc, listener_connected, running, start_listener, wait_for
from pipeline import seed
from tests.pipeline_checks import settle
from tests.test_cli import coachpipe
from tests.test_doctor import checks_for
from tests.test_listener_postgres import SMALL
from tests.test_slot_recovery import ends_correct_and_green, migrate


def partition_ratings(database_url: str) -> None:
    """What an operator does to a large table: re-create it partitioned by `created_at`."""
    split = (datetime.now(UTC) - timedelta(days=20)).isoformat()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE public.session_ratings")
        conn.execute(
            """
            CREATE TABLE public.session_ratings (
                id uuid NOT NULL DEFAULT gen_random_uuid(),
                session_id uuid NOT NULL REFERENCES public.sessions (id) ON DELETE CASCADE,
                coach_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
                client_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
                rating smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
                created_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (id, created_at)
            ) PARTITION BY RANGE (created_at)
            """
        )
        conn.execute(
            "CREATE TABLE public.session_ratings_old PARTITION OF public.session_ratings"
            f" FOR VALUES FROM (MINVALUE) TO ('{split}')"
        )
        conn.execute(
            "CREATE TABLE public.session_ratings_recent PARTITION OF public.session_ratings"
            f" FOR VALUES FROM ('{split}') TO (MAXVALUE)"
        )


def test_migrate_is_idempotent_over_a_partitioned_table(
    own_database: tuple[str, dict[str, str], Proc], redis_url: str
) -> None:
    database_url, env, _ = own_database
    migrate(database_url)
    partition_ratings(database_url)
    checks = checks_for(database_url, redis_url)
    assert checks["publication coachpipe"].severity is Severity.FAIL
    assert "ADD TABLE public.session_ratings" in checks["publication coachpipe"].fix
    assert "session_ratings_old" in checks["replica identity"].message
    for _ in range(3):  # the third run exited 1 with DuplicateObject
        result = coachpipe(env, "migrate")
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    checks = checks_for(database_url, redis_url)
    assert [c for c in checks.values() if c.severity is Severity.FAIL] == []
    assert checks["publication coachpipe"].severity is Severity.OK
    assert checks["replica identity"].severity is Severity.OK
    assert "partition" in checks["partitioned tables in coachpipe"].message


def test_doctor_names_a_publication_that_sends_partition_names(
    own_database: tuple[str, dict[str, str], Proc], redis_url: str
) -> None:
    database_url = own_database[0]
    migrate(database_url)
    partition_ratings(database_url)
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER PUBLICATION coachpipe SET (publish_via_partition_root = false)")
    checks = checks_for(database_url, redis_url)
    # Published, only under the partitions' names: no ADD TABLE (PostgreSQL would refuse it).
    assert checks["publication coachpipe"].severity is Severity.OK
    check = checks["partitioned tables in coachpipe"]
    assert check.severity is Severity.FAIL
    assert "publish_via_partition_root = true" in check.fix
    migrate(database_url)
    assert (
        checks_for(database_url, redis_url)["partitioned tables in coachpipe"].severity
        is Severity.OK
    )


def test_changes_to_a_partitioned_table_reach_the_aggregates(
    own_database: tuple[str, dict[str, str], Proc], redis_client: redis.Redis, tmp_path: Path
) -> None:
    database_url, env, worker = own_database
    migrate(database_url)
    partition_ratings(database_url)
    migrate(database_url)
    seed.load(database_url, SMALL)
    listener = start_listener(env, tmp_path)
    with running(listener, worker):
        wait_for(
            lambda: listener_connected(redis_client, listener), 20, message="listener to connect"
        )
        settle(database_url, redis_client)
        with psycopg.connect(database_url, autocommit=True) as conn:
            coaches = [r[0] for r in conn.execute("SELECT id FROM users WHERE role = 'coach'")]
            conn.execute(
                "INSERT INTO session_ratings (session_id, coach_id, client_id, rating)"
                " SELECT DISTINCT ON (coach_id) id, coach_id, client_id, 5 FROM sessions"
            )
            # Moves between coaches, in both partitions: the old coach comes from the old row.
            conn.execute(
                "UPDATE session_ratings SET coach_id = %s WHERE coach_id = %s",
                (coaches[0], coaches[1]),
            )
            conn.execute("DELETE FROM session_ratings WHERE coach_id = %s", (coaches[2],))
        ends_correct_and_green(database_url, redis_client, listener, None)
        assert "session_ratings_" not in listener.output()
        assert listener.terminate() == 0
