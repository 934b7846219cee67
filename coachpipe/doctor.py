"""`coachpipe doctor`: every prerequisite checked, each problem with the way to fix it."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import psycopg
import redis

from config import Settings, SourceName
from config.logging import redact_text
from pipeline import keys
from pipeline.changelog import SIGNAL_TABLE
from pipeline.db import libpq_dsn
from pipeline.migrate import (
    PUBLICATION_MEMBERS,
    SUPABASE_PUBLICATION,
    UNINDEXED_FOREIGN_KEYS,
    VERSION_TABLE,
    foreign_key_index,
)
from pipeline.redis_client import connect, is_cluster
from pipeline.redis_values import as_text
from pipeline.summaries import SCHEMA, SOURCES
from pipeline.summary_sql import STATE_TABLE
from pipeline.tables import WATCHED_TABLES

MIN_REDIS = (6, 2)
MIN_REDIS_CLUSTER = (7, 0)
"""Sharded pub/sub (`SPUBLISH`), which a Cluster's update notices use, came with Redis 7.0."""


class Severity(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    severity: Severity
    message: str
    fix: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def ok(name: str, message: str) -> Check:
    return Check(name, Severity.OK, message)


def _first_line(error: Exception) -> str:
    return redact_text(str(error).strip().splitlines()[0] if str(error).strip() else repr(error))


def _postgres_checks(settings: Settings, conn: psycopg.Connection[Any]) -> list[Check]:
    def one(sql: str, *params: object) -> Any:
        row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    checks = []
    wal_level = one("SHOW wal_level")
    checks.append(
        ok("wal_level", "logical")
        if wal_level == "logical"
        else Check(
            "wal_level",
            Severity.FAIL,
            f"wal_level is {wal_level}: no logical replication, so no change events at all",
            "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL "
            "(Supabase projects already run with logical)",
        )
    )
    used, slots, senders = conn.execute(
        "SELECT (SELECT count(*) FROM pg_replication_slots), "
        "current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int"
    ).fetchone() or (0, 0, 0)
    exists = one("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", settings.slot_name)
    if not exists and used >= slots:
        checks.append(Check(
            "replication slots", Severity.FAIL,
            f"all {slots} replication slots are taken; the listener cannot create its own",
            "raise max_replication_slots (and max_wal_senders) and restart, "
            "or drop an unused slot",
        ))  # fmt: skip
    else:
        checks.append(ok("replication slots", f"{used} of {slots} used, {senders} WAL senders"))
    revision = one("SELECT to_regclass(%s) IS NOT NULL", f"public.{VERSION_TABLE}")
    revision = one(f"SELECT version_num FROM {VERSION_TABLE}") if revision else None
    checks.append(
        ok("migrations", f"schema at revision {revision}")
        if revision
        else Check(
            "migrations", Severity.FAIL, "the schema was never migrated", "coachpipe migrate"
        )
    )
    identities = dict(
        conn.execute(
            "SELECT c.relname, c.relreplident FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relname = ANY(%s)",
            (list(WATCHED_TABLES),),
        ).fetchall()
    )
    missing = [t for t in WATCHED_TABLES if t not in identities]
    if missing:
        checks.append(Check(
            "tables", Severity.FAIL, f"missing tables: {', '.join(missing)}", "coachpipe migrate"
        ))  # fmt: skip
    else:
        checks.append(ok("tables", "all five tables exist"))
    partitions = dict(
        conn.execute(
            "SELECT format('%%I.%%I', n.nspname, c.relname), c.relreplident"
            " FROM unnest(%s::text[]) AS t(name)"
            " CROSS JOIN LATERAL pg_partition_tree(to_regclass('public.' || quote_ident(t.name)))"
            " AS tree JOIN pg_class c ON c.oid = tree.relid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE tree.isleaf AND tree.level > 0",
            (list(WATCHED_TABLES),),
        ).fetchall()
    )
    partitioned = {
        name
        for (name,) in conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'p'"
            " AND relnamespace = 'public'::regnamespace AND relname = ANY(%s)",
            (list(WATCHED_TABLES),),
        ).fetchall()
    }
    # A partitioned table stores nothing itself: its partitions' identity is the one that counts.
    partial = [f"public.{t}" for t, i in identities.items() if i != "f" and t not in partitioned]
    partial += [p for p, identity in partitions.items() if identity != "f"]
    if partial:
        statements = " ".join(f"ALTER TABLE {t} REPLICA IDENTITY FULL;" for t in partial)
        checks.append(Check(
            "replica identity", Severity.FAIL,
            f"not REPLICA IDENTITY FULL: {', '.join(sorted(partial))}. UPDATE and DELETE events "
            "lack the old row, so a moved session or client cannot invalidate its old coach",
            f"{statements} (or coachpipe migrate)",
        ))  # fmt: skip
    elif identities:
        checks.append(ok("replica identity", "FULL on every table"))
    publications = [(settings.publication_name, settings.listener_source is SourceName.POSTGRES)]
    needs_realtime = (
        settings.listener_source is SourceName.SUPABASE or settings.supabase_url is not None
    )
    publications.append((SUPABASE_PUBLICATION, needs_realtime))
    for publication, required in publications:
        checks.append(_publication_check(conn, publication, required))
    if partitioned and settings.listener_source is SourceName.POSTGRES:
        checks.append(_partition_root_check(conn, settings.publication_name, partitioned))
    if partitioned and needs_realtime:
        checks.append(_realtime_partitions_check(conn, partitioned))
    if needs_realtime and not missing:
        checks.append(_change_log_check(conn))
    if revision and not missing:
        checks.append(_summaries_check(conn))
    if not missing:
        checks.append(_foreign_key_index_check(conn))
    privileged = one("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")
    user = one("SELECT current_user")
    if settings.listener_source is SourceName.POSTGRES and not privileged:
        checks.append(Check(
            "replication privilege", Severity.FAIL,
            f"role {user} may not stream replication, so `listen --source postgres` cannot run",
            f'ALTER ROLE "{user}" WITH REPLICATION;',
        ))  # fmt: skip
    else:
        checks.append(ok("replication privilege", f"role {user} may replicate"))
    checks.append(_slot_check(settings, conn))
    return checks


