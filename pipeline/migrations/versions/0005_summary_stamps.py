"""Summary rows say when they were last written: `changed`, the writer's transaction ID.

Adds `changed xid8` to every summary table (no default: instant, no rewrite; rows last written
before it read NULL) and to the state row, replaces the trigger functions so that every write
of a summary row stamps it (`pipeline.summary_sql.schema_ddl`, as 0003; idempotent), and
stamps the state row (`FORGET_SNAPSHOTS`): a value stored from a snapshot taken before this
migration committed is never the base of an incremental recompute, so the NULL stamps are
older than every base snapshot that is used (`pipeline.aggregates.delta`). It first locks the
watched tables against writes (as `CREATE TRIGGER` does) until it commits, so no write is left
unstamped and no writer already in a trigger meets the summary tables' ALTERs in a deadlock.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

from pipeline.summaries import SOURCES
from pipeline.summary_sql import FORGET_SNAPSHOTS, schema_ddl

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    # The watched tables first, in one order, as `CREATE TRIGGER` would lock them: a writer
    # whose trigger already holds a summary table would otherwise deadlock with the ALTERs.
    watched = ", ".join(f"public.{source}" for source in SOURCES)
    op.execute(f"LOCK TABLE {watched} IN SHARE ROW EXCLUSIVE MODE")
    op.execute(schema_ddl())
    op.execute(FORGET_SNAPSHOTS)


def downgrade() -> None:
    """Nothing: 0003 runs the current `schema_ddl()`, which adds the columns too."""
