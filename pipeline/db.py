"""Connections to Postgres: one SQLAlchemy engine per process, psycopg 3 underneath."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
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
    database_url: str, *, application_name: str = "coachpipe", pool_size: int = 4
) -> Engine:
    """An engine whose sessions run in UTC, so SQL date arithmetic never depends on the server."""
    return create_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "application_name": application_name,
            "options": "-c TimeZone=UTC -c plan_cache_mode=force_custom_plan",
        },
    )
