"""Beat end to end: one schedule even with two beats, fallback polling, Flower."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis

from coachpipe.embedded import free_port
from devtools.processes import Proc, celery_args, running, start_worker, wait_for
from pipeline import keys, seed
from pipeline.health import HealthBoard, ListenerHealth, ListenerState
from tests.pipeline_checks import coach_ids, mismatches

SMALL = seed.SeedPlan(coaches=3, clients_per_coach=3, sessions_per_client=3)


def beat(env: dict[str, str], log_dir: Path, name: str, **overrides: str) -> Proc:
    return Proc(
        name, celery_args("beat", "--loglevel=INFO"), {**env, **overrides}, log_dir / f"{name}.log"
    ).start()


def refresh_senders(broker: redis.Redis) -> list[str]:
    """Who sent each scheduled secondary refresh waiting in the `refresh` queue, in order: the
    message's `origin` header, `gen<pid>@<host>` of the sending beat."""
    senders = []
    for raw in reversed(broker.lrange("refresh", 0, -1)):  # LPUSHed: the oldest is last
        message = orjson.loads(raw)
        headers = message["headers"]
        if headers["task"] == "tasks.jobs.refresh_all" and headers.get("expires"):
            args = orjson.loads(base64.b64decode(message["body"]))[0]
            if args[1] == "schedule":
                senders.append(headers["origin"])
    return senders


def sent_by(proc: Proc, sender: str) -> bool:
    return sender.startswith(f"gen{proc.pid}@")


def test_two_beats_send_each_scheduled_refresh_once(
    service_env: dict[str, str], tmp_path: Path, broker_url: str
) -> None:
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    env = {**service_env, "SECONDARY_REFRESH_S": "2"}
    first, second = beat(env, tmp_path, "beat-1"), beat(env, tmp_path, "beat-2")
    with running(first, second):
        wait_for(lambda: len(refresh_senders(broker)) >= 4, 40, interval=0.5,
                 message="four scheduled refreshes")  # fmt: skip
        senders = refresh_senders(broker)
        # Both beats run the same schedule: had both sent, both would appear among the senders.
        holder = first if sent_by(first, senders[0]) else second
        standby = second if holder is first else first
        assert all(sent_by(holder, sender) for sender in senders), (senders, first.pid, second.pid)
        holder.kill()  # kill -9: the standby takes the Redis lock once it times out
        wait_for(lambda: any(sent_by(standby, s) for s in refresh_senders(broker)), 40,
                 interval=0.5, message=f"standby beat to take over:\n{standby.output()[-2000:]}")  # fmt: skip


@pytest.fixture
def worker_and_beat(
    service_env: dict[str, str], tmp_path: Path, broker_url: str
) -> Iterator[tuple[Proc, Proc]]:
    redis.Redis.from_url(broker_url).flushdb()
    worker = start_worker(service_env, tmp_path, broker_url=broker_url)
    scheduler = beat(service_env, tmp_path, "beat")
    with running(scheduler, worker):
        yield worker, scheduler


class Heartbeat(threading.Thread):
    """A listener that is connected, as far as Redis can tell (its heartbeat is the input)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.board = HealthBoard(redis.Redis.from_url(url), stale_after_s=3)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.board.report(
                ListenerHealth("test-listener", "postgres", ListenerState.CONNECTED, time.time())
            )
            self.stopped.wait(0.5)


def fallback_runs(client: redis.Redis) -> float:
    raw = client.hget(keys.LAST_REFRESH, "fallback")
    return float(raw) if raw else 0.0


def logged(proc: Proc, text: str) -> int:
    return proc.output().count(text)


# The worker's log line of a fallback poll that found realtime green (Celery logs task results).
GREEN_POLL = "{'status': 'green', 'polled': False}"


def change_without_event(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE sessions SET status = 'cancelled' WHERE id = "
            "(SELECT id FROM sessions WHERE status <> 'cancelled' LIMIT 1)"
        )


def test_fallback_polling_runs_while_red_and_stops_when_green(
    database_url: str, redis_client: redis.Redis, redis_url: str, worker_and_beat: Any
) -> None:
    worker, scheduler = worker_and_beat
    seed.load(database_url, SMALL)
    coaches = coach_ids(database_url)
    poll = 3.0  # FALLBACK_POLL_S of the test environment
    # No listener has ever reported: red. Critical aggregates are polled into shape.
    wait_for(lambda: not mismatches(database_url, redis_client, coaches), 2 * poll + 10,
             interval=0.5, message="first fallback refresh")  # fmt: skip
    change_without_event(database_url)
    wait_for(lambda: not mismatches(database_url, redis_client, coaches), 2 * poll + 10,
             interval=0.2, message="fallback refresh after a change")  # fmt: skip
    heartbeat = Heartbeat(redis_url)
    heartbeat.start()
    try:
        wait_for(lambda: redis_client.get(keys.REALTIME_STATUS) == b"green", 10,
                 message="status to turn green")  # fmt: skip
        # The one refresh after recovery (its stamp is written before it is logged)...
        wait_for(lambda: logged(worker, "reason=recovered"), 10, message="the refresh on recovery")
        last = fallback_runs(redis_client)
        # ...then beat's fallback poll runs on schedule and, green, polls nothing.
        idle_polls = logged(worker, GREEN_POLL)
        wait_for(lambda: logged(worker, GREEN_POLL) >= idle_polls + 2, 4 * poll + 10,
                 interval=0.2, message=f"two fallback polls while green:\n{worker.output()[-2000:]}")  # fmt: skip
        assert fallback_runs(redis_client) == last, "polling went on while green"
    finally:
        heartbeat.stopped.set()
        heartbeat.join()
    assert "Realtime connection lost. Using polling." in scheduler.output() + worker.output()


def test_flower_lists_the_running_worker_behind_basic_auth(
    service_env: dict[str, str], tmp_path: Path, broker_url: str
) -> None:
    worker = start_worker(service_env, tmp_path, broker_url=broker_url)
    port = free_port()
    flower = Proc(
        "flower",
        celery_args("flower", f"--port={port}", "--address=127.0.0.1", "--basic-auth=ops:s3cret"),
        service_env,
        tmp_path / "flower.log",
    ).start()
    with running(flower, worker):
        url = f"http://127.0.0.1:{port}/api/workers?refresh=1"

        def listed() -> bool:
            try:
                response = httpx.get(url, auth=("ops", "s3cret"), timeout=5)
            except httpx.HTTPError:
                return False
            return response.status_code == 200 and worker.node in response.json()  # type: ignore[attr-defined]

        wait_for(
            listed,
            40,
            interval=0.5,
            message=f"flower to list the worker:\n{flower.output()[-2000:]}",
        )
        assert httpx.get(url, timeout=5).status_code == 401
