"""The aggregate routes: stored values straight from Redis (never Postgres), with ETags."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Request

from api.access import Who, require_reader
from api.models import ERRORS, NOT_MODIFIED, CoachAggregatesOut, StoredAggregateOut
from api.responses import aggregate_body, coach_body, conditional_json, etag
from api.services import Shared
from pipeline import keys
from pipeline.aggregates import NAMES
from pipeline.read import stored_by_name
from pipeline.stored import HASH_FIELDS

router = APIRouter()
NOTHING_STORED = "nothing stored for this coach"


@router.get(
    "/coaches/{coach_id}/aggregates",
    response_model=CoachAggregatesOut,
    responses=ERRORS | NOT_MODIFIED,
)
async def all_aggregates(coach_id: UUID, request: Request, who: Who, svc: Shared) -> Any:
    require_reader(who, coach_id)
    pipe = svc.client.pipeline(transaction=False)
    for name in NAMES:
        pipe.hmget(keys.aggregate(name, coach_id), HASH_FIELDS)
    found = stored_by_name(coach_id, NAMES, await pipe.execute())
    if not found:
        raise HTTPException(404, NOTHING_STORED)
    body = coach_body(coach_id, found)
    return conditional_json(body, etag(found), request.headers.get("if-none-match"))


@router.get(
    "/coaches/{coach_id}/aggregates/{name}",
    response_model=StoredAggregateOut,
    responses=ERRORS | NOT_MODIFIED,
)
async def one_aggregate(coach_id: UUID, name: str, request: Request, who: Who, svc: Shared) -> Any:
    require_reader(who, coach_id)
    if name not in NAMES:
        raise HTTPException(404, f"unknown aggregate; known: {', '.join(NAMES)}")
    fields = await svc.client.hmget(keys.aggregate(name, coach_id), HASH_FIELDS)
    found = stored_by_name(coach_id, [name], [fields])
    if not found:
        raise HTTPException(404, NOTHING_STORED)
    body = aggregate_body(found[name])
    return conditional_json(body, etag(found), request.headers.get("if-none-match"))
