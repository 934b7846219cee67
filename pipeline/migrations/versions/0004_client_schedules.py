"""`client_schedules`: each client's next session, so a recompute probes only those that began.

Creates the summary and replaces the sessions trigger (`pipeline.summary_sql.schema_ddl`, as
0003; idempotent). On a database with scheduled sessions the new summary starts empty, so the
summaries are marked not ready: the aggregates read the base tables until `coachpipe backfill`
has rebuilt every coach (the README's "Upgrading a database with data").

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from pipeline.summaries import SCHEMA
from pipeline.summary_sql import STATE_TABLE, schema_ddl

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute(schema_ddl())
    op.execute(
        f"UPDATE {STATE_TABLE} SET ready = false"
        " WHERE EXISTS (SELECT FROM public.sessions WHERE status = 'scheduled')"
        f" AND NOT EXISTS (SELECT FROM {SCHEMA}.client_schedules)"
    )


def downgrade() -> None:
    """The sessions trigger of 0003 cannot be told apart from this one's: keep the summary."""
