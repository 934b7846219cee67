"""Per-process resources of a worker or beat: engine, Redis client, store, dedup, health board.

Created lazily on first use and dropped after a fork, so prefork children never share a
connection with their parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import redis
from sqlalchemy import Engine

from config import Settings
from pipeline.db import make_engine
from pipeline.dedup import Dedup
from pipeline.health import HealthBoard
from pipeline.store import AggregateStore


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return make_engine(
            self.settings.require_database_url(),
            application_name="coachpipe-worker",
            snapshots=True,
        )

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.settings.require_redis_url(), health_check_interval=30, socket_keepalive=True
        )

    @cached_property
    def store(self) -> AggregateStore:
        return AggregateStore(self.redis)

    @cached_property
    def dedup(self) -> Dedup:
        return Dedup(
            self.redis,
            window_ms=self.settings.debounce_ms,
            stale_ms=int(self.settings.pending_stale_s * 1000),
        )

    @cached_property
    def board(self) -> HealthBoard:
        return HealthBoard(
            self.redis,
            stale_after_s=self.settings.heartbeat_stale_s,
            red_after_s=self.settings.red_after_s,
        )

    def reset_after_fork(self) -> None:
        """Forget inherited connections; the child opens its own on first use."""
        if "engine" in self.__dict__:
            self.engine.dispose(close=False)
        for name in ("engine", "redis", "store", "dedup", "board"):
            self.__dict__.pop(name, None)
