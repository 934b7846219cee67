"""Per-process resources of a worker or beat: engines, Redis client, store, scheduler, health board.

Created lazily on first use and dropped after a fork, so prefork children never share a
connection with their parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import Engine

from config import Settings
from pipeline.db import make_engine
from pipeline.health import HealthBoard
from pipeline.redis_client import RedisClient, connect
from pipeline.scheduler import RecomputeScheduler, TaskSender
from pipeline.store import AggregateStore


@dataclass
class Runtime:
    settings: Settings
    sender: TaskSender

    @cached_property
    def engine(self) -> Engine:
        return make_engine(
            self.settings.require_database_url(),
            application_name="coachpipe-worker",
            snapshots=True,
        )

    @cached_property
    def writer(self) -> Engine:
        """For the few writes of the workers (`advance_summaries`): a pool of one connection
        (and one overflow) per process."""
        return make_engine(
            self.settings.require_database_url(),
            application_name="coachpipe-summaries",
            pool_size=1,
        )

    @cached_property
    def redis(self) -> RedisClient:
        return connect(
            self.settings.require_redis_url(), health_check_interval=30, socket_keepalive=True
        )

    @cached_property
    def store(self) -> AggregateStore:
        return AggregateStore(self.redis)

    @cached_property
    def scheduler(self) -> RecomputeScheduler:
        return RecomputeScheduler.from_settings(self.redis, self.sender, self.settings)

    @cached_property
    def board(self) -> HealthBoard:
        return HealthBoard.from_settings(self.redis, self.settings)

    def reset_after_fork(self) -> None:
        """Forget inherited connections; the child opens its own on first use."""
        for engine in ("engine", "writer"):
            if engine in self.__dict__:
                self.__dict__[engine].dispose(close=False)
        for name in ("engine", "writer", "redis", "store", "scheduler", "board"):
            self.__dict__.pop(name, None)
