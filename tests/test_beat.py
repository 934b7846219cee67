"""Beat end to end: one schedule with two beats, across Redis restarts, pauses and a kill -9;
fallback polling; Flower."""

from __future__ import annotations

import base64
import itertools
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis

from coachpipe.embedded import PrivateRedis, free_port
from devtools.processes import Proc, celery_args, running, start_beat, start_worker, wait_for
from pipeline import keys, seed
from pipeline.health import HealthBoard, ListenerHealth, ListenerState
from tests.pipeline_checks import coach_ids, mismatches

SMALL = seed.SeedPlan(coaches=3, clients_per_coach=3, sessions_per_client=3)


Sends = dict[str, list[float]]
Schedule = dict[str, dict[str, Any]]


def sent(broker: redis.Redis, schedule: Schedule) -> Sends:
    """Send times of the scheduled tasks waiting in the `refresh` queue, by schedule entry.

    Beat stamps each with `expires` = sent + 0.9 x interval (tasks.schedule), so the send time
    is known without a worker or a clock in the message.
    """
    entries = {
        (entry["task"], tuple(entry["args"])): (name, float(entry["schedule"]))
        for name, entry in schedule.items()
    }
    times: Sends = defaultdict(list)
    for raw in broker.lrange("refresh", 0, -1):
        message = orjson.loads(raw)
        headers = message["headers"]
        args = tuple(orjson.loads(base64.b64decode(message["body"]))[0])
        known = entries.get((headers["task"], args))
        if known and headers.get("expires"):
            name, every = known
            expires = datetime.fromisoformat(headers["expires"]).timestamp()
            times[name].append(expires - 0.9 * every)
    return {name: sorted(moments) for name, moments in times.items()}


def sent_after(broker: redis.Redis, schedule: Schedule, moment: float) -> Sends:
    return {
        name: later
        for name, moments in sent(broker, schedule).items()
        if (later := [m for m in moments if m > moment])
    }


def assert_each_sent_once_per_interval(sends: Sends, schedule: Schedule) -> None:
    every = {name: float(entry["schedule"]) for name, entry in schedule.items()}
    for name, moments in sends.items():
        gaps = [b - a for a, b in itertools.pairwise(moments)]
        assert all(gap > every[name] * 0.5 for gap in gaps), f"{name} sent twice: {gaps}"