def _publication_check(conn: psycopg.Connection[Any], publication: str, required: bool) -> Check:
    name = f"publication {publication}"
    row = conn.execute(
        "SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,)
    ).fetchone()
    severity = Severity.FAIL if required else Severity.WARN
    if row is None:
        return Check(name, severity, "does not exist", "coachpipe migrate")
    if row[0]:
        return ok(name, "FOR ALL TABLES")
    members = {r[0] for r in conn.execute(PUBLICATION_MEMBERS, {"name": publication})}
    # Realtime also carries the signal table (listener canaries, TRUNCATE notices).
    extra = (SIGNAL_TABLE,) if publication == SUPABASE_PUBLICATION else ()
    missing = [t for t in (*WATCHED_TABLES, *extra) if t not in members]
    if not missing:
        return ok(name, f"holds all {'six' if extra else 'five'} tables")
    statements = " ".join(
        f'ALTER PUBLICATION "{publication}" ADD TABLE public.{t};' for t in missing
    )
    return Check(
        name,
        severity,
        f"lacks {', '.join(missing)}: their changes are never sent",
        f"{statements} (or coachpipe migrate)",
    )


def _partition_root_check(
    conn: psycopg.Connection[Any], publication: str, partitioned: set[str]
) -> Check:
    name = f"partitioned tables in {publication}"
    row = conn.execute(
        "SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (publication,)
    ).fetchone()
    tables = ", ".join(sorted(partitioned))
    if row is None or row[0]:
        return ok(name, f"{tables}: changes sent under the partitioned table's name")
    return Check(
        name,
        Severity.FAIL,
        f"{tables} partitioned, and the publication sends their changes under each partition's "
        "name, which no aggregate reads: they are ignored",
        f'ALTER PUBLICATION "{publication}" SET (publish_via_partition_root = true); '
        "(or coachpipe migrate)",
    )


