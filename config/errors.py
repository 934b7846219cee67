"""The root of coachpipe's one error tree, and what can go wrong while reading settings.

The root lives here, in the lowest layer, so that every package can raise from the same tree
(`pipeline.errors` holds the domain's branch and the transient classification).
"""


class CoachpipeError(Exception):
    """Base of every error coachpipe raises on purpose."""


class SettingsError(CoachpipeError):
    """A setting is missing or invalid. The message names the variable, never its value."""
