"""Response shaping, free of I/O: aggregate bodies, ETags and conditional requests, status."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import orjson
from fastapi import Response

from pipeline.health import RealtimeStatus
from pipeline.stored import StoredAggregate


def aggregate_body(stored: StoredAggregate) -> dict[str, Any]:
    """One aggregate as the API sends it; the value is spliced in as stored, never re-encoded."""
    return {
        "aggregate": stored.aggregate,
        "version": stored.version,
        "computed_at": stored.computed_at.isoformat(),
        "as_of": stored.as_of.isoformat(),
        "schema_version": stored.schema_version,
        "value": orjson.Fragment(stored.value_json),
    }


def coach_body(coach_id: UUID, found: Mapping[str, StoredAggregate]) -> dict[str, Any]:
    return {
        "coach_id": str(coach_id),
        "aggregates": {name: aggregate_body(stored) for name, stored in found.items()},
    }


def etag(found: Mapping[str, StoredAggregate]) -> str:
    """A strong ETag that changes whenever any of these aggregates gets a new version."""
    parts = "|".join(f"{name}:{stored.version}" for name, stored in found.items())
    return '"' + hashlib.blake2s(parts.encode(), digest_size=12).hexdigest() + '"'


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 weak comparison: `W/` prefixes are ignored, `*` matches any stored value."""
    sent = {t.strip().removeprefix("W/") for t in (if_none_match or "").split(",")}
    return tag in sent or "*" in sent


def conditional_json(body: Any, tag: str, if_none_match: str | None) -> Response:
    """304 when the client holds `tag` already, else `body` as JSON carrying `tag`."""
    if not_modified(if_none_match, tag):
        return Response(status_code=304, headers={"ETag": tag})
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={"ETag": tag, "Cache-Control": "private, no-cache"},
    )


def status_event(status: RealtimeStatus) -> str:
    """The data of an SSE `status` event."""
    return orjson.dumps({"status": status.color.value, "reason": status.reason}).decode()


def status_body(status: RealtimeStatus, *, admin: bool) -> dict[str, object]:
    """`/status`: listener details are for admins only."""
    body = status.as_json()
    if not admin:
        body["listeners"] = []
    return body
