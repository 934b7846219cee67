"""One Redis subscription per API process, fanned out to every SSE client in memory.

A thousand dashboards open on a hundred coaches cost one Redis connection, not a thousand:
the broadcaster pattern-subscribes to every coach's update channel and hands each notice to
the queues of the clients that watch that coach. Realtime status changes (`publish_status`)
go to every client.

On a Redis Cluster the notices are sharded (`SPUBLISH` to the coach's shard channel, carried
only by the nodes of the coach's slot), and shard channels take no patterns: the broadcaster
then `SSUBSCRIBE`s to the channels of the coaches that have a dashboard open in this process
(one connection per node that holds one of them), and drops a channel when its last
dashboard closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from redis.asyncio.cluster import ClusterPubSub, RedisCluster

from pipeline import keys
from pipeline.cancellation import cancel_and_wait
from pipeline.redis_client import AsyncRedisClient, is_cluster
from pipeline.redis_values import as_text

log = structlog.get_logger("api.broadcast")
QUEUE_SIZE = 256
SHARD_POLL_S = 0.01
"""How long a Cluster reader waits on one node's connection before looking at the next: a
notice waits at most this times the number of nodes with a subscription, in a loop that wakes
1 / SHARD_POLL_S times a second."""


@dataclass(frozen=True)
class Event:
    kind: str  # "update" or "status"
    data: str


class Broadcaster:
    def __init__(self, client: AsyncRedisClient) -> None:
        self._redis = client
        self._watchers: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._sharded = is_cluster(client)
        self._shards: ClusterPubSub | None = None
        """The Cluster reader's subscriptions while it runs."""
        self._rebuild = asyncio.Event()
        """Set when a subscription could not be changed: the reader starts afresh."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="broadcaster")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    @property
    def subscribers(self) -> int:
        return sum(len(queues) for queues in self._watchers.values())

    async def _run(self) -> None:
        while True:
            try:
                if isinstance(self._redis, RedisCluster):
                    await self._redis.initialize()  # the slot map ClusterPubSub routes by
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            except Exception as error:
                log.warning("broadcast_unavailable", error_type=type(error).__name__)
                await asyncio.sleep(1)
                continue
            try:
                if isinstance(pubsub, ClusterPubSub):
                    await self._read_shards(pubsub)
                else:
                    await pubsub.psubscribe(keys.UPDATES_PATTERN)
                    async for message in pubsub.listen():
                        self._relay(message)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis restarted, a node failed over: resubscribe
                log.warning(
                    "broadcast_resubscribe", error_type=type(error).__name__, error=str(error)
                )
                await asyncio.sleep(1)
            finally:
                self._shards = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _read_shards(self, pubsub: ClusterPubSub) -> None:
        """Subscribe to the watched coaches' shard channels, then relay until told to rebuild."""
        self._rebuild.clear()
        if self._watchers:
            await pubsub.ssubscribe(*(keys.updates_channel(coach) for coach in self._watchers))
        self._shards = pubsub
        while not self._rebuild.is_set():
            if not pubsub.shard_channels:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that lands as the wait ends (CPython gh-86296), and this loop would go on.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SHARD_POLL_S * 10):
                        await self._rebuild.wait()
                continue
            message = await pubsub.get_sharded_message(
                ignore_subscribe_messages=True, timeout=SHARD_POLL_S
            )
            if message is not None:
                self._relay(message)

    def _relay(self, message: dict[str, object]) -> None:
        coach_id = keys.coach_of_updates_channel(as_text(message["channel"]))
        self._deliver(coach_id, Event("update", as_text(message["data"])))

    async def _follow(self, coach_id: str, watched: bool) -> None:
        """Cluster only: subscribe to a coach's shard channel, or drop it."""
        if self._shards is None:
            return  # the reader subscribes to every watched coach when it (re)starts
        channel = keys.updates_channel(coach_id)
        try:
            if watched:
                await self._shards.ssubscribe(channel)
            else:
                await self._shards.sunsubscribe(channel)
        except Exception as error:
            log.warning("broadcast_subscribe_failed", error_type=type(error).__name__)
            self._rebuild.set()

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
        first = coach_id not in self._watchers
        self._watchers[coach_id].add(queue)
        if first and self._sharded:
            await self._follow(coach_id, watched=True)
        try:
            yield queue
        finally:
            self._watchers[coach_id].discard(queue)
            if not self._watchers[coach_id]:
                del self._watchers[coach_id]
                if self._sharded:
                    await self._follow(coach_id, watched=False)
