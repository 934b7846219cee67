"""Schema migrations (Alembic) and the replication setup the listeners need.

`upgrade` is safe to run any number of times: Alembic skips applied revisions, every DDL
statement is idempotent, and `ensure_publications` only adds what is missing.
"""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, text

from pipeline.changelog import SIGNAL_TABLE
from pipeline.tables import WATCHED_TABLES

VERSION_TABLE = "coachpipe_schema_version"
SUPABASE_PUBLICATION = "supabase_realtime"


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("pipeline") / "migrations"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, publication: str) -> list[str]:
    """Apply every migration, then make sure both publications hold the five tables.

    Returns the tables added to a publication by this call ("publication.table").
    """
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('coachpipe.migrate'))"))
        command.upgrade(_alembic_config(connection), "head")
        added = ensure_publication(connection, publication)
        # Realtime also carries the signal table: listener canaries and TRUNCATE notices.
        added += ensure_publication(connection, SUPABASE_PUBLICATION, (SIGNAL_TABLE,))
    return added


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        exists = connection.execute(
            text("SELECT to_regclass(:name) IS NOT NULL"), {"name": f"public.{VERSION_TABLE}"}
        ).scalar_one()
        if not exists:
            return None
        return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def ensure_publication(
    connection: Connection, publication: str, extra: tuple[str, ...] = ()
) -> list[str]:
    """Create `publication` if missing and add whichever watched (or `extra`) table it lacks.

    A publication `FOR ALL TABLES` already holds them and cannot be altered, so it is left alone.
    """
    row = connection.execute(
        text("SELECT puballtables FROM pg_publication WHERE pubname = :name"), {"name": publication}
    ).first()
    if row is None:
        connection.execute(text(f'CREATE PUBLICATION "{publication}"'))
    elif row.puballtables:
        return []
    present = set(
        connection.execute(
            text(
                "SELECT tablename FROM pg_publication_tables "
                "WHERE pubname = :name AND schemaname = 'public'"
            ),
            {"name": publication},
        ).scalars()
    )
    added = []
    for table in (*WATCHED_TABLES, *extra):
        if table not in present:
            connection.execute(
                text(f'ALTER PUBLICATION "{publication}" ADD TABLE public."{table}"')
            )
            added.append(f"{publication}.{table}")
    return added
