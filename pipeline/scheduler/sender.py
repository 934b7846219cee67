"""How the scheduler hands work to the task queue, without knowing which one it is."""

from __future__ import annotations

from typing import Protocol


class TaskSender(Protocol):
    """Sends the scheduler's tasks. Implemented over Celery in `tasks/`; the scheduler itself
    never imports a task queue."""

    def send_drain(self, shard: int, countdown_s: float) -> None:
        """Enqueue one drain of scheduler shard `shard`, to run after `countdown_s` (0: at
        once)."""

    def send_wide_refresh(self, aggregate: str, reason: str) -> None:
        """Enqueue a refresh of `aggregate` for every active coach."""
