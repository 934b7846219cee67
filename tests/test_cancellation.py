"""Stopping a task that swallowed a cancellation (CPython gh-86296 on 3.11)."""

from __future__ import annotations

import asyncio

from pipeline.cancellation import cancel_and_wait


async def _swallows_cancellations(times: int, ran: list[str]) -> None:
    """A loop whose wait swallows its first `times` cancellations, as `asyncio.wait_for` can
    on 3.11 when one lands as the wait ends; then it is cancelled like any task."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if times == 0:
                ran.append("cancelled")
                raise
            times -= 1
            ran.append("swallowed")


def test_a_task_that_swallowed_cancellations_is_cancelled_again_until_it_ends() -> None:
    async def scenario() -> list[str]:
        ran: list[str] = []
        stubborn = asyncio.create_task(_swallows_cancellations(2, ran))
        finished = asyncio.create_task(asyncio.sleep(0, result=None))
        await asyncio.sleep(0)
        stubborn_once = asyncio.create_task(_swallows_cancellations(0, []))
        await asyncio.sleep(0)
        stopping = cancel_and_wait(stubborn, finished, stubborn_once, grace_s=0.01, repeat_s=0.01)
        await asyncio.wait_for(stopping, 5)
        assert stubborn.cancelled() and stubborn_once.cancelled() and finished.done()
        return ran

    assert asyncio.run(scenario()) == ["swallowed", "swallowed", "cancelled"]


def test_a_plain_cancel_leaves_such_a_task_running() -> None:
    """What `cancel_and_wait` replaces: one `cancel()`, then `await task`, waits forever."""

    async def scenario() -> bool:
        stubborn = asyncio.create_task(_swallows_cancellations(1, []))
        await asyncio.sleep(0)
        stubborn.cancel()
        done, _ = await asyncio.wait({stubborn}, timeout=0.2)
        running = not done
        await cancel_and_wait(stubborn)
        return running

    assert asyncio.run(scenario())


def test_a_cleanup_that_awaits_gets_its_grace() -> None:
    """psycopg cancels a running query on a connection of its own when its task is cancelled:
    a second cancellation at once would cut that short."""

    async def scenario() -> list[str]:
        ran: list[str] = []

        async def cleans_up() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                await asyncio.sleep(0.05)
                ran.append("cleaned up")

        task = asyncio.create_task(cleans_up())
        await asyncio.sleep(0)
        await cancel_and_wait(task, grace_s=5)
        return ran

    assert asyncio.run(scenario()) == ["cleaned up"]


def test_an_error_a_task_ended_with_is_retrieved_not_raised() -> None:
    async def scenario() -> None:
        async def fails() -> None:
            raise RuntimeError("boom")

        task = asyncio.create_task(fails())
        await asyncio.sleep(0)
        await cancel_and_wait(task)
        assert isinstance(task.exception(), RuntimeError)

    asyncio.run(scenario())
