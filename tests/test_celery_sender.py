"""The scheduler's Celery sender: tasks sent by name land on the queues their names route to."""

from __future__ import annotations

import base64

import orjson
import redis


def queued(broker: redis.Redis, queue: str) -> list[tuple[str, list[object], str | None]]:
    """(task name, args, eta) of each message waiting in `queue`."""
    messages = []
    for raw in broker.lrange(queue, 0, -1):
        message = orjson.loads(raw)
        args = orjson.loads(base64.b64decode(message["body"]))[0]
        messages.append((message["headers"]["task"], args, message["headers"].get("eta")))
    return messages


def test_drains_go_to_the_realtime_queue_and_wide_refreshes_to_the_refresh_queue(
    pipeline_env: dict[str, str], broker_url: str
) -> None:
    from tasks import app
    from tasks.producer import CeleryTaskSender

    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    sender = CeleryTaskSender(app)
    sender.send_drain(3, 0.0)
    sender.send_drain(1, 0.5)
    sender.send_wide_refresh("coach-trends", "catch-up")

    realtime = sorted(queued(broker, "realtime"), key=lambda message: str(message[1]))
    assert [(name, args) for name, args, _ in realtime] == [
        ("tasks.jobs.drain", [1]),
        ("tasks.jobs.drain", [3]),
    ]
    assert realtime[0][2] is not None  # a countdown: the worker holds it until due
    assert realtime[1][2] is None  # due at once
    assert [(name, args) for name, args, _ in queued(broker, "refresh")] == [
        ("tasks.jobs.refresh_all", ["coach-trends", "catch-up"])
    ]
