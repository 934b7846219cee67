"""Stopping asyncio tasks for good: cancel, and cancel again until they have ended.

On Python 3.11 `asyncio.wait_for` can swallow a cancellation that lands as its wait ends
(CPython gh-86296, fixed in 3.12), and libraries wait that way inside their own calls (redis-py's
asyncio connections among them). A task cancelled once at that moment goes on with its loop, and
whoever awaits it waits forever: CI saw the read API's shutdown hang for 300 s, twice in one run,
on its broadcaster and status watch. `cancel_and_wait` re-delivers the cancellation until each
task has ended, as anyio's cancel scopes do.
"""

from __future__ import annotations

import asyncio
from typing import Any

REPEAT_S = 0.1
"""Seconds between two cancellations of a task that is still running."""


async def cancel_and_wait(*tasks: asyncio.Future[Any], repeat_s: float = REPEAT_S) -> None:
    """Cancel `tasks` and return once every one has ended, cancelling again every `repeat_s`
    seconds any that still runs. What they returned or raised is dropped (and retrieved, so
    asyncio logs no "exception was never retrieved"); a cancellation of the caller itself
    propagates and leaves the tasks cancelled but possibly still running."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=repeat_s)
    for task in tasks:
        if not task.cancelled():
            task.exception()
