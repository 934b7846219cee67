"""The one interface every change source implements, and what it yields.

A source yields `Batch`es of `ChangeEvent`s and `Resync` requests. The listener enqueues a
batch's invalidations, then calls `confirm(batch.position)`: a durable source (the replication
slot) only moves its position then, so a listener killed at any moment loses nothing. A source
that cannot replay (Supabase Realtime) yields `Resync` after every (re)connect instead.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.events import ChangeEvent
from pipeline.health import ListenerState


@dataclass(frozen=True)
class Batch:
    events: list[ChangeEvent]
    position: str | None = None
    """What `confirm` takes once the batch's invalidations are enqueued (an LSN, or None)."""
    xids: tuple[int, ...] = ()
    """The batch's transaction ids, when the source knows them: the listener waits until a new
    snapshot sees them before it requests recomputes (see `pipeline.visibility`)."""

    def joined(self, later: Batch) -> Batch:
        """This batch and the `later` one as one: confirmed at the later position, or at this
        one's when the later batch has none (a part of a transaction still being read)."""
        return Batch(
            [*self.events, *later.events],
            later.position or self.position,
            tuple(dict.fromkeys((*self.xids, *later.xids))),
        )


@dataclass(frozen=True)
class Resync:
    """Changes may have been missed since `since` (None: since an unknown time)."""

    reason: str
    since: datetime | None = None
    snapshot: str | None = None
    """A Postgres snapshot (`pg_current_snapshot()`) whose changes are known delivered: the
    catch-up covers every change committed after it, from the change log."""
    everything: bool = False
    """Nothing the source delivered before can be trusted (a replaced replication slot):
    refresh every active coach, not only those whose rows changed lately."""
    position: str | None = None
    """What `confirm` takes once the refresh is enqueued, as for a `Batch`."""


@dataclass
class SourceStatus:
    state: ListenerState = ListenerState.DISCONNECTED
    attempts: int = 0
    detail: str = ""
    on_change: Callable[[], None] | None = field(default=None, repr=False)
    started_at: float = field(default_factory=time.time)
    left_connected_at: float | None = None
    """When the source last stopped being connected (None: never connected, or still is)."""

    @property
    def connected_at(self) -> float | None:
        """When the source was last known connected: now while it is."""
        if self.state is ListenerState.CONNECTED:
            return time.time()
        return self.left_connected_at

    def set(self, state: ListenerState, detail: str = "", *, attempts: int | None = None) -> None:
        changed = (state, detail) != (self.state, self.detail)
        if self.state is ListenerState.CONNECTED and state is not ListenerState.CONNECTED:
            self.left_connected_at = time.time()
        self.state, self.detail = state, detail
        if attempts is not None:
            self.attempts = attempts
        if changed and self.on_change is not None:
            self.on_change()


class Source(abc.ABC):
    name: str
    status: SourceStatus

    @abc.abstractmethod
    def items(self) -> AsyncIterator[Batch | Resync]:
        """Batches and resync requests, until `close` is called."""

    @abc.abstractmethod
    async def confirm(self, position: str | None) -> None:
        """Everything up to `position` is enqueued: a durable source may release it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Unsubscribe and disconnect; `items` ends after the batch in flight."""

    async def lag_bytes(self) -> int | None:
        """How much the source holds back on the server (replication slot lag), if it knows."""
        return None
