"""The `coachpipe` command as an operator uses it: real processes, real services."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest
import redis

from pipeline.scheduler import RecomputeScheduler
from tests.recording_sender import RecordingSender

SECRET = "hunter2-very-secret"


def coachpipe(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coachpipe", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


BAD_ARGUMENTS = [
    (["show", "not-a-uuid"], "is not a coach id"),
    (["refresh"], "exactly one of --all or --coach"),
    (["refresh", "--all", "--coach", "00000000-0000-0000-0000-000000000000"], "exactly one"),
    (["seed", "--coaches", "0"], "--coaches"),
    (["listen", "--source", "kafka"], "kafka"),
    (["show", "00000000-0000-0000-0000-000000000000", "--aggregate", "coach-nope"], "coach-nope"),
    (["frobnicate"], "No such command"),
    (["simulate", "--duration", "inf"], "--duration"),
    (["simulate", "--duration", "nan"], "--duration"),
    (["simulate", "--rate", "nan"], "--rate"),
    (["demo", "--duration", "inf"], "--duration"),
]


@pytest.mark.parametrize(
    ("args", "says"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS]
)
def test_bad_arguments_get_a_message_and_a_non_zero_exit(
    service_env: dict[str, str], args: list[str], says: str
) -> None:
    result = coachpipe(service_env, *args)
    assert result.returncode != 0
    assert says in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEBOUNCE_MS", "fast"),
        ("DATABASE_URL", f"mysql://root:{SECRET}@db/x"),
        ("LISTENER_SOURCE", "kafka"),
    ],
)
def test_a_bad_setting_names_the_variable_and_hides_the_value(
    service_env: dict[str, str], variable: str, value: str
) -> None:
    result = coachpipe({**service_env, variable: value}, "status")
    assert result.returncode == 2
    assert variable in result.stderr
    assert value not in result.stderr and SECRET not in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_is_one_line_without_the_password(
    service_env: dict[str, str],
) -> None:
    result = coachpipe(
        {**service_env, "DATABASE_URL": f"postgresql://app:{SECRET}@127.0.0.1:1/db"}, "migrate"
    )
    assert result.returncode == 1
    assert "cannot reach Postgres (DATABASE_URL)" in result.stderr
    assert SECRET not in result.stderr and "Traceback" not in result.stderr


def test_migrate_seed_refresh_show_status_slot(
    service_env: dict[str, str], database_url: str
) -> None:
    assert coachpipe(service_env, "migrate").returncode == 0
    seeded = coachpipe(service_env, "seed", "--coaches", "3", "--truncate")
    assert seeded.returncode == 0, seeded.stderr
    assert "loaded" in seeded.stdout
    again = coachpipe(service_env, "seed", "--coaches", "3")
    assert again.returncode == 1 and "--truncate" in again.stderr
    refreshed = coachpipe(service_env, "refresh", "--all")
    assert refreshed.returncode == 0, refreshed.stderr
    assert "stored 15 coach aggregates" in refreshed.stdout
    with psycopg.connect(database_url) as conn:
        (coach,) = conn.execute("SELECT id FROM users WHERE role = 'coach' LIMIT 1").fetchone()
    shown = coachpipe(service_env, "show", str(coach), "--json")
    assert shown.returncode == 0
    stored = json.loads(shown.stdout)
    assert set(stored) == {
        "coach-stats",
        "coach-activity",
        "coach-insights",
        "coach-clients",
        "coach-trends",
    }
    assert stored["coach-stats"]["value"]["clients"]["total"] == 20
    one = coachpipe(service_env, "show", str(coach), "--aggregate", "coach-clients", "--json")
    assert set(json.loads(one.stdout)) == {"coach-clients"}
    unknown = coachpipe(service_env, "show", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1 and "nothing stored" in unknown.stderr
    # A drain of the coach took a second: its window widens (status shows it).
    scheduler = RecomputeScheduler(
        redis.Redis.from_url(service_env["REDIS_URL"]),
        RecordingSender(),
        window_ms=50,
        stale_ms=30_000,
    )
    scheduler.release(scheduler.shard_of(coach), "a-drain", [coach], 1.0)
    status = coachpipe(service_env, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["realtime"]["status"] == "red" and report["slot"] is None
    assert set(report["pending_recomputes"]) == set(stored)
    assert report["freshness"]["changes"] == 0 and report["freshness"]["p99_ms"] is None
    # EWMA from the threshold (5 ms): 5 + (1000 - 5) / 4 = 253.75 ms; window: / COACH_SHARE
    assert report["widened_windows"] == {str(coach): {"cost_ms": 253.75, "window_ms": 2537}}
    human = coachpipe(service_env, "status")
    assert human.returncode == 0 and "windows widened by cost" in human.stdout
    assert coachpipe(service_env, "slot", "show").returncode == 1
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('coachpipe', 'pgoutput')")
    shown_slot = coachpipe(service_env, "slot", "show", "--json")
    assert json.loads(shown_slot.stdout)["plugin"] == "pgoutput"
    dropped = coachpipe(service_env, "slot", "drop", "--yes")
    assert dropped.returncode == 0 and "dropped" in dropped.stdout


def test_simulate_writes_changes(service_env: dict[str, str], database_url: str) -> None:
    coachpipe(service_env, "seed", "--coaches", "3", "--truncate")
    with psycopg.connect(database_url) as conn:
        (started,) = conn.execute("SELECT now()").fetchone()
    result = coachpipe(
        service_env, "simulate", "--rate", "100", "--duration", "1", "--coaches", "3"
    )
    assert result.returncode == 0, result.stderr
    assert "100 changes" in result.stdout
    touched = " + ".join(
        f"(SELECT count(*) FROM {table} WHERE {column} >= %(t)s)"
        for table, column in [("users", "updated_at"), ("sessions", "updated_at"), ("goals", "updated_at"),
                              ("session_ratings", "created_at"), ("session_feedback", "created_at")]
    )  # fmt: skip
    with psycopg.connect(database_url) as conn:
        (rows,) = conn.execute(f"SELECT {touched}", {"t": started}).fetchone()
    assert rows >= 30  # 100 changes; some touch the same row twice


def test_aggregates_lists_the_registry(service_env: dict[str, str]) -> None:
    result = coachpipe(service_env, "aggregates")
    assert result.returncode == 0 and "`coach-trends` | secondary" in result.stdout


def test_refresh_and_audit_refuse_ids_that_are_not_coaches_and_write_nothing(
    service_env: dict[str, str], database_url: str, redis_client
) -> None:
    assert coachpipe(service_env, "seed", "--coaches", "2", "--truncate").returncode == 0
    with psycopg.connect(database_url) as conn:
        (client,) = conn.execute("SELECT id FROM users WHERE role = 'client' LIMIT 1").fetchone()
    nobody = "00000000-0000-0000-0000-000000000001"
    for args in (
        ["refresh", "--coach", nobody],
        ["refresh", "--coach", str(client)],
        ["refresh", "--coach", nobody, "--enqueue"],
        ["audit", "--coach", str(client)],
    ):
        result = coachpipe(service_env, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "not a coach" in result.stderr and "Traceback" not in result.stderr
    assert "no such user" in coachpipe(service_env, "refresh", "--coach", nobody).stderr
    assert "role 'client'" in coachpipe(service_env, "refresh", "--coach", str(client)).stderr
    assert redis_client.keys("coachpipe:agg:*") == []
