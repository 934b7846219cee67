"""`python -m listeners [postgres|supabase]`: a listener process, settings from the environment."""

from __future__ import annotations

import sys

from config import SettingsError, SourceName, load_settings
from listeners.main import run


def main() -> int:
    try:
        source = SourceName(sys.argv[1]) if len(sys.argv) > 1 else None
    except ValueError:
        sys.stderr.write(f"coachpipe: unknown source {sys.argv[1]!r}; use postgres or supabase\n")
        return 2
    try:
        return run(load_settings(), source)
    except SettingsError as error:
        sys.stderr.write(f"coachpipe: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
