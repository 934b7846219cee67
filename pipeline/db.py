"""Connections to Postgres: one SQLAlchemy engine per process, psycopg 3 underneath."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import URL, make_url


def sqlalchemy_url(database_url: str) -> URL:
    """`postgres://…` or `postgresql://…` as a psycopg 3 SQLAlchemy URL."""
    url = make_url(database_url.replace("postgres://", "postgresql://", 1))
    return url.set(drivername="postgresql+psycopg")


def libpq_dsn(database_url: str) -> str:
    """The same database as a plain libpq URL, for psycopg2 and command-line tools."""
    url = sqlalchemy_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def redacted(database_url: str) -> str:
    """The URL with its password masked, for logs and status output."""
    return sqlalchemy_url(database_url).set(drivername="postgresql").render_as_string()


def make_engine(
    database_url: str,
    *,
    application_name: str = "coachpipe",
    pool_size: int = 4,
    snapshots: bool = False,
) -> Engine:
    """An engine whose sessions run in UTC, so SQL date arithmetic never depends on the server.

    `snapshots=True` is for readers of aggregates (workers, refreshes): every transaction is
    REPEATABLE READ and read-only from the connection's start, instead of being switched to it
    (and back) around each checkout, which costs four round trips per recompute.

    psycopg prepares a statement executed five times on a connection; Postgres then plans it
    per execution (`force_custom_plan`), because a generic plan guesses at parameters such as
    a status filter and guesses badly. The aggregates' statements, which have only the batch
    and the clock as parameters, switch to generic plans per transaction (pipeline.aggregates).

    JIT compilation is off: the pipeline's statements are index-bounded reads and small
    writes, and a whale skews the planner's estimates past `jit_above_cost`, where each
    statement spent 25-30 ms compiling (measured at 1M sessions; `tests/test_jit.py`).

    Read with `engine.begin()`, not `engine.connect()`: a block of the latter ends in ROLLBACK,
    which pg_stat_database counts in `xact_rollback` like a failure (one per read, tens of
    thousands an hour); a committed read keeps that counter for real aborts.
    """
    options = "-c TimeZone=UTC -c plan_cache_mode=force_custom_plan -c jit=off"
    if snapshots:
        options += " -c default_transaction_read_only=on"
    return create_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        isolation_level="REPEATABLE READ" if snapshots else "READ COMMITTED",
        connect_args={"application_name": application_name, "options": options},
    )


def psycopg_connection(connection: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy one, for what Core does not expose
    (pipeline mode). Only `make_engine`'s engines are supported."""
    driver = connection.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise TypeError(f"expected a psycopg 3 connection, got {type(driver).__name__}")
    return driver
