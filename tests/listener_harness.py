"""What the `supabase` listener tests share: the Realtime stand-in fixture, a listener process
against it, and the small changes and frames they provoke it with.

Import the `standin` fixture into a test module to use it (`__all__ = ["standin"]`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from coachpipe.embedded import free_port
from devtools.processes import Proc, wait_for
from devtools.realtime_standin import RealtimeStandIn
from devtools.scrape import scrape
from pipeline import seed
from pipeline.health import HealthBoard, ListenerHealth, ListenerState

SMALL = seed.SeedPlan(coaches=4, clients_per_coach=3, sessions_per_client=2)
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJl"
"""A service-role-shaped JWT (the stand-in accepts any key)."""


@pytest.fixture
def standin(database_url: str) -> Iterator[RealtimeStandIn]:
    with RealtimeStandIn(database_url) as server:
        yield server


class Listener:
    """`python -m listeners supabase` against `standin`, its metrics on a port of its own."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        standin: RealtimeStandIn,
        name: str = "listener",
        **extra: str,
    ) -> None:
        self.metrics_port = free_port()
        self.proc = Proc(
            name,
            [sys.executable, "-m", "listeners", "supabase"],
            {
                **env,
                "SUPABASE_URL": standin.url,
                "SUPABASE_KEY": TOKEN,
                "LISTENER_METRICS_PORT": str(self.metrics_port),
                **extra,
            },
            log_dir / f"{name}.log",
        ).start()

    def health(self, client: redis.Redis) -> ListenerHealth | None:
        """This listener's last heartbeat report, or None before the first."""
        for health in HealthBoard(client, stale_after_s=3).listeners():
            if health.listener_id.split(":")[1] == str(self.proc.pid):
                return health
        return None

    def state(self, client: redis.Redis) -> ListenerState | None:
        health = self.health(client)
        return None if health is None else health.state

    def connected(self, client: redis.Redis) -> bool:
        return self.state(client) is ListenerState.CONNECTED

    def wait_connected(
        self, client: redis.Redis, timeout: float = 20, message: str = "listener to connect"
    ) -> None:
        wait_for(lambda: self.connected(client), timeout, message=message)

    def metric(self, name: str, **labels: str) -> float:
        return scrape(self.metrics_port, name, **labels)


def coach_change(database_url: str) -> None:
    """One real change: a session of some coach is cancelled."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE sessions SET status = 'cancelled' WHERE id = "
            "(SELECT id FROM sessions WHERE status <> 'cancelled' ORDER BY id LIMIT 1)"
        )


def change_data(
    table: str, kind: str, record: object, errors: list[str] | None = None
) -> dict[str, object]:
    """The `data` of a `postgres_changes` frame, for frames the stand-in is told to send."""
    return {
        "schema": "public",
        "table": table,
        "type": kind,
        "commit_timestamp": "2026-01-01T00:00:00.000Z",
        "columns": [{"name": "coach_id", "type": "uuid"}],
        "errors": errors,
        "record": record,
    }
