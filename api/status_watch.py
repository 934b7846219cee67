"""The realtime status as the API last saw it, and the loop that tells streams it changed."""

from __future__ import annotations

import asyncio

import structlog

from api.broadcast import Broadcaster
from api.responses import status_event
from pipeline.health import HealthBoard, RealtimeStatus

STATUS_POLL_S = 1.0
log = structlog.get_logger("api")


def color_changed(previous: RealtimeStatus | None, current: RealtimeStatus) -> bool:
    """Streams hear of the first status and of every change of color, not of each poll."""
    return previous is None or current.color != previous.color


class StatusWatch:
    def __init__(self, board: HealthBoard, broadcaster: Broadcaster) -> None:
        self._board = board
        self._broadcaster = broadcaster
        self.latest: RealtimeStatus | None = None

    async def poll(self) -> None:
        try:
            status = await asyncio.to_thread(self._board.status)
        except Exception as error:  # Redis away: keep the last known status, try again
            log.warning("status_poll_failed", error_type=type(error).__name__)
            return
        previous, self.latest = self.latest, status
        if color_changed(previous, status):
            self._broadcaster.publish_status(status_event(status))

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(STATUS_POLL_S)
