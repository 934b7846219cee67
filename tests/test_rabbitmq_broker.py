"""RabbitMQ as the broker: quorum queues, publisher confirms, countdowns kept by the broker.

The end-to-end path itself runs on RabbitMQ through the `stacks` tests (`tests/stacks.py`).
"""

from __future__ import annotations

from pathlib import Path

import kombu
import pytest
from celery import Celery
from pydantic import SecretStr

from config import Settings
from devtools.processes import Proc, wait_for
from tasks import names
from tasks.celery import celery_config
from tasks.pipeline_app import PipelineApp
from tasks.producer import CeleryTaskSender
from tests.stacks import STACKS, Stack

RABBITMQ = next(each for each in STACKS if each.broker == "rabbitmq")
DELAYED_LEVELS = range(28)
"""Celery's native delayed delivery queues `celery_delayed_0..27` (kombu 5.5+)."""


@pytest.mark.parametrize(
    ("broker", "countdown_s", "expected"),
    [
        ("redis://127.0.0.1:6379/1", 0.0, set()),
        ("redis://127.0.0.1:6379/1", -1.0, set()),
        ("redis://127.0.0.1:6379/1", 0.05, {"countdown"}),
        ("redis://127.0.0.1:6379/1", 5.0, {"countdown"}),
        ("amqp://guest:guest@127.0.0.1:5672//", 0.0, set()),
        ("amqp://guest:guest@127.0.0.1:5672//", 0.05, {"headers"}),
        ("amqp://guest:guest@127.0.0.1:5672//", 0.999, {"headers"}),
        ("amqp://guest:guest@127.0.0.1:5672//", 1.0, {"countdown"}),
        ("amqps://guest:guest@example.org//", 2.5, {"countdown"}),
        ("pyamqp://guest:guest@127.0.0.1:5672//", 0.5, {"headers"}),
    ],
)
def test_countdowns_under_a_second_on_rabbitmq_go_as_an_eta_header(
    broker: str, countdown_s: float, expected: set[str]
) -> None:
    app = Celery(broker=broker)
    options = CeleryTaskSender(app).delay(countdown_s)
    assert set(options) == expected
    if "headers" in options:
        assert set(options["headers"]) == {"eta"}


def test_rabbitmq_queues_are_quorum_queues_on_topic_exchanges_with_confirms(
    settings: Settings,
) -> None:
    amqp = celery_config(settings.model_copy(update={"broker_url": SecretStr("amqp://h//")}))
    queues = {queue.name: queue for queue in amqp["task_queues"]}
    assert set(queues) == set(names.QUEUES)
    for name, queue in queues.items():
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (
            name,
            "topic",
            name,
        )
    assert amqp["broker_transport_options"] == {"confirm_publish": True}
    assert amqp["task_acks_late"] is True
    redis_config = celery_config(settings)
    assert "task_queues" not in redis_config
    assert "visibility_timeout" in redis_config["broker_transport_options"]


def delayed_messages(broker_url: str) -> int:
    """Messages waiting in the native delayed delivery queues."""
    total = 0
    with kombu.Connection(broker_url) as conn:
        channel = conn.channel()
        for level in DELAYED_LEVELS:
            total += channel.queue_declare(
                queue=f"celery_delayed_{level}", passive=True
            ).message_count
        channel.close()
    return total


def declare_as_quorum(broker_url: str, queue: str) -> None:
    """RabbitMQ refuses (406 PRECONDITION_FAILED) to redeclare a queue with another type."""
    with kombu.Connection(broker_url) as conn:
        channel = conn.channel()
        kombu.Queue(queue, queue_arguments={"x-queue-type": "quorum"}).bind(channel).declare()
        channel.close()


@pytest.mark.parametrize("stack", [RABBITMQ], ids=[RABBITMQ.id], indirect=True)
def test_a_countdown_waits_in_rabbitmq_not_in_the_worker(
    stack: Stack, broker_url: str, worker: Proc, pipeline_app: PipelineApp, tmp_path: Path
) -> None:
    for queue in names.QUEUES:
        declare_as_quorum(broker_url, queue)
    sender = pipeline_app.sender
    inspector = pipeline_app.control.inspect(destination=[worker.node], timeout=2)  # type: ignore[attr-defined]

    def drains_run() -> int:
        stats = inspector.stats() or {}
        return int(stats.get(worker.node, {}).get("total", {}).get(names.DRAIN, 0))

    pipeline_app.send_task(names.DRAIN, ("coach-stats",), **sender.delay(0.3))
    pipeline_app.send_task(names.DRAIN, ("coach-stats",), **sender.delay(3.0))
    # The 3 s drain waits in the broker's delay queues; the worker holds nothing for it.
    assert delayed_messages(broker_url) == 1
    wait_for(lambda: drains_run() == 1, 20, interval=0.2, message="the 0.3 s drain to run")
    scheduled = inspector.scheduled() or {}
    assert all(not tasks for tasks in scheduled.values()), scheduled
    wait_for(lambda: drains_run() == 2, 30, interval=0.2, message="the 3 s drain to run")
    assert delayed_messages(broker_url) == 0
