"""Beat end to end: one schedule even with two beats, fallback polling, Flower."""

from __future__ import annotations

import base64
import itertools
import threading
import time
from collections.abc import Iterator
from datetime import datetime
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
from tasks import names
from tests.pipeline_checks import coach_ids, mismatches

SMALL = seed.SeedPlan(coaches=3, clients_per_coach=3, sessions_per_client=3)


def beat(env: dict[str, str], log_dir: Path, name: str, **overrides: str) -> Proc:
    return Proc(
        name, celery_args("beat", "--loglevel=INFO"), {**env, **overrides}, log_dir / f"{name}.log"
    ).start()


def sent_refreshes(broker: redis.Redis) -> list[float]:
    """Send times of the scheduled secondary refreshes waiting in the `refresh` queue."""
    times = []
    for raw in broker.lrange(names.REFRESH_QUEUE, 0, -1):
        message = orjson.loads(raw)
        headers = message["headers"]
        if headers["task"] == names.REFRESH_ALL and headers.get("expires"):
            args = orjson.loads(base64.b64decode(message["body"]))[0]
            if args[1] == "schedule":
                times.append(datetime.fromisoformat(headers["expires"]).timestamp())
    return sorted(times)


def test_two_beats_send_each_scheduled_refresh_once(
    service_env: dict[str, str], tmp_path: Path, broker_url: str
) -> None:
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    interval = 2.0
    env = {**service_env, "SECONDARY_REFRESH_S": str(interval)}
    first, second = beat(env, tmp_path, "beat-1"), beat(env, tmp_path, "beat-2")
    with running(first, second):
        # Count from the moment one holds the lock: starting up takes seconds on a busy host.
        wait_for(lambda: "beat: Acquired lock" in first.output() + second.output(), 60,
                 interval=0.2, message="a beat to take the lock")  # fmt: skip
        time.sleep(11)
        sends = sent_refreshes(broker)
        assert 3 <= len(sends) <= 11 / interval + 1, sends
        gaps = [b - a for a, b in itertools.pairwise(sends)]
        assert min(gaps) > interval * 0.5, f"a slot was sent twice: {gaps}"
        holder = first if "beat: Starting" in first.output() and first.alive() else second
        standby = second if holder is first else first
        holder.kill()  # kill -9: the standby takes the Redis lock once it times out
        before = len(sent_refreshes(broker))
        wait_for(lambda: len(sent_refreshes(broker)) > before + 1, 40, interval=0.5,
                 message=f"standby beat to take over:\n{standby.output()[-2000:]}")  # fmt: skip


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
    raw = client.hget(keys.LAST_REFRESH, keys.LAST_REFRESH_FALLBACK)
    return float(raw) if raw else 0.0


def change_without_event(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE sessions SET status = 'cancelled' WHERE id = "
            "(SELECT id FROM sessions WHERE status <> 'cancelled' LIMIT 1)"
        )


def test_fallback_polling_runs_while_red_and_stops_when_green(
    database_url: str, redis_client: redis.Redis, redis_url: str, worker_and_beat: Any
) -> None:
    _, scheduler = worker_and_beat
    seed.load(database_url, SMALL)
    coaches = coach_ids(database_url)
    poll = 3.0  # FALLBACK_POLL_S of the test environment
    # No listener has ever reported: red. Critical aggregates are polled into shape.
    wait_for(lambda: not mismatches(database_url, redis_client, coaches), 2 * poll + 10,
             interval=0.5, message="first fallback refresh")  # fmt: skip
    change_without_event(database_url)
    changed_at = time.monotonic()
    wait_for(lambda: not mismatches(database_url, redis_client, coaches), 2 * poll + 10,
             interval=0.2, message="fallback refresh after a change")  # fmt: skip
    assert time.monotonic() - changed_at <= 2 * poll + 10
    heartbeat = Heartbeat(redis_url)
    heartbeat.start()
    try:
        wait_for(lambda: redis_client.get(keys.REALTIME_STATUS) == b"green", 10,
                 message="status to turn green")  # fmt: skip
        time.sleep(2)  # the one refresh after recovery
        last = fallback_runs(redis_client)
        time.sleep(3 * poll)
        assert fallback_runs(redis_client) == last, "polling went on while green"
    finally:
        heartbeat.stopped.set()
        heartbeat.join()
    assert (
        "Realtime connection lost. Using polling."
        in scheduler.output() + worker_and_beat[0].output()
    )


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
