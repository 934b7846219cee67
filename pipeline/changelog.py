"""The change log and the Realtime signal table (migration 0002), and the catch-up read.

Supabase Realtime delivers at most once and never announces TRUNCATE, so a gap in its feed
cannot be refilled from the feed. Statement-level triggers with transition tables keep a
compact log instead: one row per (statement, table, coach), stamped with the writing
transaction's id. A catch-up asks for every coach whose rows changed in a transaction that a
given snapshot (the last one known delivered) did not see: exact whatever the change was,
deletes and TRUNCATE included, and however long the transaction ran.

The signal table is in the `supabase_realtime` publication: listeners commit their canary rows
there (and expect them back through the channel), and the TRUNCATE trigger announces itself
there, so a connected listener hears of a TRUNCATE as fast as of any change.
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import Engine, text

CHANGE_LOG = "coachpipe_change_log"
SIGNAL_TABLE = "coachpipe_realtime_signal"
CANARY_PREFIX = "canary:"
TRUNCATE_PREFIX = "truncate:"
KEEP = "1 hour"
"""How long log rows and abandoned canary rows are kept (the catch-up reads minutes back)."""

WRITE_CANARY = f"""
INSERT INTO public.{SIGNAL_TABLE} (topic, seq, sent_at) VALUES (%(topic)s, %(seq)s, now())
ON CONFLICT (topic) DO UPDATE SET seq = excluded.seq, sent_at = excluded.sent_at
RETURNING pg_current_snapshot()::text
"""

LOG_TRIGGERS = """
CREATE OR REPLACE TRIGGER coachpipe_log_insert AFTER INSERT ON public.{table}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.coachpipe_log_changes();
CREATE OR REPLACE TRIGGER coachpipe_log_update AFTER UPDATE ON public.{table}
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.coachpipe_log_changes();
CREATE OR REPLACE TRIGGER coachpipe_log_delete AFTER DELETE ON public.{table}
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.coachpipe_log_changes();
CREATE OR REPLACE TRIGGER coachpipe_log_truncate AFTER TRUNCATE ON public.{table}
    FOR EACH STATEMENT EXECUTE FUNCTION public.coachpipe_log_truncate();
"""
"""The change log's statement triggers on one watched table (`{table}`), by migration 0002 and
again by every `coachpipe migrate` (a table re-created, e.g. partitioned, loses its triggers).
On a partitioned table they fire for statements on it, with the rows of every partition."""

PRUNE_STATEMENTS = (
    text(f"DELETE FROM public.{CHANGE_LOG} WHERE logged_at < now() - interval '{KEEP}'"),
    text(
        f"DELETE FROM public.{SIGNAL_TABLE} "
        f"WHERE topic LIKE '{CANARY_PREFIX}%' AND sent_at < now() - interval '{KEEP}'"
    ),
)

CHANGED_AFTER = text(
    f"""
    SELECT DISTINCT table_name, coach_id FROM public.{CHANGE_LOG}
    WHERE xid >= pg_snapshot_xmin(CAST(:snapshot AS pg_snapshot))
      AND NOT pg_visible_in_snapshot(xid, CAST(:snapshot AS pg_snapshot))
    """
)


def prune(engine: Engine) -> int:
    """Drop log rows and abandoned canary rows older than `KEEP`; returns rows deleted.

    Every listener calls it now and then, whatever its source: the triggers log for every
    deployment, so pruning must not depend on the `supabase` source running."""
    with engine.begin() as connection:
        return sum(connection.execute(statement).rowcount for statement in PRUNE_STATEMENTS)


def changes_after(engine: Engine, snapshot: str) -> tuple[set[UUID], set[str]]:
    """(coaches, truncated tables) of every change committed after `snapshot` was taken."""
    coaches: set[UUID] = set()
    truncated: set[str] = set()
    with engine.begin() as connection:
        for table, coach in connection.execute(CHANGED_AFTER, {"snapshot": snapshot}):
            if coach is None:
                truncated.add(table)
            else:
                coaches.add(coach)
    return coaches, truncated
