"""One settings object for every process of the pipeline."""

from config.errors import SettingsError
from config.settings import LogFormat, Settings, SourceName, load_settings

__all__ = ["LogFormat", "Settings", "SettingsError", "SourceName", "load_settings"]
