"""Supabase Realtime `postgres_changes` payloads → `ChangeEvent`s, validated.

The client library passes frames for unknown tables, rows without or with wrongly typed
`coach_id` and server `errors` straight to the callback; everything is checked here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pipeline.errors import BadEventError
from pipeline.events import ChangeEvent, ChangeType, change_type, watched_table

SOURCE = "supabase"
_ERROR_CODE = re.compile(r"Error (\d{3})")


def server_error(errors: object) -> str | None:
    """A stable label for a change's `errors` (None when it has none): `server_error_413` for
    "Error 413: Payload Too Large", `server_error_401` for "Error 401: Unauthorized", and
    `server_error` for anything without a code."""
    if not errors:
        return None
    text = " ".join(map(str, errors)) if isinstance(errors, list) else str(errors)
    match = _ERROR_CODE.search(text)
    return f"server_error_{match.group(1)}" if match else "server_error"


def _record(data: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise BadEventError(
            "malformed_payload", f"{key} is a {type(value).__name__}, not an object"
        )
    return value


def _commit_ts(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def parse_change(payload: object) -> tuple[ChangeEvent, str | None]:
    """(event, warning): the warning labels a usable but degraded payload (e.g. truncated).

    Raises `BadEventError` for a payload that cannot be used at all.
    """
    data = payload.get("data") if isinstance(payload, Mapping) else None
    if not isinstance(data, Mapping):
        raise BadEventError("malformed_payload", "postgres_changes payload without a data object")
    table = watched_table(data.get("schema"), data.get("table"))
    kind = change_type(data.get("type"))
    if kind is ChangeType.TRUNCATE:
        raise BadEventError("unknown_type", "Realtime never sends TRUNCATE", table)
    # e.g. "Error 413: Payload Too Large": values over 64 bytes were dropped, and the coach id
    # (36 bytes) survives; "Error 401: Unauthorized" comes with an empty record. Whatever is
    # missing routes to a wide refresh of the table's aggregates.
    warning = server_error(data.get("errors"))
    event = ChangeEvent(
        table=table,
        type=kind,
        new=_record(data, "record"),
        old=_record(data, "old_record"),
        commit_ts=_commit_ts(data.get("commit_timestamp")),
        position=None,
        source=SOURCE,
    )
    return event, warning
