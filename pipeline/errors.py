"""What can go wrong in the pipeline domain, as one hierarchy."""

from collections.abc import Mapping
from uuid import UUID


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


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
