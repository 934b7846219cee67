"""`client_schedules`: each client's next session, so a recompute probes only those that began.

Creates the summary and replaces the trigger functions and triggers
(`pipeline.summary_sql.schema_ddl`, as 0003; idempotent), then fills the new summary from the
sessions: `CREATE OR REPLACE TRIGGER` has locked the source tables against writes until this
migration commits, so no write is missed, and the readiness of the other summaries is left as
it is (a whale does not fall back to reading its whole history on deploy). On a database
0003 created with this code the summary exists already; it is filled again all the same,
which also replaces rows a downgrade left behind.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from pipeline.summaries import client_schedules, of_source
from pipeline.summary_sql import fill_statements, schema_ddl

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute(schema_ddl())
    (summary,) = (s for s in of_source("sessions") if s.table is client_schedules)
    for statement in fill_statements(summary):
        op.execute(statement)


def downgrade() -> None:
    """Nothing: 0003 runs the current `schema_ddl()`, which creates this summary too."""
