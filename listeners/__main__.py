"""`python -m listeners [postgres|supabase]`: a listener process, settings from the environment."""

from __future__ import annotations

import sys

from config import SettingsError, SourceName, load_settings
from listeners.main import run


def main() -> int:
    try:
        settings = load_settings()
        source = SourceName(sys.argv[1]) if len(sys.argv) > 1 else None
        return run(settings, source)
    except SettingsError as error:
        print(f"coachpipe: {error}", file=sys.stderr)  # noqa: T201
        return 2
    except ValueError:
        print(
            f"coachpipe: unknown source {sys.argv[1]!r}; use postgres or supabase", file=sys.stderr
        )  # noqa: T201
        return 2


if __name__ == "__main__":
    sys.exit(main())
