"""Inspect and drop the `postgres` source's replication slot."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from coachpipe.errors import CommandError
from config import Settings
from pipeline.db import libpq_dsn


class SlotInUseError(CommandError):
    """A listener still consumes the slot."""


def describe(settings: Settings) -> dict[str, Any] | None:
    with psycopg.connect(libpq_dsn(settings.require_database_url())) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        row = cursor.execute(
            """
            SELECT slot_name, plugin, active, active_pid, restart_lsn::text AS restart_lsn,
                   confirmed_flush_lsn::text AS confirmed_flush_lsn,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes,
                   pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) AS wal_held,
                   wal_status, safe_wal_size
            FROM pg_replication_slots WHERE slot_name = %s
            """,
            (settings.slot_name,),
        ).fetchone()
    return row


def drop(settings: Settings) -> bool:
    """Drop the slot; refuses while a listener consumes it (stop the listeners first)."""
    with psycopg.connect(libpq_dsn(settings.require_database_url()), autocommit=True) as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
            (settings.slot_name,),
        ).fetchone()
        if row is None:
            return False
        if row[0] is not None:
            raise SlotInUseError(
                f"slot {settings.slot_name!r} is in use by process {row[0]}; "
                "stop the listeners first"
            )
        conn.execute("SELECT pg_drop_replication_slot(%s)", (settings.slot_name,))
    return True
