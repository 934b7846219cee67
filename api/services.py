"""What the API's routes share within one process, built once per app from its settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.auth import Verifier
from api.broadcast import Broadcaster
from api.status_watch import StatusWatch
from config import Settings
from pipeline.health import HealthBoard
from pipeline.redis_client import AsyncRedisClient, RedisClient, connect, connect_async


@dataclass(frozen=True)
class Services:
    verifier: Verifier
    client: AsyncRedisClient
    board: HealthBoard
    """Read in a thread (`asyncio.to_thread`): its client is the blocking one."""
    board_client: RedisClient
    broadcaster: Broadcaster
    status: StatusWatch

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        client = connect_async(settings.require_redis_url(), health_check_interval=30)
        # bounded: a read stuck on a dead link would hold the status watch's thread, and on
        # 3.11 the loop's shutdown waits for its executor threads without a limit
        board_client = connect(
            settings.require_redis_url(), socket_timeout=5, socket_connect_timeout=5
        )
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
        self.board_client.close()  # first: closing the asyncio client may be cut short
        await self.client.aclose()


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


Shared = Annotated[Services, Depends(services)]
