"""A worker serving both queues on the Redis broker takes waiting realtime drains first."""

from __future__ import annotations

from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue

from config import load_settings
from tasks.celery import redis_transport_options
from tasks.names import QUEUES, REALTIME_QUEUE, REFRESH_QUEUE


def test_waiting_drains_are_taken_before_waiting_bulk_work(redis_url: str) -> None:
    """Two drains wait behind five refresh batches. kombu's default order (`round_robin`)
    rotates the queue it just took from to the end, so the second drain would wait for a
    refresh batch; with our transport options both drains come first. The queues are
    declared bulk first, as a set would have them in any order."""
    settings = load_settings(_env_file=None, redis_url=redis_url)
    options = redis_transport_options(settings)
    queues = [Queue(name, Exchange(name), routing_key=name) for name in sorted(QUEUES)[::-1]]
    taken: list[str] = []

    def take(body: Any, message: Any) -> None:
        taken.append(body["queue"])
        message.ack()

    with Connection(redis_url, transport_options=options) as connection:
        channel = connection.channel()
        producer = Producer(channel)
        for queue in queues:
            queue(channel).declare()
        for name in [REFRESH_QUEUE] * 5 + [REALTIME_QUEUE] * 2:
            producer.publish({"queue": name}, exchange=name, routing_key=name, serializer="json")
        with Consumer(channel, queues, callbacks=[take], prefetch_count=1):
            while len(taken) < 7:
                connection.drain_events(timeout=5)
    assert taken == [REALTIME_QUEUE] * 2 + [REFRESH_QUEUE] * 5