def _realtime_partitions_check(conn: psycopg.Connection[Any], partitioned: set[str]) -> Check:
    """Realtime's poller keeps the changes of the tables `pg_publication_tables` lists, and
    wal2json names each change by its partition (supabase/realtime `realtime.list_changes`)."""
    name = f"partitioned tables in {SUPABASE_PUBLICATION}"
    row = conn.execute(
        "SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (SUPABASE_PUBLICATION,)
    ).fetchone()
    tables = ", ".join(sorted(partitioned))
    if row is None or not row[0]:
        return ok(name, f"{tables}: each partition published; the listener binds them")
    return Check(
        name,
        Severity.FAIL,
        f"{tables} partitioned, and the publication lists only the partitioned table, whose "
        "name no change carries: Realtime sends none of their changes",
        f'ALTER PUBLICATION "{SUPABASE_PUBLICATION}" SET (publish_via_partition_root = false);',
    )


def _tables_without_triggers(
    conn: psycopg.Connection[Any], tables: Sequence[str], prefix: str
) -> list[str]:
    """Those of `tables` (schema `public`, in their order) without all four of the triggers
    named `prefix…` that `coachpipe migrate` installs on each."""
    present = {
        table
        for (table,) in conn.execute(
            "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY(%s)"
            " AND t.tgname LIKE %s GROUP BY c.relname HAVING count(*) = 4",
            (list(tables), prefix + "%"),
        ).fetchall()
    }
    return [table for table in tables if table not in present]


def _change_log_check(conn: psycopg.Connection[Any]) -> Check:
    """The `supabase` source's catch-up reads the change log its statement triggers keep; a
    table re-created (e.g. partitioned) has lost them."""
    missing = _tables_without_triggers(conn, WATCHED_TABLES, "coachpipe_log_")
    if not missing:
        return ok("change log", "triggers on all five tables")
    return Check(
        "change log",
        Severity.FAIL,
        f"triggers missing on {', '.join(missing)}: a Realtime gap in their changes is never "
        "caught up",
        "coachpipe migrate",
    )


