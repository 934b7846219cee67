"""A partitioned watched table (issue 16, case 5): published via its root, routed by the root's
name, `coachpipe migrate` idempotent over it, and `coachpipe doctor` aware of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import psycopg
import redis

from coachpipe.doctor import Severity
from devtools.processes import Proc, listener_connected, running, start_listener, wait_for
from devtools.realtime_standin import RealtimeStandIn
from pipeline import seed
from tests.listener_harness import Listener
from tests.pipeline_checks import settle
from tests.test_cli import coachpipe
from tests.test_doctor import checks_for
from tests.test_listener_postgres import SMALL
from tests.test_slot_recovery import ends_correct_and_green, migrate


def partition_ratings(database_url: str, upper: str = "MAXVALUE") -> None:
    """What an operator does to a large table: re-create it partitioned by `created_at`, the
    recent partition bounded by `upper` (a quoted timestamp, or MAXVALUE)."""
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
            f" FOR VALUES FROM ('{split}') TO ({upper})"
        )


def partitioned_and_seeded(database_url: str, upper: str = "MAXVALUE") -> None:
    """Migrated, `session_ratings` re-created partitioned, migrated again, seeded."""
    migrate(database_url)
    partition_ratings(database_url, upper)
    migrate(database_url)
    seed.load(database_url, SMALL)


def rate_and_move(database_url: str) -> list[UUID]:
    """A rating for every coach (routed to a partition by `created_at`), then the ratings of
    the second coach moved to the first (the old coach comes from the old row); the coaches."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        coaches = [r[0] for r in conn.execute("SELECT id FROM users WHERE role = 'coach'")]
        conn.execute(
            "INSERT INTO session_ratings (session_id, coach_id, client_id, rating)"
            " SELECT DISTINCT ON (coach_id) id, coach_id, client_id, 5 FROM sessions"
        )
        conn.execute(
            "UPDATE session_ratings SET coach_id = %s WHERE coach_id = %s",
            (coaches[0], coaches[1]),
        )
    return coaches


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


def test_doctor_checks_realtime_partitions_and_the_change_log(
    own_database: tuple[str, dict[str, str], Proc], redis_url: str
) -> None:
    database_url = own_database[0]
    migrate(database_url)
    partition_ratings(database_url)  # the re-created table has lost its change log triggers
    realtime = {"supabase_url": "http://127.0.0.1:9", "supabase_key": "k"}
    check = checks_for(database_url, redis_url, **realtime)["change log"]
    assert (check.severity, check.fix) == (Severity.FAIL, "coachpipe migrate")
    assert "session_ratings" in check.message
    migrate(database_url)
    checks = checks_for(database_url, redis_url, **realtime)
    assert checks["change log"].severity is Severity.OK
    assert checks["partitioned tables in supabase_realtime"].severity is Severity.OK
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER PUBLICATION supabase_realtime SET (publish_via_partition_root = true)")
    check = checks_for(database_url, redis_url, **realtime)[
        "partitioned tables in supabase_realtime"
    ]
    assert check.severity is Severity.FAIL
    assert "publish_via_partition_root = false" in check.fix


def test_changes_to_a_partitioned_table_reach_the_aggregates(
    own_database: tuple[str, dict[str, str], Proc], redis_client: redis.Redis, tmp_path: Path
) -> None:
    database_url, env, worker = own_database
    partitioned_and_seeded(database_url)
    listener = start_listener(env, tmp_path)
    with running(listener, worker):
        wait_for(
            lambda: listener_connected(redis_client, listener), 20, message="listener to connect"
        )
        settle(database_url, redis_client)
        coaches = rate_and_move(database_url)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM session_ratings WHERE coach_id = %s", (coaches[2],))
        ends_correct_and_green(database_url, redis_client, listener, None)
        assert "session_ratings_" not in listener.output()
        assert listener.terminate() == 0


