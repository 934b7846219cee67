"""The `supabase` source end to end, with the real `realtime` client against the protocol
stand-in fed by a real replication slot."""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path

import redis

from devtools.processes import Proc, running, start_beat, wait_for
from devtools.realtime_standin import RealtimeStandIn
from pipeline import keys, seed
from pipeline.health import ListenerState
from tests.listener_harness import SMALL, Listener, change_data, coach_change, standin
from tests.pipeline_checks import settle
from tests.test_listener_postgres import burst

__all__ = ["standin"]  # the fixture


def test_committed_rows_end_as_correct_aggregates(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    listener = Listener(service_env, tmp_path, standin)
    with running(listener.proc):
        listener.wait_connected(redis_client)
        settle(database_url, redis_client)  # first connect: position unknown, full catch-up
        before = listener.metric("coachpipe_events_total", source="supabase")
        burst(database_url, 150)
        # Aggregates can match the oracle before the last event arrives (a recompute started by
        # an early event already reads every commit), so wait for the events themselves first.
        wait_for(
            lambda: listener.metric("coachpipe_events_total", source="supabase") >= before + 150,
            60,
            message="every committed change to arrive as an event",
        )
        settle(database_url, redis_client)


BAD_FRAMES = [
    ("malformed_frame", lambda s: s.send_raw("{not json")),
    ("malformed_payload", lambda s: s.send_raw('{"event":"postgres_changes","topic":"realtime:coachpipe","payload":{"ids":[1]},"ref":null}')),
    ("unknown_table", lambda s: s.send_change(change_data("invoices", "INSERT", {"coach_id": str(uuid.uuid4())}))),
    ("unknown_table", lambda s: s.send_change(change_data("Sessions", "INSERT", {"coach_id": str(uuid.uuid4())}))),
    ("unknown_type", lambda s: s.send_change(change_data("sessions", "UPSERT", {"coach_id": str(uuid.uuid4())}))),
    ("malformed_payload", lambda s: s.send_change(change_data("sessions", "INSERT", "not an object"))),
    ("server_error_413", lambda s: s.send_change(change_data("goals", "INSERT", {"coach_id": str(uuid.uuid4())}, errors=["Error 413: Payload Too Large"]))),
    ("oversized_frame", lambda s: s.send_oversized(2 * 1024 * 1024)),
]  # fmt: skip


def test_bad_input_is_counted_and_logged_and_the_listener_keeps_working(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    listener = Listener(service_env, tmp_path, standin)
    with running(listener.proc):
        listener.wait_connected(redis_client)
        settle(database_url, redis_client)
        for reason, inject in BAD_FRAMES:
            before = listener.metric("coachpipe_bad_input_total", reason=reason)
            inject(standin)
            wait_for(
                lambda r=reason, b=before: (
                    listener.metric("coachpipe_bad_input_total", reason=r) > b
                ),
                15,
                message=f"bad input {reason} to be counted",
            )
            wait_for(
                lambda: listener.connected(redis_client),
                30,
                message=f"listener back after {reason}",
            )
            coach_change(database_url)  # events around bad input are still processed
            settle(database_url, redis_client)
            assert listener.proc.alive()
        unusable = [
            (
                "missing_coach_id",
                change_data("sessions", "DELETE", None) | {"old_record": {"id": str(uuid.uuid4())}},
            ),
            ("missing_coach_id", change_data("goals", "INSERT", {"id": str(uuid.uuid4())})),
            ("bad_coach_id", change_data("session_ratings", "INSERT", {"coach_id": 42})),
            ("bad_coach_id", change_data("goals", "INSERT", {"coach_id": "not-a-uuid"})),
        ]
        for reason, data in unusable:  # no usable coach id: a wide refresh, never a silent drop
            wide_before = listener.metric("coachpipe_wide_refresh_requests_total", reason=reason)
            standin.send_change(data)
            wait_for(
                lambda r=reason, b=wide_before: (
                    listener.metric("coachpipe_wide_refresh_requests_total", reason=r) > b
                ),
                15,
                message=f"wide refresh request for {reason}",
            )
        for inject in (standin.send_system_error, standin.send_phx_error):
            inject()
            wait_for(
                lambda: listener.connected(redis_client),
                30,
                message="listener back after a server error",
            )
            coach_change(database_url)
            settle(database_url, redis_client)
    output = listener.proc.output()
    assert "bad_change" in output and "error_type" in output and "unknown_table" in output
    assert "change_without_coach" in output and "bad_coach_id" in output


def fallback_stamp(client: redis.Redis) -> float:
    """When the last fallback refresh (beat's polling while realtime is not green) started."""
    raw = client.hget(keys.LAST_REFRESH, "fallback")
    return float(raw) if raw else 0.0


def test_a_ten_second_outage_turns_status_red_polls_and_catches_up(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    listener = Listener(service_env, tmp_path, standin)
    beat = start_beat(service_env, tmp_path)
    with running(listener.proc, beat):
        listener.wait_connected(redis_client)
        settle(database_url, redis_client)
        wait_for(lambda: redis_client.get(keys.REALTIME_STATUS) == b"green", 15, message="green")
        down_since = time.time()  # the clock the workers stamp fallback refreshes with
        standin.set_down(True)
        down_at = time.monotonic()
        burst(database_url, 60)  # changes keep coming; Realtime drops them
        wait_for(lambda: redis_client.get(keys.REALTIME_STATUS) in (b"yellow", b"red"), 15,
                 message="status to leave green")  # fmt: skip
        # Polling during the outage: a fallback refresh stamped after it began, then another
        # (beat's periodic poll, not only the one refresh on the transition).
        first_poll = wait_for(lambda: fallback_stamp(redis_client) >= down_since and fallback_stamp(redis_client),
                              15, message="a fallback refresh during the outage")  # fmt: skip
        wait_for(lambda: fallback_stamp(redis_client) > first_poll, 15,
                 message="fallback polling to go on during the outage")  # fmt: skip
        time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))  # the outage lasts 10 s at least
        burst(database_url, 30, seed_value=3)
        standin.set_down(False)
        listener.wait_connected(redis_client, 30, "listener to reconnect")
        settle(database_url, redis_client)
        wait_for(
            lambda: redis_client.get(keys.REALTIME_STATUS) == b"green", 15, message="green again"
        )
    assert "catch_up" in listener.proc.output()
    assert "Realtime connection lost. Using polling." in beat.output() + worker.output()


def test_sigterm_unsubscribes_closes_and_exits_zero(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn,
) -> None:  # fmt: skip
    listener = Listener(service_env, tmp_path, standin)
    listener.wait_connected(redis_client)
    assert standin.connections == 1
    assert listener.proc.terminate(timeout=20) == 0
    wait_for(lambda: standin.connections == 0, 5, message="socket closed")
    assert listener.state(redis_client) is ListenerState.DISCONNECTED


def test_a_hundred_reconnect_cycles_leak_no_sockets_tasks_or_memory(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn,
) -> None:  # fmt: skip
    listener = Listener(
        service_env,
        tmp_path,
        standin,
        RECONNECT_INITIAL_S="0.02",
        RECONNECT_MAX_S="0.05",
        HEARTBEAT_S="0.2",
    )
    with running(listener.proc):
        listener.wait_connected(redis_client)

        def cycle(times: int) -> None:
            for _ in range(times):
                joins = standin.joins
                standin.drop_connections(1011)
                wait_for(lambda j=joins: standin.joins > j and listener.connected(redis_client), 20,
                         interval=0.02, message="reconnect")  # fmt: skip

        def canary_back() -> None:
            """A canary of the current link has come back: its catch-up is over and its tasks
            run (the status turns green before the catch-up)."""
            name = "coachpipe_listener_link_check_seconds_count"
            back = listener.metric(name, check="canary")
            wait_for(lambda: listener.metric(name, check="canary") > back, 30,
                     message="a canary of the link")  # fmt: skip

        def steady(name: str, reports: int = 10) -> float:
            """The highest value of `name` over `reports` heartbeats: a connected link's task
            count moves with its phase (10 during the catch-up, 13 once the canary and the
            partition watch run, ±1 for a pending reply), so one sample is no baseline."""
            seen: dict[float, float] = {}

            def enough() -> bool:
                health = listener.health(redis_client)
                if health is not None and health.heartbeat_at not in seen:
                    seen[health.heartbeat_at] = listener.metric(name)
                return len(seen) >= reports

            wait_for(enough, 30, interval=0.05, message=f"{reports} heartbeats")
            return max(seen.values())

        cycle(10)  # warm up: imports, pools and caches reach their steady size
        canary_back()
        fds = steady("process_open_fds")
        tasks = steady("coachpipe_listener_asyncio_tasks")
        rss = steady("process_resident_memory_bytes")
        cycle(100)
        # A socket or task of the last cycle may still be closing, and the count moves with the
        # phase: wait for one sample within the bound; a leak of a task a cycle never gets there.
        for name, bound in (
            ("process_open_fds", fds + 2),
            ("coachpipe_listener_asyncio_tasks", tasks + 2),
            ("process_resident_memory_bytes", rss + 8 * 1024 * 1024),
        ):
            readings: list[float] = []

            def within(n: str = name, b: float = bound, seen: list[float] = readings) -> bool:
                seen.append(listener.metric(n))
                return seen[-1] <= b

            with contextlib.suppress(AssertionError):
                wait_for(within, 10)
            assert readings[-1] <= bound, (name, readings[-5:])
        assert listener.metric("coachpipe_listener_reconnects_total") >= 100


def test_two_listeners_share_the_work_through_dedup(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    first = Listener(service_env, tmp_path, standin, name="first")
    second = Listener(service_env, tmp_path, standin, name="second")
    with running(first.proc, second.proc):
        wait_for(lambda: first.connected(redis_client) and second.connected(redis_client), 20,
                 message="both listeners to connect")  # fmt: skip
        settle(database_url, redis_client)
        burst(database_url, 100)
        settle(database_url, redis_client)
        suppressed = sum(
            listener.metric("coachpipe_recompute_requests_total", outcome="suppressed")
            for listener in (first, second)
        )
        assert suppressed > 0
