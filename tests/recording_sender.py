"""A `TaskSender` that keeps what it was asked to send: the task queue of scheduler tests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RecordingSender:
    drains: list[tuple[int, float]] = field(default_factory=list)
    """(shard, countdown s) of every drain sent, in order."""
    wide_refreshes: list[tuple[str, str]] = field(default_factory=list)

    def send_drain(self, shard: int, countdown_s: float) -> None:
        self.drains.append((shard, countdown_s))

    def send_wide_refresh(self, aggregate: str, reason: str) -> None:
        self.wide_refreshes.append((aggregate, reason))