def lock_holders(*beats: Proc) -> list[Proc]:
    """Beats whose last word about the lock is that they took it."""
    holders = []
    for proc in beats:
        events = re.findall(r"beat_lock_(taken|lost|released)", proc.output())
        if proc.alive() and events and events[-1] == "taken":
            holders.append(proc)
    return holders


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of this test alone, which it restarts on the same port (without persistence:
    a restart loses the lock and the schedule, the worst case)."""
    server = PrivateRedis(tmp_path / "own-redis", durable=False).start()
    yield server
    server.destroy()


def restart(server: PrivateRedis) -> float:
    """Stop and start `server` on its port; returns when it answers again."""
    server.stop()
    server.start()
    return time.time()


def test_two_beats_send_each_scheduled_task_once_across_a_redis_restart(
    service_env: dict[str, str],
    schedule: Schedule,
    tmp_path: Path,
    broker_url: str,
    own_redis: PrivateRedis,
) -> None:
    # The lock and the schedule live in the Redis that restarts; the broker stays up and keeps
    # every send, so doubles across the restart would show.
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    env = {**service_env, "REDIS_URL": own_redis.url}
    first, second = start_beat(env, tmp_path, "beat-1"), start_beat(env, tmp_path, "beat-2")
    with running(first, second):
        wait_for(lambda: len(sent(broker, schedule).get("clock-coach-stats", [])) >= 2, 30,
                 interval=0.2, message="the first scheduled sends")  # fmt: skip
        assert len(lock_holders(first, second)) == 1
        up = restart(own_redis)
        wait_for(lambda: len(sent_after(broker, schedule, up).get("clock-coach-stats", [])) >= 3,
                 30, interval=0.2, message="sends after the restart")  # fmt: skip
        downtime = min(min(moments) for moments in sent_after(broker, schedule, up).values())
        print(f"two beats: first send {downtime - up:.2f} s after Redis answered again")
        assert first.alive() and second.alive(), first.output()[-3000:] + second.output()[-3000:]
        assert len(lock_holders(first, second)) == 1
        assert_each_sent_once_per_interval(sent(broker, schedule), schedule)


def test_a_standby_beat_takes_over_when_the_active_one_is_killed(
    service_env: dict[str, str], schedule: Schedule, tmp_path: Path, broker_url: str
) -> None:
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    first, second = (
        start_beat(service_env, tmp_path, "beat-1"),
        start_beat(service_env, tmp_path, "beat-2"),
    )
    with running(first, second):
        holders = wait_for(lambda: lock_holders(first, second), 30, interval=0.2,
                           message="a beat to take the lock")  # fmt: skip
        wait_for(lambda: sent(broker, schedule), 30, interval=0.2, message="a first send")
        [holder] = holders
        standby = second if holder is first else first
        holder.kill()
        killed = time.time()
        sends = wait_for(lambda: sent_after(broker, schedule, killed), 10, interval=0.1,
                         message=f"standby to send:\n{standby.output()[-2000:]}")  # fmt: skip
        print(f"standby took over: first send {min(map(min, sends.values())) - killed:.2f} s "
              "after the SIGKILL")  # fmt: skip
        assert lock_holders(standby) == [standby]
        assert_each_sent_once_per_interval(sent(broker, schedule), schedule)


def test_beat_schedules_again_after_its_redis_restarts(
    service_env: dict[str, str], schedule: Schedule, tmp_path: Path, own_redis: PrivateRedis
) -> None:
    # Lock, schedule and broker all in the Redis that restarts, as in a one-Redis deployment.
    env = {**service_env, "REDIS_URL": own_redis.url, "BROKER_URL": own_redis.url[:-1] + "1"}
    broker = redis.Redis.from_url(env["BROKER_URL"])
    scheduler = start_beat(env, tmp_path, "beat")
    with running(scheduler):
        wait_for(lambda: sent(broker, schedule), 30, interval=0.2, message="a first send")
        stopped = time.time()
        up = restart(own_redis)
        sends = wait_for(lambda: sent_after(broker, schedule, up), 30, interval=0.1,
                         message=f"sends after the restart:\n{scheduler.output()[-3000:]}")  # fmt: skip
        first = min(map(min, sends.values()))
        print(f"one beat: no send for {first - stopped:.2f} s, {first - up:.2f} s after Redis "
              "answered again")  # fmt: skip
        assert scheduler.alive()
        assert scheduler.output().count("beat_lock_taken") == 2, "the lock was not taken again"


def test_beat_schedules_again_after_its_redis_pauses_for_20s(
    service_env: dict[str, str], schedule: Schedule, tmp_path: Path, own_redis: PrivateRedis
) -> None:
    env = {**service_env, "REDIS_URL": own_redis.url, "BROKER_URL": own_redis.url[:-1] + "1"}
    broker = redis.Redis.from_url(env["BROKER_URL"])
    first, second = start_beat(env, tmp_path, "beat-1"), start_beat(env, tmp_path, "beat-2")
    with running(first, second):
        wait_for(lambda: sent(broker, schedule), 30, interval=0.2, message="a first send")
        broker.execute_command("CLIENT", "PAUSE", "20000", "ALL")
        probe = redis.Redis(port=own_redis.port, socket_timeout=0.5)
        wait_for(lambda: _answers(probe), 40, interval=0.5, message="the pause to end")
        resumed = time.time()
        wait_for(lambda: len(sent_after(broker, schedule, resumed).get("realtime-status", [])) >= 3,
                 30, interval=0.2, message="sends after the pause")  # fmt: skip
        again = min(map(min, sent_after(broker, schedule, resumed).values()))
        print(f"paused: first send {again - resumed:.2f} s after Redis answered again")
        assert first.alive() and second.alive()
        assert len(lock_holders(first, second)) == 1
        assert_each_sent_once_per_interval(sent(broker, schedule), schedule)


def test_beat_started_while_its_redis_is_down_waits_for_it(
    service_env: dict[str, str], schedule: Schedule, tmp_path: Path, own_redis: PrivateRedis
) -> None:
    env = {**service_env, "REDIS_URL": own_redis.url}
    broker = redis.Redis.from_url(env["BROKER_URL"])
    broker.flushdb()
    own_redis.stop()
    scheduler = start_beat(env, tmp_path, "beat")
    with running(scheduler):
        wait_for(lambda: "beat_redis_unavailable" in scheduler.output(), 30, interval=0.2,
                 message=f"beat to find Redis down:\n{scheduler.output()[-3000:]}")  # fmt: skip
        own_redis.start()
        wait_for(lambda: sent(broker, schedule), 30, interval=0.2,
                 message=f"a first send:\n{scheduler.output()[-3000:]}")  # fmt: skip
        assert scheduler.alive()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def worker_and_beat(
    service_env: dict[str, str], tmp_path: Path, broker_url: str
) -> Iterator[tuple[Proc, Proc]]:
    redis.Redis.from_url(broker_url).flushdb()
    worker = start_worker(service_env, tmp_path, broker_url=broker_url)
    scheduler = start_beat(service_env, tmp_path, "beat")
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


def logged(proc: Proc, text: str) -> int:
    return proc.output().count(text)


def green_polls(proc: Proc) -> int:
    """The worker's log lines of a fallback poll that found realtime green and did nothing."""
    return sum(
        "fallback_poll_skipped" in line and "status=green" in line
        for line in proc.output().splitlines()
    )


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
        idle_polls = green_polls(worker)
        wait_for(lambda: green_polls(worker) >= idle_polls + 2, 4 * poll + 10,
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
