"""Change events, independent of the source that saw them.

A Supabase Realtime frame and a row decoded from the replication slot both end up as a
`ChangeEvent`; everything downstream (routing, dedup, metrics) only knows this shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pipeline.errors import BadEventError
from pipeline.tables import WATCHED_TABLES


class ChangeType(StrEnum):
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    TRUNCATE = "TRUNCATE"


Record = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    table: str
    type: ChangeType
    new: Record | None
    old: Record | None
    commit_ts: datetime | None
    position: str | None = None
    source: str = ""

    def commit_ms(self) -> int | None:
        return None if self.commit_ts is None else int(self.commit_ts.timestamp() * 1000)


def change_type(value: object) -> ChangeType:
    """`insert`, `Insert` and `INSERT` are the same change; anything else is bad input."""
    if not isinstance(value, str):
        raise BadEventError(
            "unknown_type", f"event type must be a string, got {type(value).__name__}"
        )
    try:
        return ChangeType(value.upper())
    except ValueError:
        raise BadEventError("unknown_type", f"unknown event type {value[:40]!r}") from None


def watched_table(schema: object, table: object) -> str:
    if schema != "public" or table not in WATCHED_TABLES:
        raise BadEventError(
            "unknown_table", f"change for an unwatched table {str(schema)[:40]}.{str(table)[:60]}"
        )
    return str(table)
