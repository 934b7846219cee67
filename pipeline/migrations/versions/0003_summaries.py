"""Summary tables kept by statement triggers, for recomputes that do not read whole histories.

See `pipeline.summaries` and `pipeline.summary_sql`. Idempotent like 0001. The indexes the
summarised aggregates read by are built afterwards, concurrently (`pipeline.migrate`).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from pipeline.summary_sql import drop_ddl, schema_ddl

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute(schema_ddl())


def downgrade() -> None:
    op.execute(drop_ddl())
