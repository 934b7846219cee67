"""The bench's view of the Celery broker's queues, on Redis or RabbitMQ: depth and purge.

The bench purges queues between sub-runs and waits for them to empty; how depends on the
transport. Redis: each queue is a list (plus priority lists `queue…`), and a delivered
`acks_late` task waits in the `unacked` hash until its worker acks it. RabbitMQ: a passive
declare returns a queue's ready messages; countdowns wait in Celery's `celery_delayed_0..27`
queues (native delayed delivery); deliveries in flight are not countable over AMQP, so a
running drain shows through the scheduler's claims in Redis instead (`Stack.idle`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import redis
from amqp.exceptions import NotFound
from kombu.connection import Connection

from devtools.processes import wait_for
from tasks.names import QUEUES, is_amqp

DELAYED_QUEUES = tuple(f"celery_delayed_{level}" for level in range(28))


class BrokerQueues:
    """Depth and purge of the pipeline's queues on the broker at `url`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.amqp = is_amqp(url)
        self._redis = None if self.amqp else redis.Redis.from_url(url)

    def flush(self) -> None:
        """Empty a Redis broker database before a stack's first run (a new vhost is empty)."""
        if self._redis is not None:
            self._redis.flushdb()

    def ping(self) -> None:
        """Make a Redis broker's pool drop a connection that a server restart cut (RabbitMQ:
        nothing to do, every call opens its own connection)."""
        if self._redis is not None:
            self._redis.ping()

    def queued(self) -> int:
        """Messages waiting: in the queues, and on RabbitMQ in the delay queues too."""
        if self._redis is not None:
            return sum(int(self._redis.llen(queue)) for queue in QUEUES)
        return sum(self._on_each_queue(lambda channel, queue: channel.queue_declare(
            queue, passive=True).message_count))  # fmt: skip

    def unacked(self) -> int:
        """Deliveries a worker holds (Redis only; 0 on RabbitMQ, see the module)."""
        return int(self._redis.hlen("unacked")) if self._redis is not None else 0

    def purge(self) -> bool:
        """Drop every waiting message; True once nothing is held unacknowledged either
        (within 30 s), False if a busy worker still holds some."""
        if self._redis is None:
            self._on_each_queue(lambda channel, queue: channel.queue_purge(queue))
            return True
        queued = [key for queue in QUEUES for key in self._redis.scan_iter(f"{queue}*")]
        if queued:
            self._redis.delete(*queued)
        try:  # acks_late: a task the worker holds or runs stays in `unacked` until it is done
            wait_for(lambda: self.unacked() == 0, 30, interval=0.05)
            idle = True
        except AssertionError:
            idle = False
        self._redis.delete("unacked", "unacked_index")
        return idle

    def _on_each_queue(self, call: Callable[[Any, str], Any]) -> list[int]:
        """`call(channel, queue)` for each queue that exists, on a channel of its own (a
        queue not declared yet fails with 404, which closes its channel)."""
        results = []
        with Connection(self.url) as conn:  # type: ignore[no-untyped-call]
            for queue in (*QUEUES, *DELAYED_QUEUES):
                channel = conn.channel()
                try:
                    results.append(int(call(channel, queue) or 0))
                except NotFound:
                    continue
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()
        return results
