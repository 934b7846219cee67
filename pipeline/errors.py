"""What can go wrong in coachpipe, as one hierarchy (dramatiq's one tree).

    CoachpipeError                (config.errors) raised on purpose, anywhere in coachpipe
    ├── SettingsError             (config.errors) a setting is missing or invalid
    └── PipelineError             the domain's branch
        ├── UnknownAggregateError     a name not in the aggregates registry
        ├── BadEventError             a change event from outside that cannot be used as it is
        ├── NotACoachError            ids given as coaches that are not
        ├── CommandError              (coachpipe.errors) a problem the operator can fix
        └── TransientError            an outside service is unavailable: retry, work kept
            └── BrokerUnavailableError  the Celery broker refused a message

Whether an error is worth retrying is decided here and only here (`is_transient`): the tasks'
autoretry and the listener's retry loop both use `TRANSIENT_ERRORS`. Anything else is a bug or
bad input and fails loudly.
"""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

import psycopg
import redis
import sqlalchemy.exc

from config.errors import CoachpipeError


class PipelineError(CoachpipeError):
    """Base of the domain's errors."""


class UnknownAggregateError(PipelineError, KeyError):
    """An aggregate name that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0])


class BadEventError(PipelineError, ValueError):
    """A change event from outside that cannot be used as it is.

    `reason` is a short stable label for the metrics (e.g. "unknown_table", "bad_coach_id").
    """

    def __init__(self, reason: str, message: str, table: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.table = table


class NotACoachError(PipelineError, ValueError):
    """Ids given as coaches that are not (unknown users, clients, admins); nothing was done."""

    def __init__(self, reasons: Mapping[UUID, str]) -> None:
        super().__init__(
            "not a coach: " + "; ".join(f"{user} ({why})" for user, why in reasons.items())
        )
        self.reasons = reasons


class TransientError(PipelineError):
    """An outside service (Redis, Postgres, the broker) is unavailable for now."""


class BrokerUnavailableError(TransientError):
    """The Celery broker could not take a message (raised by the task sender, which knows
    the broker's client library; nothing below `tasks` does)."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    psycopg.OperationalError,
    ConnectionError,
    TimeoutError,
)
"""Errors that say "not now" rather than "wrong": connection refused, reset, timed out."""


def is_transient(error: BaseException) -> bool:
    """True when `error` is worth retrying: the same work may succeed once the service is back."""
    return isinstance(error, TRANSIENT_ERRORS)
