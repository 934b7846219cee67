"""Beat's scheduler: redbeat's schedule in Redis, under a lock that outlives its Redis.

redbeat takes its lock once, blocking, in a `beat_init` handler whose errors Celery swallows,
then extends it on every tick and lets any Redis error, or a lock found gone, end the process
(sibson/redbeat#208, #230): a Redis restart or a pause longer than the lock timeout kills every
beat. Here each tick decides anew. The holder extends the lock; a beat without it tries to take
it without blocking and otherwise sends nothing and looks again a second later, so a standby
takes over within one lock timeout of the holder dying or stalling.

A beat that takes the lock installs the static schedule first: Redis may have lost it, and
only the holder writes it (sibson/redbeat#198). Entries Redis lost go on from the last runs
this beat remembers. Before each send the holder checks it still holds the lock: an entry's
next run is written to Redis before it is sent, so one holder at a time sends each run once.
A Redis error ends the tick, never the process; the next tick comes after a jittered
exponential backoff.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis
import structlog
from redbeat import RedBeatScheduler
from redbeat.schedulers import get_redis
from redis.backoff import EqualJitterBackoff
from redis.exceptions import LockError, LockNotOwnedError
from redis.lock import Lock

from config.logging import redact_text

log = structlog.get_logger("tasks.beat")

TRANSIENT = (redis.ConnectionError, redis.TimeoutError)
STANDBY_POLL_S = 1.0
RETRY = EqualJitterBackoff(cap=2.0, base=0.1)


class ResilientScheduler(RedBeatScheduler):  # type: ignore[misc]  # redbeat is untyped
    def __init__(self, app: Any, **kwargs: Any) -> None:
        # Installing the schedule writes to Redis: done when the lock is taken, not here, so
        # that a beat also starts while Redis is down and a standby never rewrites the schedule.
        kwargs["lazy"] = True
        super().__init__(app, **kwargs)
        # Without a lock_key, redbeat's beat_init handler leaves the lock to this class.
        self.schedule_lock_key: str = app.redbeat_conf.lock_key
        self.lock_key = None
        self._lock: Lock | None = None
        self._active = False
        self._installed = False
        self._failures = 0
        self._last_runs: dict[str, datetime] = {}

    def tick(self, min: Any = min, **kwargs: Any) -> float:
        try:
            delay = self._send_due() if self._hold_lock() else STANDBY_POLL_S
        except LockNotOwnedError:
            self._active = False
            log.warning("beat_lock_lost", lock=self.schedule_lock_key)
            return STANDBY_POLL_S
        except TRANSIENT as error:
            self._failures += 1
            delay = RETRY.compute(self._failures)
            log.warning(
                "beat_redis_unavailable",
                error_type=type(error).__name__,
                error=str(error),
                attempt=self._failures,
                retry_in_s=round(delay, 2),
                holding_lock=self._active,
            )
            return delay
        if self._failures:
            log.info("beat_redis_back", failed_attempts=self._failures)
            self._failures = 0
        return delay

    def _hold_lock(self) -> bool:
        """Extend the lock if this beat holds it, else try to take it; True while it holds it."""
        lock = self._schedule_lock()
        if self._active:
            try:
                lock.reacquire()
            except LockNotOwnedError:  # another beat took it, or Redis lost it: try again now
                self._active = False
                log.warning("beat_lock_lost", lock=self.schedule_lock_key)
        if not self._active:
            if not lock.acquire(blocking=False):
                return False
            self._active, self._installed = True, False
            log.info("beat_lock_taken", lock=self.schedule_lock_key, timeout_s=self.lock_timeout)
        if not self._installed:
            self._install_schedule()
            self._installed = True
        return True

    def _install_schedule(self) -> None:
        """Install the static schedule; entries Redis lost go on from this beat's last runs.

        A new entry counts as run now (Celery's default): without this, a Redis restart that
        lost the schedule would delay every entry by a full interval.
        """
        client = get_redis(self.app)
        names = list(self._last_runs)
        with client.pipeline() as pipe:
            for name in names:
                pipe.exists(self.Entry.generate_key(self.app, name))
            lost = [name for name, exists in zip(names, pipe.execute(), strict=True) if not exists]
        self.setup_schedule()
        for name in lost:
            entry = self.Entry.from_key(self.Entry.generate_key(self.app, name), app=self.app)
            entry.reschedule(last_run_at=self._last_runs[name])
        if lost:
            log.warning("beat_schedule_restored", entries=len(lost))

    def _send_due(self) -> float:
        remaining = [self.max_interval]
        for entry in self.schedule.values():
            next_in = self.maybe_due(entry, **self._maybe_due_kwargs)
            if next_in:
                remaining.append(next_in)
        return float(min(remaining))

    def maybe_due(self, entry: Any, **kwargs: Any) -> float:
        # A holder that stalled past the lock timeout may have been replaced during this tick.
        if entry.is_due()[0] and not self._schedule_lock().owned():
            raise LockNotOwnedError("the beat lock changed hands during the tick")
        return float(super().maybe_due(entry, **kwargs))

    def reserve(self, entry: Any) -> Any:
        reserved = super().reserve(entry)
        self._last_runs[entry.name] = reserved.last_run_at
        return reserved

    def _schedule_lock(self) -> Lock:
        if self._lock is None:
            self._lock = get_redis(self.app).lock(self.schedule_lock_key, timeout=self.lock_timeout)
        return self._lock

    def close(self) -> None:
        """Release the lock on a clean shutdown, so that a standby takes over at once."""
        if self._active and self._lock is not None:
            try:
                self._lock.release()
                log.info("beat_lock_released", lock=self.schedule_lock_key)
            except (*TRANSIENT, LockError) as error:
                log.warning("beat_lock_not_released", error_type=type(error).__name__)
            self._active = False
        super().close()

    @property
    def info(self) -> str:
        url = redact_text(self.app.redbeat_conf.redis_url)
        return (
            f"       . redis -> {url}\n"
            f"       . lock -> `{self.schedule_lock_key}` {self.lock_timeout}s, "
            f"standby polls every {STANDBY_POLL_S}s"
        )
