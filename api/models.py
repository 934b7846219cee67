"""The read API's response shapes and documented error answers (the OpenAPI schema)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field


class StoredAggregateOut(BaseModel):
    aggregate: str
    version: int
    computed_at: str
    as_of: str
    schema_version: int
    value: dict[str, Any]


class CoachAggregatesOut(BaseModel):
    coach_id: UUID
    aggregates: dict[str, StoredAggregateOut]


class ListenerOut(BaseModel):
    listener_id: str
    source: str
    state: str
    heartbeat_at: float
    last_event_at: float | None
    reconnect_attempts: int
    detail: str


class StatusOut(BaseModel):
    status: str = Field(description="green, yellow or red")
    reason: str
    listeners: list[ListenerOut] = Field(default_factory=list, description="admins only")


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing, expired, malformed or unverifiable token"},
    403: {"model": Problem, "description": "the token may not read this coach"},
}


NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified: the `If-None-Match` ETag is still current"},
    404: {"model": Problem, "description": "nothing stored (or no such aggregate)"},
    503: {"model": Problem, "description": "Redis does not answer"},
}
