"""The `supabase` source's teardown never waits on a timer (issue 14, reconnect after a drop).

The link-faults bench saw one reconnect in ten take 5.7 s instead of ~0.55 s. Cause: on Python
3.11, `asyncio.wait_for` swallows a cancellation that arrives just as the awaited operation
completes (CPython gh-86296). A drop lands right after "Subscribed", while the new link's first
canary write is in flight; the teardown cancels the canary task as the write completes, the
cancellation is lost, the task sleeps a whole `CANARY_S` (5 s) and the teardown, which waits
for the link's tasks before the next connect, waits with it. The heartbeat task (its reply
wait, its `HEARTBEAT_S` pause) and the partition check had the same flaw.

The race is microseconds wide, so this test makes the lost cancellation certain instead of
hoping to hit it: the link's tasks run against the real `realtime` client, the stand-in and the
database, the server drops the socket, and nobody cancels the tasks. Each must end with its
link anyway, long before its interval (an hour here) runs out.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from config import Settings
from devtools.realtime_standin import RealtimeStandIn
from listeners.supabase_source import SupabaseSource, _Link
from tests.listener_harness import TOKEN, standin

__all__ = ["standin"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HOUR = 3600.0


def test_a_dropped_links_tasks_end_with_it_even_when_their_cancellation_is_lost(
    settings: Settings, standin: RealtimeStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = SupabaseSource(
        settings.model_copy(
            update={
                "supabase_url": SecretStr(standin.url),
                "supabase_key": SecretStr(TOKEN),
                "canary_s": HOUR,
                "canary_deadline_s": 2 * HOUR,
                "heartbeat_s": 300.0,
                "partition_check_s": HOUR,
            }
        )
    )

    # The first canary can come back (and leave `_canaries`) before a poll sees it: wait on
    # its write having finished instead.
    canary_written = asyncio.Event()
    write_canary = source._write_canary

    async def write_and_tell() -> None:
        await write_canary()
        canary_written.set()

    monkeypatch.setattr(source, "_write_canary", write_and_tell)

    async def drop_once_subscribed() -> tuple[str, set[str]]:
        link = _Link(1)
        source._link = link
        await source._establish(link)  # connect, join, wait for "Subscribed to PostgreSQL"
        assert link.ready.is_set() and not link.broken.is_set(), link.reason
        (heartbeat,) = link.tasks
        heartbeat.set_name("heartbeat")
        link.tasks.append(asyncio.create_task(source._canary(link), name="canary"))
        link.tasks.append(asyncio.create_task(source._watch_partitions(link), name="partitions"))
        async with asyncio.timeout(30):  # the first canary is written: every task is waiting
            await canary_written.wait()
            while link.heartbeat_ref is None:
                await asyncio.sleep(0.01)
        standin.drop_connections(1011)
        async with asyncio.timeout(30):
            await link.broken.wait()
        # No cancellation: what a task does when the one the teardown sends is lost.
        _, pending = await asyncio.wait(link.tasks, timeout=30)
        await source._teardown(link)
        return link.reason, {task.get_name() for task in pending}

    reason, still_running = asyncio.run(drop_once_subscribed())
    assert reason == "channel_error"
    assert still_running == set(), f"tasks still waiting out their interval: {still_running}"
