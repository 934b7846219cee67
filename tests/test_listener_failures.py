"""What ends a listener and what it waits out: a bug fails loudly (exit 1, traceback logged,
the slot keeps the batch); Redis going away is retried and the listener carries on."""

from __future__ import annotations

import sys
from pathlib import Path

import redis

from coachpipe.embedded import PrivateRedis
from devtools.processes import Proc, listener_connected, running, start_listener, wait_for
from pipeline import seed
from pipeline.health import HealthBoard, ListenerState
from tests.pipeline_checks import idle, settle
from tests.test_listener_postgres import burst

SMALL = seed.SeedPlan(coaches=3, clients_per_coach=2, sessions_per_client=2)

BROKEN_LISTENER = """
import sys
from config import SourceName, load_settings
from listeners.main import run

class Broken:
    '''An invalidation strategy with a bug in it.'''

    def __init__(self, sender):
        self.sender = sender

    def invalidate(self, events):
        return events[0].table + 1  # TypeError: a programming error, not an outage

sys.exit(run(load_settings(), SourceName.POSTGRES, Broken))
"""


def test_a_bug_in_dispatch_ends_the_listener_and_the_slot_keeps_the_batch(
    database_url: str,
    redis_client: redis.Redis,
    service_env: dict[str, str],
    tmp_path: Path,
    worker: Proc,
) -> None:
    seed.load(database_url, SMALL)
    broken = Proc(
        "broken", [sys.executable, "-c", BROKEN_LISTENER], service_env, tmp_path / "broken.log"
    ).start()
    with running(broken):
        wait_for(
            lambda: listener_connected(redis_client, broken), 20, message="listener to connect"
        )
        settle(database_url, redis_client)  # the new slot's catch-up refreshes everything
        burst(database_url, 5)
        wait_for(lambda: not broken.alive(), 30, message="the broken listener to exit")
    assert broken.process is not None and broken.process.returncode == 1
    output = broken.output()
    assert "listener_failed" in output and "Traceback" in output, output[-3000:]
    assert "TypeError" in output and "enqueue_failed" not in output  # not retried
    # The batch was never confirmed: a listener started on the slot replays it.
    fixed = start_listener(service_env, tmp_path, "fixed")
    with running(fixed):
        settle(database_url, redis_client)


def test_a_redis_outage_is_retried_and_the_listener_carries_on(
    database_url: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    own = PrivateRedis(tmp_path / "redis", durable=False).start()
    try:
        url = f"redis://127.0.0.1:{own.port}"
        env = {**service_env, "REDIS_URL": f"{url}/0", "BROKER_URL": f"{url}/1"}
        client = redis.Redis.from_url(f"{url}/0")
        seed.load(database_url, SMALL)
        listener = start_listener(env, tmp_path)
        with running(listener):
            wait_for(
                lambda: listener_connected(client, listener), 20, message="listener to connect"
            )
            own.stop()
            burst(database_url, 5)
            wait_for(
                lambda: "enqueue_failed" in listener.output(),
                30,
                message="the listener to meet the outage",
            )
            own.start()  # same port, empty: what the listener asks for now is the replay

            def requested() -> bool:
                return not idle(client)

            wait_for(requested, 60, interval=0.2, message="the batch to be requested")
            board = HealthBoard(client, stale_after_s=3)
            wait_for(
                lambda: any(h.state is ListenerState.CONNECTED for h in board.listeners()),
                20,
                message="heartbeats to resume",
            )
            assert listener.alive()
            assert listener.terminate(timeout=20) == 0, listener.output()[-3000:]
        client.close()
    finally:
        own.destroy()
