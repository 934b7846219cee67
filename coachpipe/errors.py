"""Problems an operator can fix, reported by the CLI as one line (exit code 1).

A branch of the one tree in `pipeline.errors`."""

from pipeline.errors import PipelineError


class CommandError(PipelineError):
    """A problem the operator can fix; printed as one line, exit code 1."""