def _summaries_check(conn: psycopg.Connection[Any]) -> Check:
    """The summary tables (`pipeline.summaries`): their triggers on the five tables, and
    whether they are filled. `coachpipe migrate` on a database that already had rows marks
    them not ready; the aggregates then read whole histories until `coachpipe backfill`."""
    missing = _tables_without_triggers(conn, SOURCES, "coachpipe_summarize_")
    if missing:
        return Check(
            "summaries",
            Severity.FAIL,
            f"summary triggers missing on {', '.join(missing)}: the summaries in schema {SCHEMA} "
            "miss their changes and the aggregates would read wrong counts",
            "coachpipe migrate (then coachpipe backfill if it says so)",
        )
    user, readable = conn.execute(
        "SELECT current_user, has_schema_privilege(%s, 'USAGE')"
        " AND has_table_privilege(%s, 'SELECT')",
        (SCHEMA, STATE_TABLE),
    ).fetchone() or ("?", False)
    if not readable:
        return Check(
            "summaries",
            Severity.FAIL,
            f"role {user} cannot read the summaries (schema {SCHEMA}): a recompute under this "
            "role fails",
            f'GRANT USAGE ON SCHEMA {SCHEMA} TO "{user}"; '
            f'GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO "{user}";',
        )
    state = conn.execute(f"SELECT ready, backfilled_at FROM {STATE_TABLE}").fetchone()
    if state is None or not state[0]:
        return Check(
            "summaries",
            Severity.WARN,
            "summaries await backfill: the database had rows when they were created, so every "
            "recompute reads whole histories (slow for coaches with long histories) until the "
            "backfill has run",
            "coachpipe backfill (safe while writes continue; progress bar)",
        )
    since = (
        "" if state[1] is None else f", backfilled {state[1].astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    )
    return ok("summaries", f"ready, kept by triggers on all five tables{since}")


def _foreign_key_index_check(conn: psycopg.Connection[Any]) -> Check:
    """Foreign keys of the five tables whose columns lead no index (`UNINDEXED_FOREIGN_KEYS`):
    each delete of a referenced row (a session, a client) scans the whole referencing table,
    under the delete's row locks. A warning: nothing is wrong, only slow, and slower as the
    tables grow."""
    found = conn.execute(UNINDEXED_FOREIGN_KEYS, {"tables": list(WATCHED_TABLES)}).fetchall()
    if not found:
        return ok("foreign key indexes", "every foreign key of the five tables is indexed")
    return Check(
        "foreign key indexes",
        Severity.WARN,
        "no valid index leads with "
        + ", ".join(f"{table}({columns})" for table, _, columns, _ in found)
        + ": deleting a row they reference scans the whole table",
        "coachpipe migrate (it builds them, CONCURRENTLY where the table is not partitioned), "
        "or: " + " ".join(f"{foreign_key_index(*row)};" for row in found),
    )


def _size(size: int | None) -> str:
    return "unknown" if size is None else f"{size:,} bytes"


def _slot_check(settings: Settings, conn: psycopg.Connection[Any]) -> Check:
    name = f"slot {settings.slot_name}"
    row = conn.execute(
        "SELECT plugin, active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
        " database, current_database(), wal_status, safe_wal_size,"
        " (SELECT CASE WHEN setting::bigint < 0 THEN NULL ELSE setting::bigint * 1024 * 1024 END"
        "  FROM pg_settings WHERE name = 'max_slot_wal_keep_size')"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (settings.slot_name,),
    ).fetchone()
    if row is None:
        return ok(name, "not created yet: the first `coachpipe listen --source postgres` does")
    plugin, active, lag, database, current, wal_status, safe_wal_size, keep = row
    if database != current:
        return Check(name, Severity.FAIL,
                     f"a slot of that name belongs to database {database!r}, not {current!r}",
                     "set SLOT_NAME to a name of its own for this database")  # fmt: skip
    if plugin != "pgoutput":
        return Check(name, Severity.FAIL, f"uses output plugin {plugin}, not pgoutput",
                     "stop the listeners, `coachpipe slot drop`, start a listener")  # fmt: skip
    limit = "unlimited" if keep is None else _size(keep)
    state = (
        f"active={active}, wal_status {wal_status}, lag {_size(lag)} "
        f"(max_slot_wal_keep_size {limit}, safe_wal_size {_size(safe_wal_size)})"
    )
    if wal_status == "lost":
        return Check(
            name, Severity.FAIL,
            f"invalidated by the server ({state}): the changes since its position are gone",
            "start a postgres listener: it replaces the slot and refreshes every coach "
            "(or `coachpipe slot drop` first); raise max_slot_wal_keep_size so it does not recur",
        )  # fmt: skip
    if wal_status == "unreserved":
        return Check(
            name, Severity.FAIL,
            f"holds more WAL than max_slot_wal_keep_size ({state}): the next checkpoint "
            "invalidates it",
            "start a postgres listener now so it catches up; raise max_slot_wal_keep_size",
        )  # fmt: skip
    if lag is not None and lag > settings.slot_lag_warn_bytes:
        return Check(
            name,
            Severity.WARN,
            f"holds {lag:,} bytes of WAL ({state}); the disk fills if nobody consumes it",
            "start a postgres listener, or `coachpipe slot drop` if the pipeline was removed",
        )
    if keep is not None and safe_wal_size is not None and safe_wal_size < keep // 4:
        return Check(
            name, Severity.WARN,
            f"close to max_slot_wal_keep_size ({state}): invalidated if it falls further behind",
            "make sure a postgres listener runs; raise max_slot_wal_keep_size",
        )  # fmt: skip
    return ok(name, state)


def _slot_history_check(settings: Settings) -> Check:
    """Slot replacements the listener made (see `listeners.slot_faults`), kept in Redis."""
    name = f"slot {settings.slot_name} history"
    try:
        client = connect(settings.require_redis_url(), socket_timeout=5)
        raw = client.hgetall(keys.slot_recreations(settings.slot_name))
    except redis.RedisError as error:
        return Check(name, Severity.WARN, f"unknown: {_first_line(error)}", "see the redis check")
    history = {as_text(k): as_text(v) for k, v in raw.items()}
    if "pending" in history:
        return Check(
            name, Severity.FAIL,
            f"changes may have been missed ({history['pending']}); the refresh of every coach "
            "is not enqueued yet",
            "keep a postgres listener running: it enqueues the refresh once it streams "
            "(or `coachpipe refresh --all`)",
        )  # fmt: skip
    if "count" not in history:
        return ok(name, "never replaced")
    at = datetime.fromtimestamp(float(history["last_at"]), UTC).isoformat(timespec="seconds")
    return ok(
        name,
        f"replaced {history['count']} time(s), last at {at} ({history['last_reason']}); "
        "every coach was refreshed after it",
    )


def _redis_check(settings: Settings) -> Check:
    try:
        client = connect(settings.require_redis_url(), socket_timeout=5)
        info = client.info("server")
    except redis.RedisError as error:
        return Check("redis", Severity.FAIL, f"unreachable: {_first_line(error)}",
                     "check REDIS_URL and that Redis runs")  # fmt: skip
    version = tuple(int(part) for part in str(info["redis_version"]).split(".")[:2])
    if version < MIN_REDIS:
        return Check("redis", Severity.FAIL, f"version {info['redis_version']} is too old",
                     "use Redis 6.2 or newer")  # fmt: skip
    if is_cluster(client) and version < MIN_REDIS_CLUSTER:
        return Check(
            "redis",
            Severity.FAIL,
            f"cluster version {info['redis_version']} has no sharded pub/sub",
            "use Redis 7.0 or newer for a Redis Cluster (its update notices use SPUBLISH)",
        )
    return ok("redis", f"version {info['redis_version']}")


def _broker_check(settings: Settings) -> Check:
    from kombu.connection import Connection

    from tasks.celery import redis_transport_options
    from tasks.names import is_amqp

    try:
        broker = settings.require_broker_url()
        options = {} if is_amqp(broker) else redis_transport_options(settings)
        with Connection(  # type: ignore[no-untyped-call]
            broker, connect_timeout=5, transport_options=options
        ) as connection:
            connection.ensure_connection(max_retries=1, timeout=5)
            transport = connection.transport_cls
    except Exception as error:
        return Check("broker", Severity.FAIL, f"unreachable: {_first_line(error)}",
                     "check BROKER_URL (or REDIS_URL) and that the broker runs")  # fmt: skip
    return ok("broker", f"reachable ({transport})")


def _jwt_role(token: str) -> str | None:
    try:
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    role = claims.get("role") if isinstance(claims, dict) else None
    return role if isinstance(role, str) else None


def _supabase_checks(settings: Settings) -> list[Check]:
    needed = settings.listener_source is SourceName.SUPABASE
    if not needed and settings.supabase_url is None:
        return [ok("supabase", "not used (LISTENER_SOURCE=postgres)")]
    missing = [
        name
        for name, value in (
            ("SUPABASE_URL", settings.supabase_url),
            ("SUPABASE_KEY", settings.supabase_key),
        )
        if value is None
    ]
    if missing:
        return [Check("supabase keys", Severity.FAIL if needed else Severity.WARN,
                      f"{' and '.join(missing)} not set",
                      "set them from the project's Settings > API page")]  # fmt: skip
    assert settings.supabase_key is not None
    key = settings.supabase_key.get_secret_value()
    role = _jwt_role(key)
    if role == "anon":
        return [Check("supabase keys", Severity.WARN,
                      "SUPABASE_KEY is the anon key: RLS hides rows, so changes go missing",
                      "use the service_role key (or a secret key) for the listener")]  # fmt: skip
    return [ok("supabase keys", f"set (role {role or 'secret key'})")]


def _api_check(settings: Settings) -> Check:
    if settings.supabase_jwt_secret is None and settings.supabase_jwks_url is None:
        return Check("read API auth", Severity.WARN, "no SUPABASE_JWT_SECRET or SUPABASE_JWKS_URL: "
                     "the read API refuses every request",
                     "set one of them to the project's JWT secret or JWKS URL")  # fmt: skip
    return ok("read API auth", "JWT verification configured")


def run_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    try:
        with psycopg.connect(libpq_dsn(settings.require_database_url()), connect_timeout=5) as conn:
            checks += _postgres_checks(settings, conn)
    except psycopg.OperationalError as error:
        checks.append(Check("postgres", Severity.FAIL, f"unreachable: {_first_line(error)}",
                            "check DATABASE_URL, the network and the credentials"))  # fmt: skip
    steps: list[Callable[[Settings], Check | list[Check]]] = [
        _redis_check, _slot_history_check, _broker_check, _supabase_checks, _api_check,
    ]  # fmt: skip
    for step in steps:
        result = step(settings)
        checks += result if isinstance(result, list) else [result]
    return checks
