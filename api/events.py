"""Live updates of one coach over Server-Sent Events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

from fastapi import APIRouter
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.access import Who, require_reader
from api.models import ERRORS
from api.responses import status_event
from api.services import Services, Shared

KEEPALIVE_S = 15
SEND_TIMEOUT_S = 30
router = APIRouter()


@router.get("/coaches/{coach_id}/events", responses=ERRORS, response_class=EventSourceResponse)
async def events(coach_id: UUID, who: Who, svc: Shared) -> EventSourceResponse:
    """Server-Sent Events: `update` (a stored write of this coach) and `status` changes."""
    require_reader(who, coach_id)
    return EventSourceResponse(
        _stream(svc, str(coach_id)), ping=KEEPALIVE_S, send_timeout=SEND_TIMEOUT_S
    )


async def _stream(svc: Services, coach_id: str) -> AsyncIterator[ServerSentEvent]:
    """The last known status first, so a new dashboard need not wait for a change."""
    async with svc.broadcaster.watch(coach_id) as queue:
        if svc.status.latest is not None:
            yield ServerSentEvent(status_event(svc.status.latest), event="status")
        while True:
            event = await queue.get()
            yield ServerSentEvent(event.data, event=event.kind)
