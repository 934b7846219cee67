"""The `supabase` source under a misbehaving server (issue 14): the real `realtime` client in
the listener process, against the protocol stand-in and its failure switches.

Detection times are printed (run with `-s`) for the README's table, never asserted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis

from devtools.processes import Proc, running, wait_for
from devtools.realtime_standin import RealtimeStandIn
from pipeline import seed
from pipeline.health import Color, HealthBoard, ListenerState
from tests.listener_harness import SMALL, Listener, change_data, coach_change, standin
from tests.pipeline_checks import settle

__all__ = ["standin"]  # the fixture, shared with the happy-path tests
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def holds(predicate: Callable[[], object], seconds: float, message: str) -> None:
    """Observe `predicate` for a bounded window; fail the moment it is false."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), message
        time.sleep(0.2)


def teardowns(listener: Listener, reason: str | None = None) -> float:
    labels = {"reason": reason} if reason else {}
    return listener.metric("coachpipe_listener_teardowns_total", **labels)


def start(
    service_env: dict[str, str], tmp_path: Path, standin: RealtimeStandIn, **extra: str
) -> Listener:
    return Listener(service_env, tmp_path, standin, **{"CANARY_S": "1", **extra})


def test_one_error_each_then_the_new_socket_is_never_torn_down(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    """phx_error, a system error, a refused join and a join timeout each cost one connection;
    the old client's late reports (its join or leave timing out) never tear down the new one."""
    seed.load(database_url, SMALL)
    listener = start(service_env, tmp_path, standin)

    def refused() -> None:
        standin.refuse_joins(1)
        standin.drop_connections(1011)

    def unanswered() -> None:
        standin.ignore_joins(1)
        standin.drop_connections(1011)

    faults: list[tuple[str, Callable[[], object]]] = [
        ("phx_error", standin.send_phx_error),
        ("system_error", standin.send_system_error),
        ("join_refused", refused),
        ("join_timeout", unanswered),
    ]
    with running(listener.proc):
        listener.wait_connected(redis_client)
        for reason, inject in faults:
            inject()
            wait_for(lambda r=reason: teardowns(listener, r) >= 1, 30, message=f"{reason} seen")
            wait_for(
                lambda: standin.ready_topics() and listener.connected(redis_client),
                30,
                message=f"back after {reason}",
            )
        settle(database_url, redis_client)
        sockets, torn = standin.total_connections, teardowns(listener)
        # The bug tore the new socket down 10 s after each fault, then every 10 s: 25 s is
        # enough to see it twice. Changes keep flowing meanwhile.
        coach_change(database_url)
        holds(
            lambda: standin.total_connections == sockets and teardowns(listener) == torn,
            25,
            "a healthy connection was torn down",
        )
        settle(database_url, redis_client)
        assert listener.connected(redis_client)


def test_half_open_link_is_found_by_the_heartbeat_then_caught_up(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    listener = start(
        service_env, tmp_path, standin, HEARTBEAT_S="5", HEARTBEAT_STALE_S="15", CANARY_S="5"
    )
    detected = []
    with running(listener.proc):
        listener.wait_connected(redis_client)
        settle(database_url, redis_client)
        for _ in range(3):
            before = teardowns(listener, "heartbeat_timeout")
            assert standin.blackhole() == 1
            silent_at = time.monotonic()
            coach_change(database_url)  # lost on the silent socket: the catch-up must bring it
            wait_for(
                lambda b=before: teardowns(listener, "heartbeat_timeout") > b,
                60,
                interval=0.1,
                message="the heartbeat deadline to find the silent link",
            )
            detected.append(time.monotonic() - silent_at)
            assert listener.state(redis_client) is not ListenerState.CONNECTED
            listener.wait_connected(redis_client, 30, "listener back")
            settle(database_url, redis_client)
    print(f"half-open detection: {[round(d, 1) for d in detected]} s")


def test_silent_stall_is_found_by_the_canary_then_caught_up(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    listener = Listener(service_env, tmp_path, standin)  # canary defaults: 5 s, 15 s deadline
    with running(listener.proc):
        listener.wait_connected(redis_client)
        settle(database_url, redis_client)
        wait_for(
            lambda: (
                listener.metric("coachpipe_listener_link_check_seconds_count", check="canary") > 0
            ),
            20,
            message="a canary to come back",
        )
        standin.stall_changes(True)
        stalled_at = time.monotonic()
        coach_change(database_url)
        wait_for(
            lambda: teardowns(listener, "canary_timeout") >= 1,
            60,
            interval=0.1,
            message="the canary to find the stalled subscription",
        )
        detected = time.monotonic() - stalled_at
        standin.stall_changes(False)
        listener.wait_connected(redis_client, 30, "listener back")
        settle(database_url, redis_client)
    print(f"silent stall detection: {detected:.1f} s")


def test_changes_during_a_gap_are_caught_up_deletes_and_truncate_included(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    listener = start(service_env, tmp_path, standin)
    with running(listener.proc):
        listener.wait_connected(redis_client)
        settle(database_url, redis_client)
        wait_for(
            lambda: (
                listener.metric("coachpipe_listener_link_check_seconds_count", check="canary") > 0
            ),
            20,
            message="a canary to come back",
        )
        for trial in range(2):
            standin.set_down(True)
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(
                    "DELETE FROM session_ratings WHERE id = (SELECT id FROM session_ratings "
                    "ORDER BY id LIMIT 1)"
                )
                conn.execute(
                    "UPDATE sessions SET coach_id = (SELECT id FROM users WHERE role = 'coach' "
                    "ORDER BY id DESC LIMIT 1) WHERE id = (SELECT id FROM sessions ORDER BY id "
                    "LIMIT 1)"
                )
                conn.execute("UPDATE goals SET progress = 100 WHERE id = (SELECT id FROM goals "
                             "ORDER BY id LIMIT 1)")  # fmt: skip
                conn.execute("DELETE FROM session_feedback WHERE id = (SELECT id FROM "
                             "session_feedback ORDER BY id LIMIT 1)")  # fmt: skip
                if trial:
                    conn.execute("TRUNCATE session_ratings")
            standin.set_down(False)
            back = time.monotonic()
            listener.wait_connected(redis_client, 30, "listener back")
            settle(database_url, redis_client)
            print(f"gap {trial}: every aggregate correct {time.monotonic() - back:.1f} s after")
    assert "scope='change log'" in listener.proc.output() or "change log" in listener.proc.output()


def test_truncate_while_connected_refreshes_the_table(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    listener = start(service_env, tmp_path, standin)
    with running(listener.proc):
        listener.wait_connected(redis_client)
        settle(database_url, redis_client)
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM session_ratings").fetchone()[0] > 0
            conn.execute("TRUNCATE session_ratings")
        wait_for(
            lambda: listener.metric("coachpipe_wide_refresh_requests_total", reason="truncate") > 0,
            20,
            message="the TRUNCATE notice to arrive",
        )
        settle(database_url, redis_client)
        assert teardowns(listener) == 0


def test_every_error_row_is_answered(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    seed.load(database_url, SMALL)
    listener = start(service_env, tmp_path, standin)
    with running(listener.proc):
        listener.wait_connected(redis_client)
        settle(database_url, redis_client)
        # A real row over 1 MiB: the server sends "Error 413" keeping the short fields only.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO session_feedback (session_id, coach_id, client_id, comment) "
                "SELECT id, coach_id, client_id, repeat('x', 1100000) FROM sessions "
                "ORDER BY id LIMIT 1"
            )
        wait_for(lambda: listener.metric("coachpipe_bad_input_total", reason="server_error_413")
                 >= 1, 20, message="the 413 row to be counted")  # fmt: skip
        settle(database_url, redis_client)  # its coach was refreshed
        # 401: empty record, null commit timestamp (the client alone drops it): wide refresh.
        unauthorized = change_data("goals", "INSERT", {}, errors=["Error 401: Unauthorized"]) | {
            "commit_timestamp": None,
            "columns": [],
        }
        wide = listener.metric("coachpipe_wide_refresh_requests_total", table="goals")
        standin.send_change(unauthorized)
        wait_for(
            lambda: (
                listener.metric("coachpipe_bad_input_total", reason="server_error_401") >= 1
                and listener.metric("coachpipe_wide_refresh_requests_total", table="goals") > wide
            ),
            20,
            message="the 401 row answered by a wide refresh",
        )
        # ids matching no binding: counted, logged, still answered.
        events = listener.metric("coachpipe_events_total", source="supabase")
        standin.send_change(
            change_data("goals", "INSERT", {"coach_id": str(uuid.uuid4())}), ids=[7]
        )
        wait_for(
            lambda: (
                listener.metric("coachpipe_bad_input_total", reason="unmatched_ids") >= 1
                and listener.metric("coachpipe_events_total", source="supabase") > events
            ),
            20,
            message="the unmatched frame counted and answered",
        )
        assert teardowns(listener) == 0
    output = listener.proc.output()
    assert "server_error_row" in output and "server_error_413" in output
    assert "unmatched_change" in output


def test_patient_subscribe_then_red_after_a_long_outage(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn,
) -> None:  # fmt: skip
    listener = start(service_env, tmp_path, standin, RED_AFTER_S="4")
    board = HealthBoard(redis_client, stale_after_s=3, red_after_s=4)
    with running(listener.proc):
        listener.wait_connected(redis_client)
        # A busy tenant: "Subscribed to PostgreSQL" 25 s after the join. Yellow, no teardown.
        standin.pause_ready(25)
        standin.drop_connections(1011)
        wait_for(
            lambda: listener.state(redis_client) is ListenerState.SUBSCRIBING,
            20,
            message="subscribing",
        )
        assert board.status().color in (Color.YELLOW, Color.RED)
        torn = teardowns(listener)
        listener.wait_connected(redis_client, 60, "accepted when it comes")
        assert teardowns(listener) == torn
        standin.pause_ready(0)
        standin.set_down(True)
        wait_for(lambda: board.status().color is Color.YELLOW, 10, message="yellow")
        wait_for(lambda: board.status().color is Color.RED, 20, message="red after RED_AFTER_S")
        standin.set_down(False)
        wait_for(lambda: board.status().color is Color.GREEN, 30, message="green again")


def test_reconnect_after_a_drop(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn,
) -> None:  # fmt: skip
    """Default backoff; the stand-in announces "Subscribed" 0.2 s after the join."""
    listener = start(service_env, tmp_path, standin)
    took = []
    with running(listener.proc):
        listener.wait_connected(redis_client)
        for _ in range(5):
            ready = listener.metric("coachpipe_listener_reconnects_total")
            joins = standin.joins
            standin.drop_connections(1011)
            dropped = time.monotonic()
            wait_for(
                lambda j=joins, r=ready: (
                    standin.joins > j
                    and listener.metric("coachpipe_listener_reconnects_total") > r
                    and standin.ready_topics() == ["realtime:coachpipe"]
                ),
                30,
                interval=0.02,
                message="reconnected and subscribed",
            )
            took.append(time.monotonic() - dropped)
    print(f"reconnect after a drop (to 'Subscribed'): {[round(t, 2) for t in took]} s")


def test_stale_close_is_ignored_and_a_forgotten_channel_is_rebuilt(
    database_url: str, redis_client: redis.Redis, service_env: dict[str, str], tmp_path: Path,
    standin: RealtimeStandIn, worker: Proc,
) -> None:  # fmt: skip
    """A `phx_close` naming an older join (what Phoenix sends after a duplicate join) leaves
    the healthy channel alone; a channel the server ended without a word is found by the
    channel probe (Phoenix answers "unmatched topic") and rebuilt, the gap caught up."""
    seed.load(database_url, SMALL)
    # The canary is slow here, so only the probe can find the forgotten channel in time.
    listener = start(
        service_env, tmp_path, standin, HEARTBEAT_S="1", CANARY_S="60", CANARY_DEADLINE_S="120"
    )
    with running(listener.proc):
        listener.wait_connected(redis_client)
        settle(database_url, redis_client)
        sockets, torn = standin.total_connections, teardowns(listener)
        assert standin.send_stale_close() == 1
        wait_for(
            lambda: listener.metric("coachpipe_bad_input_total", reason="stale_join_ref") >= 1,
            10,
            message="the stale close to be counted",
        )
        coach_change(database_url)
        settle(database_url, redis_client)  # delivered through the same channel
        # The client alone would have closed its channel: the listener would rebuild it within
        # its 1 s liveness check.
        holds(
            lambda: standin.total_connections == sockets and teardowns(listener) == torn,
            3,
            "a stale close tore the healthy channel down",
        )

        assert standin.forget_channels() == 1
        coach_change(database_url)  # no channel on the server: lost, then caught up
        wait_for(
            lambda: teardowns(listener, "unmatched_topic") >= 1,
            20,
            message="the probe to find the forgotten channel",
        )
        listener.wait_connected(redis_client, 30, "listener back")
        settle(database_url, redis_client)
        assert teardowns(listener, "canary_timeout") == 0
