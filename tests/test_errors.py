"""One error tree: every error raised on purpose under one root, transient ones in one place."""

from __future__ import annotations

import psycopg
import pytest
import redis
import sqlalchemy.exc
from kombu.exceptions import OperationalError as KombuOperationalError

from coachpipe.errors import CommandError
from config import SettingsError
from config.errors import CoachpipeError
from pipeline.errors import (
    BadEventError,
    BrokerUnavailableError,
    PipelineError,
    TransientError,
    UnknownAggregateError,
    is_transient,
)


@pytest.mark.parametrize(
    "error",
    [
        SettingsError("REDIS_URL is not set"),
        CommandError("no slot"),
        UnknownAggregateError("coach-nothing"),
        BadEventError("unknown_table", "no such table", "x"),
        TransientError("later"),
        BrokerUnavailableError("cannot reach the broker"),
    ],
)
def test_every_error_raised_on_purpose_shares_one_root(error: Exception) -> None:
    assert isinstance(error, CoachpipeError)
    assert isinstance(error, PipelineError) != isinstance(error, SettingsError)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (redis.ConnectionError("Connection refused"), True),
        (redis.TimeoutError("Timeout reading from socket"), True),
        (redis.BusyLoadingError("LOADING"), True),
        (sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed")), True),
        (sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection closed")), True),
        (psycopg.OperationalError("connection refused"), True),
        (ConnectionResetError(104, "reset by peer"), True),
        (TimeoutError("timed out"), True),
        (BrokerUnavailableError("cannot reach the broker"), True),
        (TransientError("later"), True),
        # Bugs and bad input: retrying cannot help, they fail loudly.
        (redis.ResponseError("WRONGTYPE"), False),
        (redis.DataError("Invalid input"), False),
        (sqlalchemy.exc.ProgrammingError("SELECT x", {}, Exception("no column x")), False),
        (sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate")), False),
        (psycopg.errors.UndefinedTable("no table"), False),
        (UnknownAggregateError("coach-nothing"), False),
        (SettingsError("REDIS_URL is not set"), False),
        (TypeError("unsupported operand"), False),
        (KeyError("coach_id"), False),
        (ValueError("badly formed hexadecimal UUID string"), False),
        # Celery's broker client error is classified only once the sender wraps it.
        (KombuOperationalError("Error 111 connecting"), False),
    ],
)
def test_which_errors_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
