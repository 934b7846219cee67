"""One Redis subscription per API process, fanned out to every SSE client in memory.

A thousand dashboards open on a hundred coaches cost one Redis connection, not a thousand:
the broadcaster pattern-subscribes to every coach's update channel and hands each notice to
the queues of the clients that watch that coach. Realtime status changes (`publish_status`)
go to every client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from pipeline import keys
from pipeline.redis_values import as_text

log = structlog.get_logger("api.broadcast")
QUEUE_SIZE = 256


@dataclass(frozen=True)
class Event:
    kind: str  # "update" or "status"
    data: str


class Broadcaster:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._watchers: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._prefix = keys.updates_channel("")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="broadcaster")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def subscribers(self) -> int:
        return sum(len(queues) for queues in self._watchers.values())

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(keys.UPDATES_PATTERN)
                async for message in pubsub.listen():
                    coach_id = as_text(message["channel"]).removeprefix(self._prefix)
                    self._deliver(coach_id, Event("update", as_text(message["data"])))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis restarted: resubscribe after a pause
                log.warning(
                    "broadcast_resubscribe", error_type=type(error).__name__, error=str(error)
                )
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _put(self, queue: asyncio.Queue[Event], event: Event) -> None:
        if queue.full():  # a stalled client: drop its oldest event, never block the others
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
        queue.put_nowait(event)

    def _deliver(self, coach_id: str, event: Event) -> None:
        for queue in self._watchers.get(coach_id, ()):
            self._put(queue, event)

    def publish_status(self, data: str) -> None:
        self._deliver_all(Event("status", data))

    def _deliver_all(self, event: Event) -> None:
        for queues in self._watchers.values():
            for queue in queues:
                self._put(queue, event)

    @contextlib.asynccontextmanager
    async def watch(self, coach_id: str) -> AsyncIterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._watchers[coach_id].add(queue)
        try:
            yield queue
        finally:
            self._watchers[coach_id].discard(queue)
            if not self._watchers[coach_id]:
                del self._watchers[coach_id]
