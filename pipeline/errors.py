"""What can go wrong in the pipeline domain, as one hierarchy."""


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
