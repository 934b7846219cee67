"""Realtime status from listener heartbeats: a pure function, table-tested."""

from __future__ import annotations

import time

import pytest
import redis

from pipeline.health import Color, HealthBoard, ListenerHealth, ListenerState, realtime_status

NOW = 1_000_000.0
STALE = 15.0


def h(
    name: str,
    state: str,
    age: float,
    connected_ago: float | None = None,
    started_ago: float | None = None,
) -> ListenerHealth:
    return ListenerHealth(
        name,
        "postgres",
        ListenerState(state),
        heartbeat_at=NOW - age,
        connected_at=None if connected_ago is None else NOW - connected_ago,
        started_at=None if started_ago is None else NOW - started_ago,
    )


CASES = [
    ("nobody reported", [], Color.RED),
    ("one connected, fresh", [h("a", "connected", 1)], Color.GREEN),
    ("connected but stale", [h("a", "connected", 16)], Color.RED),
    ("exactly at the stale limit is fresh", [h("a", "connected", 15)], Color.GREEN),
    ("reconnecting", [h("a", "reconnecting", 1)], Color.YELLOW),
    ("disconnected", [h("a", "disconnected", 1)], Color.RED),
    ("one of two connected", [h("a", "disconnected", 1), h("b", "connected", 2)], Color.GREEN),
    ("stale connected, fresh reconnecting", [h("a", "connected", 60), h("b", "reconnecting", 1)], Color.YELLOW),
    ("all stale", [h("a", "reconnecting", 30), h("b", "connected", 30)], Color.RED),
    ("subscribing", [h("a", "subscribing", 1, connected_ago=5)], Color.YELLOW),
    ("reconnecting for 29 s", [h("a", "reconnecting", 1, connected_ago=29)], Color.YELLOW),
    ("reconnecting for 31 s", [h("a", "reconnecting", 1, connected_ago=31)], Color.RED),
    ("subscribing for 31 s", [h("a", "subscribing", 1, connected_ago=31)], Color.RED),
    ("never connected, started 10 s ago", [h("a", "reconnecting", 1, started_ago=10)], Color.YELLOW),
    ("never connected, started 40 s ago", [h("a", "reconnecting", 1, started_ago=40)], Color.RED),
    ("the other listener was connected 5 s ago",
     [h("a", "reconnecting", 1, connected_ago=90), h("b", "reconnecting", 2, connected_ago=5)], Color.YELLOW),
    ("a stale listener's last connection counts",
     [h("a", "connected", 20, connected_ago=20), h("b", "reconnecting", 1, started_ago=60)], Color.YELLOW),
    ("no stamps at all (older listener): yellow", [h("a", "reconnecting", 1)], Color.YELLOW),
    ("recovering: changes may be missed", [h("a", "recovering", 1)], Color.RED),
    ("recovering beats a connected one", [h("a", "recovering", 1), h("b", "connected", 1)], Color.RED),
    ("stale recovering is forgotten", [h("a", "recovering", 60), h("b", "connected", 1)], Color.GREEN),
]  # fmt: skip


@pytest.mark.parametrize(("description", "listeners", "color"), CASES, ids=[c[0] for c in CASES])
def test_status(description: str, listeners: list[ListenerHealth], color: Color) -> None:
    assert realtime_status(listeners, NOW, STALE).color is color


def test_board_round_trip_and_single_transition(redis_client: redis.Redis) -> None:
    board = HealthBoard(redis_client, stale_after_s=STALE)
    now = time.time()
    assert board.status(now).color is Color.RED
    alive = ListenerHealth("a", "postgres", ListenerState.CONNECTED, heartbeat_at=now)
    board.report(alive)
    assert board.listeners() == [alive]
    assert board.status(now).color is Color.GREEN
    assert board.record_transition(board.status(now)) is None  # first green: nothing lost
    red = realtime_status([], now, STALE)
    assert board.record_transition(red) is Color.GREEN
    assert board.record_transition(red) is None  # logged once per transition
