"""A seeded, reproducible soak of the `supabase` source: 200 hostile server actions interleaved
with 2,000 committed changes, the real `realtime` client against the stand-in.

Afterwards: the listener is connected (never silently dead), it tore down no more connections
than the actions that can end one, and every aggregate equals the oracle (changes delivered
while joined, and the catch-up from the change log for every gap).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

import psycopg
import pytest
import redis

from devtools.processes import Proc, running, wait_for
from devtools.realtime_standin import RealtimeStandIn
from pipeline import seed
from tests.listener_harness import SMALL, Listener, change_data, standin
from tests.pipeline_checks import settle

__all__ = ["standin"]  # the fixture, shared with the happy-path tests
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SEED = 14
ACTIONS = 200
CHANGES = 2000


def _change(conn: psycopg.Connection[tuple[object, ...]], rng: random.Random) -> None:
    """One committed change: insert, update, reassignment or delete on a watched table."""
    pairs = conn.execute("SELECT coach_id, id FROM users WHERE role = 'client'").fetchall()
    coach, client = rng.choice(pairs)
    roll = rng.random()
    if roll < 0.3:
        conn.execute(
            "INSERT INTO sessions (coach_id, client_id, status, scheduled_at, completed_at,"
            " price_cents) VALUES (%s, %s, 'completed', now() - interval '1 day', now(), 5000)",
            (coach, client),
        )
    elif roll < 0.45:
        conn.execute(
            "INSERT INTO session_ratings (session_id, coach_id, client_id, rating) SELECT id,"
            " coach_id, client_id, %s FROM sessions WHERE coach_id = %s LIMIT 1",
            (rng.randint(1, 5), coach),
        )
    elif roll < 0.6:
        conn.execute(
            "DELETE FROM session_ratings WHERE id = (SELECT id FROM session_ratings"
            " WHERE coach_id = %s LIMIT 1)",
            (coach,),
        )
    elif roll < 0.75:
        conn.execute(
            "UPDATE sessions SET status = 'cancelled' WHERE id = (SELECT id FROM sessions"
            " WHERE coach_id = %s AND status <> 'cancelled' LIMIT 1)",
            (coach,),
        )
    elif roll < 0.85:
        others = sorted({c for c, _ in pairs})
        conn.execute(
            "UPDATE sessions SET coach_id = %s WHERE id = (SELECT id FROM sessions"
            " WHERE coach_id = %s LIMIT 1)",
            (rng.choice(others), coach),
        )
    elif roll < 0.95:
        conn.execute(
            "INSERT INTO goals (coach_id, client_id, title, progress) VALUES (%s, %s, 'g', %s)",
            (coach, client, rng.randint(0, 100)),
        )
    else:
        conn.execute(
            "DELETE FROM sessions WHERE id = (SELECT id FROM sessions WHERE coach_id = %s LIMIT 1)",
            (coach,),
        )


def test_soak_hostile_server(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    rng = random.Random(SEED)
    listener = Listener(service_env, tmp_path, standin, CANARY_S="1", CANARY_DEADLINE_S="8")

    def outage(status: HTTPStatus) -> Callable[[], object]:
        """Down while this action's changes commit (lost by Realtime), then back."""
        return lambda: standin.set_down(True, status=status)

    def slow_subscribe() -> None:
        standin.pause_ready(3)
        standin.drop_connections(1011)

    def error_row() -> None:
        record = {"coach_id": str(rng.choice(coaches))}
        standin.send_change(change_data("goals", "UPDATE", record, errors=["Error 413: x"]))

    # (name, weight, action, can end a connection)
    actions: list[tuple[str, int, Callable[[], object], bool]] = [
        ("close_1000", 10, lambda: standin.drop_connections(1000), True),
        ("close_1001", 10, lambda: standin.drop_connections(1001), True),
        ("close_1011", 10, lambda: standin.drop_connections(1011), True),
        ("close_4000", 10, lambda: standin.drop_connections(4000), True),
        ("phx_error", 10, standin.send_phx_error, True),
        ("phx_close", 8, standin.send_phx_close, True),
        ("system_error", 6, standin.send_system_error, True),
        ("system_shutdown", 4, lambda: standin.send_system_error("expired", "system"), True),
        ("blackhole", 2, standin.blackhole, True),
        ("slow_subscribe", 3, slow_subscribe, True),
        ("401_on_reconnect", 4, outage(HTTPStatus.UNAUTHORIZED), True),
        ("malformed", 10, lambda: standin.send_raw("{not json"), False),
        (
            "unmatched",
            8,
            lambda: standin.send_change(
                change_data("goals", "INSERT", {"coach_id": str(rng.choice(coaches))}), ids=[3]
            ),
            False,
        ),
        ("error_row", 8, error_row, False),
        (
            "unauthorized_row",
            5,
            lambda: standin.send_change(
                change_data("goals", "INSERT", {}, errors=["Error 401: Unauthorized"])
                | {"commit_timestamp": None}
            ),
            False,
        ),
    ]
    done: Counter[str] = Counter()
    with running(listener.proc):
        listener.wait_connected(redis_client)
        settle(database_url, redis_client)
        coaches = [uuid.UUID(str(c)) for c in seed_coaches(database_url)]
        with psycopg.connect(database_url, autocommit=True) as conn:
            per_action = CHANGES // ACTIONS
            for _ in range(ACTIONS):
                name, _, action, ends = rng.choices(actions, weights=[a[1] for a in actions])[0]
                if ends and rng.random() < 0.8:  # most hit a live connection, some stack up
                    wait_for(
                        lambda: standin.ready_topics() and listener.connected(redis_client),
                        60,
                        message=f"connected before {name}",
                    )
                action()
                done[name] += 1
                for _ in range(per_action):
                    _change(conn, rng)
                if name == "401_on_reconnect":
                    standin.set_down(False)
                if name in ("blackhole", "slow_subscribe"):
                    standin.pause_ready(0)
                    # Let the listener find it before the next action stacks on top.
                    wait_for(lambda: listener.connected(redis_client), 60, message=name)
        listener.wait_connected(redis_client, 60, "connected at the end")
        settle(database_url, redis_client, timeout=120)
        ending = sum(done[a[0]] for a in actions if a[3])
        # Failed connects (HTTP 401 while down) are attempts, not connections torn down.
        torn = listener.metric("coachpipe_listener_teardowns_total") - listener.metric(
            "coachpipe_listener_teardowns_total", reason="connect_failed"
        )
        reasons = {
            reason: listener.metric("coachpipe_listener_teardowns_total", reason=reason)
            for reason in ("heartbeat_timeout", "canary_timeout", "subscribe_timeout")
        }
        print(f"\nactions {dict(done)}; teardowns {torn:g} of {ending} ending actions; {reasons}")
        assert listener.proc.alive()
        assert torn <= ending, "more teardowns than actions that end a connection"
        # Liveness teardowns only where the server really went silent.
        assert reasons["heartbeat_timeout"] + reasons["canary_timeout"] <= done["blackhole"]
        assert reasons["subscribe_timeout"] == 0


def seed_coaches(database_url: str) -> list[object]:
    with psycopg.connect(database_url) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM users WHERE role = 'coach'")]
