"""What can go wrong while reading settings."""


class SettingsError(Exception):
    """A setting is missing or invalid. The message names the variable, never its value."""