def test_supabase_source_binds_partitions_and_routes_by_the_partitioned_table(
    own_database: tuple[str, dict[str, str], Proc], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Realtime (wal2json) names a change by its partition and keeps only what
    `pg_publication_tables` lists (the partitions: `supabase_realtime` does not publish via the
    root, under which nothing would be sent): the listener binds the partitions, routes by
    `session_ratings`, and a gap is caught up by the change log triggers `migrate` put back on
    the re-created table."""
    database_url, env, worker = own_database
    partitioned_and_seeded(database_url)
    with RealtimeStandIn(database_url) as standin:
        listener = Listener(env, tmp_path, standin, CANARY_S="1")
        with running(listener.proc, worker):
            listener.wait_connected(redis_client)
            settle(database_url, redis_client)
            coaches = rate_and_move(database_url)
            settle(database_url, redis_client)
            delivered = listener.metric(
                "coachpipe_events_total", source="supabase", table="session_ratings"
            )
            assert delivered >= len(coaches)  # through the channel, not a catch-up
            assert listener.metric("coachpipe_bad_input_total", reason="unmatched_ids") == 0

            standin.set_down(True)  # a gap: only the change log knows of this delete
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("DELETE FROM session_ratings WHERE coach_id = %s", (coaches[2],))
            standin.set_down(False)
            listener.wait_connected(redis_client, 30, "listener back")
            settle(database_url, redis_client)
            assert "session_ratings_" not in listener.proc.output()


def test_a_partition_added_while_the_supabase_listener_is_connected_is_bound(
    own_database: tuple[str, dict[str, str], Proc], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A partition created (`PARTITION OF`) and one attached (`ATTACH PARTITION`) while the
    link is up: the partition check (`PARTITION_CHECK_S`, 1 s here) rebuilds the link with
    them bound, and changes landing in them arrive through the channel (none dropped by the
    server for want of a binding) and end in aggregates equal to the oracle."""
    database_url, env, worker = own_database
    soon, later = (datetime.now(UTC) + timedelta(days=d) for d in (3, 5))
    partitioned_and_seeded(database_url, f"'{soon.isoformat()}'")
    with RealtimeStandIn(database_url) as standin:
        listener = Listener(env, tmp_path, standin, CANARY_S="1", PARTITION_CHECK_S="1")
        with running(listener.proc, worker):
            listener.wait_connected(redis_client)
            settle(database_url, redis_client)
            rebuilt = listener.metric(
                "coachpipe_listener_teardowns_total", reason="partitions_changed"
            )
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(
                    "CREATE TABLE public.session_ratings_soon PARTITION OF public.session_ratings"
                    f" FOR VALUES FROM ('{soon.isoformat()}') TO ('{later.isoformat()}')"
                )
                conn.execute(
                    "CREATE TABLE public.session_ratings_later"
                    " (LIKE public.session_ratings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                )
                conn.execute(
                    "ALTER TABLE public.session_ratings ATTACH PARTITION"
                    f" public.session_ratings_later FOR VALUES FROM ('{later.isoformat()}')"
                    " TO (MAXVALUE)"
                )
            wait_for(
                lambda: (
                    listener.metric(
                        "coachpipe_listener_teardowns_total", reason="partitions_changed"
                    )
                    > rebuilt
                ),
                30,
                message="the partition check to rebuild the link",
            )
            wait_for(
                lambda: standin.ready_topics() and listener.connected(redis_client),
                30,
                message="the link back with the new partitions bound",
            )
            settle(database_url, redis_client)
            delivered = listener.metric(
                "coachpipe_events_total", source="supabase", table="session_ratings"
            )
            dropped = standin.changes_dropped
            with psycopg.connect(database_url, autocommit=True) as conn:
                rows = 0
                for at in (soon + timedelta(days=1), later + timedelta(days=1)):
                    cursor = conn.execute(
                        "INSERT INTO session_ratings (session_id, coach_id, client_id, rating,"
                        " created_at) SELECT DISTINCT ON (coach_id) id, coach_id, client_id, 1, %s"
                        " FROM sessions",
                        (at,),
                    )
                    rows += cursor.rowcount
            settle(database_url, redis_client)
            assert rows >= 2
            assert (
                listener.metric(
                    "coachpipe_events_total", source="supabase", table="session_ratings"
                )
                >= delivered + rows
            )  # through the channel, under the partitioned table's name
            assert standin.changes_dropped == dropped
            assert listener.metric("coachpipe_bad_input_total", reason="unmatched_ids") == 0
            assert "session_ratings_" not in listener.proc.output()
