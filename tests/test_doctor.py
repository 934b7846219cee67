"""`coachpipe doctor` names each missing prerequisite and how to fix it."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from typer.testing import CliRunner

from coachpipe.cli import app
from coachpipe.doctor import Check, Severity, run_checks
from coachpipe.embedded import PrivatePostgres
from config import load_settings
from pipeline import backfill, keys
from pipeline.db import make_engine
from pipeline.migrate import upgrade
from tests.test_slot_recovery import outrun_the_slot


def checks_for(database_url: str, redis_url: str, **overrides: object) -> dict[str, Check]:
    settings = load_settings(
        _env_file=None, database_url=database_url, redis_url=redis_url, **overrides
    )
    return {check.name: check for check in run_checks(settings)}


def migrated(database_url: str) -> str:
    engine = make_engine(database_url)
    upgrade(engine, "coachpipe")
    engine.dispose()
    return database_url


def test_a_healthy_setup_has_no_failures(fresh_database: str, redis_url: str) -> None:
    checks = checks_for(migrated(fresh_database), redis_url)
    assert [c for c in checks.values() if c.severity is Severity.FAIL] == []
    assert checks["wal_level"].severity is Severity.OK
    assert checks["slot coachpipe"].message.startswith("not created yet")


def test_an_unmigrated_database(fresh_database: str, redis_url: str) -> None:
    checks = checks_for(fresh_database, redis_url)
    assert checks["migrations"].severity is Severity.FAIL
    assert checks["migrations"].fix == "coachpipe migrate"
    assert "missing tables" in checks["tables"].message
    assert checks["publication coachpipe"].severity is Severity.FAIL


def test_summaries_awaiting_backfill_and_missing_triggers(
    fresh_database: str, redis_url: str
) -> None:
    """A table that lost its summary triggers (re-created, say) fails; `coachpipe migrate`
    re-installs them and, the table having rows, marks the summaries not ready: a warning
    that names the backfill; after it the check is ok."""
    migrated(fresh_database)
    assert checks_for(fresh_database, redis_url)["summaries"].severity is Severity.OK
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        for op in ("insert", "update", "delete", "truncate"):
            conn.execute(f"DROP TRIGGER coachpipe_summarize_{op} ON public.users")
        conn.execute(
            "INSERT INTO users (id, role, full_name) VALUES (gen_random_uuid(), 'coach', 'C')"
        )
    check = checks_for(fresh_database, redis_url)["summaries"]
    assert check.severity is Severity.FAIL
    assert "users" in check.message and check.fix.startswith("coachpipe migrate")
    migrated(fresh_database)
    check = checks_for(fresh_database, redis_url)["summaries"]
    assert check.severity is Severity.WARN
    assert "await backfill" in check.message and "whole histories" in check.message
    assert check.fix.startswith("coachpipe backfill")
    engine = make_engine(fresh_database)
    backfill.backfill(engine, batch_size=10)
    engine.dispose()
    check = checks_for(fresh_database, redis_url)["summaries"]
    assert check.severity is Severity.OK and "backfilled" in check.message


def test_an_unindexed_foreign_key(fresh_database: str, redis_url: str) -> None:
    """A foreign key whose columns lead no index makes each delete of the row it references
    scan the whole table: a warning naming the column and the statement that builds it."""
    migrated(fresh_database)
    assert checks_for(fresh_database, redis_url)["foreign key indexes"].severity is Severity.OK
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("DROP INDEX public.sessions_client_id_fkey_idx")
        # A partial index does not serve the foreign key's lookups.
        conn.execute(
            "CREATE INDEX partial_idx ON public.sessions (client_id) WHERE price_cents > 0"
        )
    check = checks_for(fresh_database, redis_url)["foreign key indexes"]
    assert check.severity is Severity.WARN
    assert (
        "public.sessions(client_id)" in check.message and "scans the whole table" in check.message
    )
    assert (
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "sessions_client_id_fkey_idx"'
        " ON public.sessions (client_id);" in check.fix
    )
    migrated(fresh_database)
    assert checks_for(fresh_database, redis_url)["foreign key indexes"].severity is Severity.OK


def test_replica_identity_not_full(fresh_database: str, redis_url: str) -> None:
    migrated(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.sessions REPLICA IDENTITY DEFAULT")
    check = checks_for(fresh_database, redis_url)["replica identity"]
    assert check.severity is Severity.FAIL
    assert "sessions" in check.message and "old" in check.message
    assert "ALTER TABLE public.sessions REPLICA IDENTITY FULL;" in check.fix


def test_a_table_missing_from_the_publication(fresh_database: str, redis_url: str) -> None:
    migrated(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("ALTER PUBLICATION coachpipe DROP TABLE public.goals")
    check = checks_for(fresh_database, redis_url)["publication coachpipe"]
    assert check.severity is Severity.FAIL
    assert "goals" in check.message
    assert 'ALTER PUBLICATION "coachpipe" ADD TABLE public.goals;' in check.fix


def test_a_role_without_replication(fresh_database: str, redis_url: str) -> None:
    migrated(fresh_database)
    role = f"app_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        as_app = fresh_database.replace("postgres@", f"{role}@", 1)
        check = checks_for(as_app, redis_url)["replication privilege"]
        assert check.severity is Severity.FAIL
        assert check.fix == f'ALTER ROLE "{role}" WITH REPLICATION;'
        summaries = checks_for(as_app, redis_url)["summaries"]
        assert summaries.severity is Severity.FAIL and "cannot read" in summaries.message
        assert f'GRANT USAGE ON SCHEMA coachpipe TO "{role}";' in summaries.fix
    finally:
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_a_slot_holding_too_much_wal(fresh_database: str, redis_url: str) -> None:
    migrated(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('doctor_slot', 'pgoutput')")
        conn.execute(
            "INSERT INTO users (role, full_name) SELECT 'coach', 'x' FROM generate_series(1, 100)"
        )
    try:
        check = checks_for(
            fresh_database, redis_url, slot_name="doctor_slot", slot_lag_warn_bytes=1
        )["slot doctor_slot"]
        assert check.severity is Severity.WARN
        assert "slot drop" in check.fix
    finally:
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('doctor_slot')")


def test_wal_level_replica(services_dir: Path, redis_url: str) -> None:
    server = PrivatePostgres(
        services_dir / "pg-replica", durable=False, settings=("wal_level=replica",)
    )
    server.start()
    try:
        check = checks_for(server.url, redis_url)["wal_level"]
        assert check.severity is Severity.FAIL
        assert "ALTER SYSTEM SET wal_level = logical" in check.fix
    finally:
        server.destroy()


def test_unreachable_services(fresh_database: str) -> None:
    checks = checks_for(
        "postgresql://nobody@127.0.0.1:1/none",
        "redis://127.0.0.1:1/0",
        broker_url="redis://127.0.0.1:1/1",
    )
    assert checks["postgres"].severity is Severity.FAIL and "DATABASE_URL" in checks["postgres"].fix
    assert checks["redis"].severity is Severity.FAIL and "REDIS_URL" in checks["redis"].fix
    assert checks["broker"].severity is Severity.FAIL


def _jwt(claims: dict[str, str]) -> str:
    def part(data: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2ln"


def test_supabase_source_without_keys_and_with_the_anon_key(
    fresh_database: str, redis_url: str
) -> None:
    migrated(fresh_database)
    missing = checks_for(fresh_database, redis_url, listener_source="supabase")["supabase keys"]
    assert missing.severity is Severity.FAIL and "SUPABASE_URL and SUPABASE_KEY" in missing.message
    anon = checks_for(
        fresh_database, redis_url, listener_source="supabase",
        supabase_url="https://x.supabase.co", supabase_key=_jwt({"role": "anon"}),
    )["supabase keys"]  # fmt: skip
    assert anon.severity is Severity.WARN and "service_role" in anon.fix


def test_the_cli_exits_non_zero_on_a_failure(
    fresh_database: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_database)
    monkeypatch.setenv("REDIS_URL", redis_url)
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    failing = {c["name"]: c["fix"] for c in report if c["severity"] == "fail"}
    assert failing["migrations"] == "coachpipe migrate"


def test_a_slot_of_the_same_name_in_another_database(
    fresh_database: str, database_url: str, redis_url: str
) -> None:
    migrated(fresh_database)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('doctor_other', 'pgoutput')")
    try:
        check = checks_for(fresh_database, redis_url, slot_name="doctor_other")["slot doctor_other"]
        assert check.severity is Severity.FAIL
        assert "belongs to database" in check.message and "SLOT_NAME" in check.fix
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('doctor_other')")


def test_an_invalidated_slot_and_its_history(
    small_wal_server: PrivatePostgres, redis_client: redis.Redis, redis_url: str
) -> None:
    database_url = small_wal_server.url
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('coachpipe', 'pgoutput')")
    check = checks_for(database_url, redis_url)["slot coachpipe"]
    assert check.severity is Severity.OK
    assert "wal_status reserved" in check.message
    assert "max_slot_wal_keep_size 1,048,576 bytes" in check.message
    assert "safe_wal_size" in check.message
    outrun_the_slot(database_url)
    check = checks_for(database_url, redis_url)["slot coachpipe"]
    assert check.severity is Severity.FAIL
    assert "invalidated" in check.message and "wal_status lost" in check.message
    assert "replaces the slot" in check.fix
    history = f"slot {load_settings(_env_file=None).slot_name} history"
    assert checks_for(database_url, redis_url)[history].message == "never replaced"
    redis_client.hset(keys.slot_recreations("coachpipe"), "pending", "slot recreated (slot_lost)")
    check = checks_for(database_url, redis_url)[history]
    assert check.severity is Severity.FAIL and "may have been missed" in check.message
