"""What can go wrong while reading settings (a branch of the one tree in `pipeline.errors`)."""

from pipeline.errors import PipelineError


class SettingsError(PipelineError):
    """A setting is missing or invalid. The message names the variable, never its value."""
