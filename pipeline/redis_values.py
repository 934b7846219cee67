"""Values read back from Redis, whichever way the client decodes responses."""

from __future__ import annotations


def as_text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
