"""Stopping asyncio tasks for good: cancel, and cancel again until they have ended.

On Python 3.11 `asyncio.wait_for` can swallow a cancellation that lands as its wait ends
(CPython gh-86296, fixed in 3.12), and libraries wait that way inside their own calls (redis-py's
asyncio connections among them). A task cancelled once at that moment goes on with its loop, and
whoever awaits it waits forever. CI saw the read API's shutdown hang for 300 s, twice in one run;
`cancel_and_wait` re-delivers the cancellation, as anyio's cancel scopes do, and logs each task
that outlived its first one (`task_outlived_cancel`, with where it was), so a hang of another
cause shows itself too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

GRACE_S = 1.0
"""Seconds a cancelled task has to end (its cleanup may await: psycopg cancels the running
query on a connection of its own) before it is cancelled again."""
REPEAT_S = 0.1
"""Seconds between two later cancellations of a task that still runs."""

log = structlog.get_logger("pipeline.cancellation")


async def cancel_and_wait(
    *tasks: asyncio.Future[Any], grace_s: float = GRACE_S, repeat_s: float = REPEAT_S
) -> None:
    """Cancel `tasks` and return once every one has ended: a task still running `grace_s`
    seconds after its cancellation is logged and cancelled again every `repeat_s` seconds.
    An error a task ended with is logged (`task_failed`), not raised; a cancellation of the
    caller itself propagates and leaves the tasks cancelled but possibly still running."""
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    if pending:
        _, pending = await asyncio.wait(pending, timeout=grace_s)
    for task in pending:
        log.warning("task_outlived_cancel", task=_name(task), stack=_where(task))
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=repeat_s)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.warning("task_failed", task=_name(task), exc_info=task.exception())


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)


def _where(task: asyncio.Future[Any]) -> str:
    """The innermost frame the task waits in (`file:line function`)."""
    if not isinstance(task, asyncio.Task):
        return ""
    frames = task.get_stack()
    if not frames:
        return ""
    frame = frames[-1]
    return f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
