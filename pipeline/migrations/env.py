"""Alembic environment: runs on the connection `pipeline.migrate` hands over."""

from alembic import context

from pipeline.migrate import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
