"""Problems an operator can fix, reported by the CLI as one line (exit code 1)."""


class CommandError(Exception):
    """A problem the operator can fix; printed as one line, exit code 1."""
