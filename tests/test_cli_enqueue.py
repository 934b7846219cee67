"""`coachpipe refresh --enqueue`: a producer like the listener, sending tasks by name through
the app built from the command's settings."""

from __future__ import annotations

import orjson
import psycopg
import redis

from tasks import names
from tests.test_cli import SECRET, coachpipe


def test_refresh_enqueue_sends_the_tasks_by_name_to_the_refresh_queue(
    service_env: dict[str, str], broker_url: str
) -> None:
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    assert coachpipe(service_env, "seed", "--coaches", "1", "--truncate").returncode == 0
    with psycopg.connect(service_env["DATABASE_URL"]) as conn:
        (row,) = conn.execute("SELECT id FROM users WHERE role = 'coach'").fetchall()
    coach = str(row[0])
    everyone = coachpipe(service_env, "refresh", "--all", "--enqueue")
    assert everyone.returncode == 0, everyone.stderr
    one = coachpipe(
        service_env, "refresh", "--coach", coach, "--aggregate", "coach-stats", "--enqueue"
    )
    assert one.returncode == 0, one.stderr
    sent = [
        orjson.loads(raw)["headers"]["task"] for raw in broker.lrange(names.REFRESH_QUEUE, 0, -1)
    ]
    assert sent.count(names.REFRESH_ALL) == 5
    assert sent.count(names.REFRESH_BATCH) == 1
    assert not broker.llen(names.REALTIME_QUEUE)


def test_refresh_enqueue_without_a_broker_is_one_line_without_the_password(
    service_env: dict[str, str],
) -> None:
    env = {**service_env, "BROKER_URL": f"redis://:{SECRET}@127.0.0.1:1/0"}
    result = coachpipe(env, "refresh", "--all", "--enqueue", timeout=180)
    assert result.returncode == 1
    assert "cannot reach the broker (BROKER_URL)" in result.stderr
    assert SECRET not in result.stderr and "Traceback" not in result.stderr
