"""Listener heartbeats in Redis, and the pipeline's realtime status computed from them.

Each listener writes its own state every heartbeat. `realtime_status` is a pure function of
those states and the clock: green when at least one listener is connected with a fresh
heartbeat; yellow while none is but one is reconnecting or subscribing, for at most
`red_after_s` since a listener was last connected; red otherwise, and red while a listener
recovers from a fault that may have lost changes (whatever the others say: the stored values
cannot be trusted until the refresh that answers it is enqueued). Beat's fallback polling and
the dashboards' connection indicator both follow it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

import orjson

from config import Settings
from pipeline import keys
from pipeline.redis_client import RedisClient
from pipeline.redis_values import as_text


class ListenerState(StrEnum):
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    SUBSCRIBING = "subscribing"
    """The socket is up and the channel joined, but the server has not yet said "Subscribed to
    PostgreSQL": changes are not captured yet."""
    DISCONNECTED = "disconnected"
    RECOVERING = "recovering"
    """Streaming again after a fault that may have lost changes (a replaced replication slot),
    until the refresh of every coach that answers it is enqueued."""


class Color(StrEnum):
    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"


@dataclass(frozen=True)
class ListenerHealth:
    listener_id: str
    source: str
    state: ListenerState
    heartbeat_at: float
    """Unix seconds of the last heartbeat."""
    last_event_at: float | None = None
    """Unix seconds of the commit of the last event seen (None before the first)."""
    reconnect_attempts: int = 0
    detail: str = ""
    connected_at: float | None = None
    """Unix seconds when this listener was last known connected (now, while it is)."""
    started_at: float | None = None
    """Unix seconds when the listener started (how long a never-connected one has tried)."""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ListenerHealth:
        data = orjson.loads(raw)
        data["state"] = ListenerState(data["state"])
        return cls(**data)


@dataclass(frozen=True)
class RealtimeStatus:
    color: Color
    listeners: tuple[ListenerHealth, ...]
    reason: str

    def as_json(self) -> dict[str, object]:
        return {
            "status": self.color.value,
            "reason": self.reason,
            "listeners": [asdict(listener) for listener in self.listeners],
        }


RED_AFTER_S = 30.0
TRYING = (ListenerState.RECONNECTING, ListenerState.SUBSCRIBING)


def realtime_status(
    listeners: Sequence[ListenerHealth],
    now: float,
    stale_after_s: float,
    red_after_s: float = RED_AFTER_S,
) -> RealtimeStatus:
    fresh = [h for h in listeners if now - h.heartbeat_at <= stale_after_s]
    ordered = tuple(sorted(listeners, key=lambda h: h.listener_id))
    recovering = [h for h in fresh if h.state is ListenerState.RECOVERING]
    if recovering:
        return RealtimeStatus(
            Color.RED, ordered, f"changes may have been missed: {recovering[0].detail}"
        )
    if any(h.state is ListenerState.CONNECTED for h in fresh):
        count = sum(h.state is ListenerState.CONNECTED for h in fresh)
        return RealtimeStatus(Color.GREEN, ordered, f"{count} listener(s) connected")
    trying = [h for h in fresh if h.state in TRYING]
    if trying:
        # A listener that never connected counts from its start, so a fleet that cannot connect
        # at all also turns red; one without either stamp (an older version) stays yellow.
        stamps = [s for h in listeners for s in (h.connected_at or h.started_at,) if s is not None]
        if stamps and now - max(stamps) > red_after_s:
            return RealtimeStatus(
                Color.RED, ordered, f"no listener connected for over {red_after_s:g} s"
            )
        if any(h.state is ListenerState.SUBSCRIBING for h in trying):
            return RealtimeStatus(Color.YELLOW, ordered, "listeners wait for the subscription")
        return RealtimeStatus(Color.YELLOW, ordered, "listeners are reconnecting")
    if not listeners:
        return RealtimeStatus(Color.RED, ordered, "no listener has reported")
    if not fresh:
        return RealtimeStatus(Color.RED, ordered, "listener heartbeats are stale")
    return RealtimeStatus(Color.RED, ordered, "no listener is connected")


class HealthBoard:
    """Reads and writes listener health in Redis."""

    def __init__(
        self, client: RedisClient, *, stale_after_s: float, red_after_s: float = RED_AFTER_S
    ) -> None:
        self._redis = client
        self.stale_after_s = stale_after_s
        self.red_after_s = red_after_s

    @classmethod
    def from_settings(cls, client: RedisClient, settings: Settings) -> HealthBoard:
        """The board every process builds: HEARTBEAT_STALE_S and RED_AFTER_S."""
        return cls(
            client, stale_after_s=settings.heartbeat_stale_s, red_after_s=settings.red_after_s
        )

    def report(self, health: ListenerHealth) -> None:
        ttl = max(int(self.stale_after_s * 20), 60)  # long enough for `status` to show the dead
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.listener(health.listener_id), health.to_json(), ex=ttl)
        pipe.zadd(keys.LISTENERS, {health.listener_id: health.heartbeat_at})
        pipe.zremrangebyscore(keys.LISTENERS, "-inf", time.time() - ttl)
        pipe.execute()

    def listeners(self) -> list[ListenerHealth]:
        ids = [as_text(raw) for raw in self._redis.zrange(keys.LISTENERS, 0, -1)]
        if not ids:
            return []
        found = self._redis.mget([keys.listener(listener_id) for listener_id in ids])
        return [ListenerHealth.from_json(raw) for raw in found if raw is not None]

    def status(self, now: float | None = None) -> RealtimeStatus:
        return realtime_status(
            self.listeners(),
            time.time() if now is None else now,
            self.stale_after_s,
            self.red_after_s,
        )

    def record_transition(self, status: RealtimeStatus) -> Color | None:
        """Remember the current color; return the previous one if it changed (None otherwise).

        Several processes may watch the status; GETSET makes exactly one of them see each
        transition, so "Realtime connection lost" is logged once.
        """
        previous = self._redis.getset(keys.REALTIME_STATUS, status.color.value)
        if previous is not None and as_text(previous) == status.color.value:
            return None
        if previous is None and status.color is Color.GREEN:
            return None
        return Color(as_text(previous)) if previous is not None else Color.GREEN
