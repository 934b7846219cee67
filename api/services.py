"""What the API's routes share within one process, built once per app from its settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis
import redis.asyncio as aioredis
from fastapi import Depends, Request

from api.auth import Verifier
from api.broadcast import Broadcaster
from api.status_watch import StatusWatch
from config import Settings
from pipeline.health import HealthBoard


@dataclass(frozen=True)
class Services:
    verifier: Verifier
    client: aioredis.Redis
    board: HealthBoard
    """Read in a thread (`asyncio.to_thread`): its client is the blocking one."""
    board_client: redis.Redis
    broadcaster: Broadcaster
    status: StatusWatch

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        client = aioredis.Redis.from_url(settings.require_redis_url(), health_check_interval=30)
        board_client = redis.Redis.from_url(settings.require_redis_url())
        board = HealthBoard.from_settings(board_client, settings)
        broadcaster = Broadcaster(client)
        return cls(
            verifier=Verifier(settings),
            client=client,
            board=board,
            board_client=board_client,
            broadcaster=broadcaster,
            status=StatusWatch(board, broadcaster),
        )

    async def close(self) -> None:
        await self.client.aclose()
        self.board_client.close()


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


Shared = Annotated[Services, Depends(services)]
