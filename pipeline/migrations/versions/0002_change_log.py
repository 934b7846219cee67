"""The change log (statement triggers with transition tables) and the Realtime signal table.

See `pipeline.changelog` for why. Idempotent like 0001.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from pipeline.changelog import LOG_TRIGGERS
from pipeline.tables import WATCHED_TABLES

revision = "0002"
down_revision = "0001"

TABLES = """
CREATE TABLE IF NOT EXISTS public.coachpipe_change_log (
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_name text NOT NULL,
    coach_id uuid,  -- NULL: every coach of the table (TRUNCATE)
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS coachpipe_change_log_xid_idx ON public.coachpipe_change_log (xid);
CREATE INDEX IF NOT EXISTS coachpipe_change_log_logged_at_idx
    ON public.coachpipe_change_log (logged_at);

CREATE TABLE IF NOT EXISTS public.coachpipe_realtime_signal (
    topic text PRIMARY KEY,
    seq bigint NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION public.coachpipe_log_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO public.coachpipe_change_log (table_name, coach_id)
        SELECT DISTINCT TG_TABLE_NAME, coach_id FROM new_rows WHERE coach_id IS NOT NULL;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO public.coachpipe_change_log (table_name, coach_id)
        SELECT TG_TABLE_NAME, coach_id FROM new_rows WHERE coach_id IS NOT NULL
        UNION SELECT TG_TABLE_NAME, coach_id FROM old_rows WHERE coach_id IS NOT NULL;
    ELSE
        INSERT INTO public.coachpipe_change_log (table_name, coach_id)
        SELECT DISTINCT TG_TABLE_NAME, coach_id FROM old_rows WHERE coach_id IS NOT NULL;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION public.coachpipe_log_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.coachpipe_change_log (table_name, coach_id) VALUES (TG_TABLE_NAME, NULL);
    INSERT INTO public.coachpipe_realtime_signal (topic, seq)
    VALUES ('truncate:' || TG_TABLE_NAME, 1)
    ON CONFLICT (topic) DO UPDATE
        SET seq = public.coachpipe_realtime_signal.seq + 1, sent_at = now();
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.execute(TABLES)
    for table in WATCHED_TABLES:
        op.execute(LOG_TRIGGERS.format(table=table))


def downgrade() -> None:
    for table in WATCHED_TABLES:
        for name in ("insert", "update", "delete", "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS coachpipe_log_{name} ON public.{table}")
    op.execute(
        "DROP TABLE IF EXISTS public.coachpipe_change_log, public.coachpipe_realtime_signal; "
        "DROP FUNCTION IF EXISTS public.coachpipe_log_changes(), public.coachpipe_log_truncate()"
    )
