"""The Realtime stand-in against the real `realtime` client and raw Phoenix frames.

The listeners' end-to-end tests trust the stand-in to behave like Supabase Realtime, so these
tests pin that behaviour down: the join handshake, rendering of real committed rows, fan-out by
binding, and what each failure switch makes the real client do.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from realtime import AsyncRealtimeChannel, AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.types import RealtimePostgresChangesListenEvent
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from devtools.processes import wait_for
from devtools.realtime_standin import RealtimeStandIn, binding_id

SUBSCRIBED = RealtimeSubscribeStates.SUBSCRIBED
CHANNEL_ERROR = RealtimeSubscribeStates.CHANNEL_ERROR
CLOSED = RealtimeSubscribeStates.CLOSED
COMMIT_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SESSION_COLUMNS = [
    ("id", "uuid"),
    ("coach_id", "uuid"),
    ("client_id", "uuid"),
    ("status", "text"),
    ("scheduled_at", "timestamptz"),
    ("duration_minutes", "int4"),
    ("price_cents", "int4"),
    ("completed_at", "timestamptz"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
]


# realtime 2.34.1 logs closes with websockets' deprecated `ConnectionClosed.code`.
pytestmark = pytest.mark.filterwarnings("ignore:ConnectionClosed.*deprecated:DeprecationWarning")


@pytest.fixture
def standin(database_url: str) -> Iterator[RealtimeStandIn]:
    with RealtimeStandIn(database_url) as server:
        yield server


# -- helpers ---------------------------------------------------------------------------------------


@dataclass
class Feed:
    """What the client's (sync, never raising) callbacks saw on one channel."""

    changes: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    states: list[RealtimeSubscribeStates] = field(default_factory=list)
    errors: list[Exception | None] = field(default_factory=list)
    system: list[Any] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def on_change(self, payload: Any) -> None:
        self.changes.put_nowait(payload)

    def on_system(self, message: Any) -> None:
        self.system.append(message)
        if message.extension == "postgres_changes" and message.status == "ok":
            self.ready.set()

    def on_state(self, state: RealtimeSubscribeStates, error: Exception | None) -> None:
        self.states.append(state)
        self.errors.append(error)
        if state != SUBSCRIBED:
            self.ready.clear()

    async def wait_ready(self, timeout: float = 5) -> None:
        await asyncio.wait_for(self.ready.wait(), timeout)

    async def next_change(self, timeout: float = 5) -> dict[str, Any]:
        return await asyncio.wait_for(self.changes.get(), timeout)


async def subscribe(
    standin: RealtimeStandIn,
    name: str = "sessions-feed",
    *,
    event: str = "*",
    table: str = "sessions",
    filter: str | None = None,
) -> tuple[AsyncRealtimeClient, AsyncRealtimeChannel, Feed]:
    """One client, one channel with one binding, subscribed and ready."""
    client = AsyncRealtimeClient(f"{standin.url}/realtime/v1", token="anon-key")
    feed = Feed()
    channel = client.channel(name).on_postgres_changes(
        RealtimePostgresChangesListenEvent(event),
        feed.on_change,
        table=table,
        schema="public",
        filter=filter,
    )
    channel.on_system(feed.on_system)
    await channel.subscribe(feed.on_state)
    assert feed.states == [SUBSCRIBED]
    await feed.wait_ready()
    return client, channel, feed


async def until(predicate: Callable[[], object], timeout: float = 5, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {message or predicate}")
        await asyncio.sleep(0.01)


def add_coach_and_client(url: str) -> tuple[str, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        coach = conn.execute(
            "INSERT INTO users (role, full_name) VALUES ('coach', 'Coach') RETURNING id"
        ).fetchone()
        assert coach is not None
        client = conn.execute(
            "INSERT INTO users (role, coach_id, full_name) VALUES ('client', %s, 'Client') "
            "RETURNING id",
            (coach[0],),
        ).fetchone()
        assert client is not None
        return str(coach[0]), str(client[0])


def add_session(url: str, coach: str, client: str, scheduled_at: str = "now") -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO sessions (coach_id, client_id, status, scheduled_at) "
            "VALUES (%s, %s, 'scheduled', %s::timestamptz) RETURNING id",
            (coach, client, scheduled_at),
        ).fetchone()
        assert row is not None
        return str(row[0])


def injected(table: str = "unknown_table", **extra: Any) -> dict[str, Any]:
    return {
        "schema": "public",
        "table": table,
        "type": "INSERT",
        "commit_timestamp": "2025-03-10T17:02:41.337Z",
        "errors": None,
        "columns": [{"name": "id", "type": "uuid"}],
        "record": {"id": "6f1c2b0e-3a7d-4c59-9a42-1d2e3f4a5b6c"},
        **extra,
    }


# -- the real client -------------------------------------------------------------------------------


def test_join_is_answered_then_announced_ready(standin: RealtimeStandIn) -> None:
    async def scenario() -> None:
        client, _, feed = await subscribe(standin)
        [ready] = feed.system
        assert (ready.channel, ready.extension, ready.status, ready.message) == (
            "sessions-feed",
            "postgres_changes",
            "ok",
            "Subscribed to PostgreSQL",
        )
        assert standin.ready_topics() == ["realtime:sessions-feed"]
        assert (standin.connections, standin.joins) == (1, 1)
        await client.close()

    asyncio.run(scenario())


def test_committed_rows_arrive_rendered_like_supabase(
    standin: RealtimeStandIn, database_url: str
) -> None:
    async def scenario() -> None:
        client, _, feed = await subscribe(standin)
        users = Feed()
        users_channel = client.channel("users-feed").on_postgres_changes(
            RealtimePostgresChangesListenEvent.Insert,
            users.on_change,
            table="users",
            schema="public",
        )
        await users_channel.on_system(users.on_system).subscribe(users.on_state)
        await users.wait_ready()

        coach, client_id = await asyncio.to_thread(add_coach_and_client, database_url)
        session = await asyncio.to_thread(
            add_session, database_url, coach, client_id, "2025-03-14 08:30:00+00"
        )
        inserted = await feed.next_change()

        def update_then_delete() -> None:
            with psycopg.connect(database_url) as conn:  # one transaction: one commit timestamp
                conn.execute(
                    "UPDATE sessions SET status = 'completed', price_cents = 4500 WHERE id = %s",
                    (session,),
                )
                conn.execute("DELETE FROM sessions WHERE id = %s", (session,))

        await asyncio.to_thread(update_then_delete)
        updated, deleted = await feed.next_change(), await feed.next_change()

        assert inserted["ids"] == [
            binding_id({"event": "*", "schema": "public", "table": "sessions"})
        ]
        data = inserted["data"]
        assert (data["schema"], data["table"], data["type"], data["errors"]) == (
            "public",
            "sessions",
            "INSERT",
            None,
        )
        assert [(c["name"], c["type"]) for c in data["columns"]] == SESSION_COLUMNS
        assert "old_record" not in data
        record = data["record"]
        assert record["id"] == session
        assert record["coach_id"] == coach
        assert record["scheduled_at"] == "2025-03-14T08:30:00+00:00"
        assert (record["duration_minutes"], record["price_cents"]) == (60, None)
        assert COMMIT_TIMESTAMP.match(data["commit_timestamp"])
        committed = datetime.fromisoformat(data["commit_timestamp"].replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - committed).total_seconds()) < 60

        update = updated["data"]
        assert update["type"] == "UPDATE"
        assert (update["record"]["status"], update["record"]["price_cents"]) == ("completed", 4500)
        assert update["old_record"] == record  # REPLICA IDENTITY FULL: the whole old row

        delete = deleted["data"]
        assert delete["type"] == "DELETE"
        assert "record" not in delete
        assert delete["old_record"]["coach_id"] == coach
        assert delete["old_record"]["status"] == "completed"
        assert delete["commit_timestamp"] == update["commit_timestamp"]
        assert COMMIT_TIMESTAMP.match(delete["commit_timestamp"])

        # Only the users binding's id fires the users callback: coach then client.
        first, second = await users.next_change(), await users.next_change()
        assert [first["data"]["record"]["id"], second["data"]["record"]["id"]] == [coach, client_id]
        assert second["data"]["record"]["coach_id"] == coach
        assert feed.changes.empty()
        await client.close()

    asyncio.run(scenario())


def test_filter_matches_record_and_old_record_of_deletes(
    standin: RealtimeStandIn, database_url: str
) -> None:
    async def scenario() -> None:
        mine = await asyncio.to_thread(add_coach_and_client, database_url)
        other = await asyncio.to_thread(add_coach_and_client, database_url)
        client, _, feed = await subscribe(standin, filter=f"coach_id=eq.{mine[0]}")
        await asyncio.to_thread(add_session, database_url, *other)
        session = await asyncio.to_thread(add_session, database_url, *mine)
        assert (await feed.next_change())["data"]["record"]["id"] == session
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM sessions")
        deleted = await feed.next_change()
        assert (deleted["data"]["type"], deleted["data"]["old_record"]["id"]) == ("DELETE", session)
        # Changes come in commit order: had the other coach's delete been delivered, it would
        # come before this later insert of ours.
        later = await asyncio.to_thread(add_session, database_url, *mine)
        following = (await feed.next_change())["data"]
        assert (following["type"], (following.get("record") or {}).get("id")) == ("INSERT", later)
        await client.close()

    asyncio.run(scenario())


def test_values_are_cast_by_postgres(standin: RealtimeStandIn, database_url: str) -> None:
    async def scenario() -> None:
        client, _, feed = await subscribe(standin, "goals-feed", event="INSERT", table="goals")
        coach, client_id = await asyncio.to_thread(add_coach_and_client, database_url)
        title = 'Run "5k" \\ en été'
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO goals (coach_id, client_id, title, progress, target_date) "
                "VALUES (%s, %s, %s, 40, '2025-03-14')",
                (coach, client_id, title),
            )
        data = (await feed.next_change())["data"]
        types = {c["name"]: c["type"] for c in data["columns"]}
        assert (types["progress"], types["target_date"], types["title"]) == ("int2", "date", "text")
        record = data["record"]
        assert (record["title"], record["progress"], record["target_date"]) == (
            title,
            40,
            "2025-03-14",
        )
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", record["created_at"])
        await client.close()

    asyncio.run(scenario())


def test_dropped_connection_makes_the_client_rejoin(
    standin: RealtimeStandIn, database_url: str
) -> None:
    async def scenario() -> None:
        client, _, feed = await subscribe(standin)
        assert standin.drop_connections(1011) == 1
        await until(lambda: feed.states[-2:] == [CHANNEL_ERROR, SUBSCRIBED])
        await feed.wait_ready()
        assert standin.total_connections == 2
        assert standin.close_codes == [1011]
        closed = feed.errors[-2]
        assert isinstance(closed, ConnectionClosed)
        assert closed.rcvd is not None and closed.rcvd.code == 1011
        assert [m.status for m in feed.system] == ["ok", "ok"]

        coach, client_id = await asyncio.to_thread(add_coach_and_client, database_url)
        session = await asyncio.to_thread(add_session, database_url, coach, client_id)
        assert (await feed.next_change())["data"]["record"]["id"] == session
        await client.close()

    asyncio.run(scenario())


def test_injected_changes_reach_the_callback_when_ids_match(standin: RealtimeStandIn) -> None:
    async def scenario() -> None:
        client, _, feed = await subscribe(standin)
        assert standin.send_change(injected(), ids=[12345]) == 1  # no binding of ours: ignored
        assert standin.send_raw("{not json") == 1  # logged and dropped by the client
        assert standin.send_change(injected(record={"coach_id": 42})) == 1
        payload = await feed.next_change()
        assert payload["ids"] == [
            binding_id({"event": "*", "schema": "public", "table": "sessions"})
        ]
        assert payload["data"]["table"] == "unknown_table"
        assert payload["data"]["record"] == {"coach_id": 42}
        assert standin.changes_sent == 2
        # In order on one socket: had anything else reached the callback, it would come first.
        assert standin.send_change(injected(record={"coach_id": 43})) == 1
        assert (await feed.next_change())["data"]["record"] == {"coach_id": 43}
        await client.close()

    asyncio.run(scenario())


def test_delayed_changes_and_ready(standin: RealtimeStandIn) -> None:
    async def scenario() -> None:
        standin.pause_ready(0.4)
        started = time.monotonic()
        client, _, feed = await subscribe(standin)
        assert time.monotonic() - started >= standin.ready_delay + 0.4
        standin.delay_changes(0.3)
        sent = time.monotonic()
        standin.send_change(injected())
        await feed.next_change()
        assert time.monotonic() - sent >= 0.3
        await client.close()

    asyncio.run(scenario())


def test_oversized_frame_costs_the_socket(standin: RealtimeStandIn) -> None:
    async def scenario() -> None:
        client, _, feed = await subscribe(standin)
        assert standin.send_oversized() == 1
        await until(lambda: feed.states[-2:] == [CHANNEL_ERROR, SUBSCRIBED])
        await feed.wait_ready()
        assert standin.total_connections == 2
        assert standin.close_codes == [1009]  # the client refused the frame
        assert feed.changes.empty()
        await client.close()

    asyncio.run(scenario())


def test_down_refuses_upgrades_and_loses_changes(
    standin: RealtimeStandIn, database_url: str
) -> None:
    async def scenario() -> None:
        client, _, feed = await subscribe(standin)
        standin.set_down(True)
        await until(lambda: CHANNEL_ERROR in feed.states)
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{standin.port}/socket/websocket?vsn=1.0.0")
        assert refused.value.response.status_code == 503

        coach, client_id = await asyncio.to_thread(add_coach_and_client, database_url)
        await until(lambda: standin.changes_dropped >= 2, message="changes consumed while down")

        standin.set_down(False)  # the client's next retry (after 1 s) gets in
        await until(lambda: feed.states[-1] == SUBSCRIBED)
        await feed.wait_ready()
        session = await asyncio.to_thread(add_session, database_url, coach, client_id)
        assert (await feed.next_change())["data"]["record"]["id"] == session
        await client.close()

    asyncio.run(scenario())


def test_phx_error_makes_the_client_rejoin(standin: RealtimeStandIn) -> None:
    async def scenario() -> None:
        client, _, feed = await subscribe(standin)
        assert standin.send_phx_error() == 1
        await until(lambda: feed.states[-2:] == [CHANNEL_ERROR, SUBSCRIBED])
        await feed.wait_ready()
        assert standin.joins == 2
        await client.close()

    asyncio.run(scenario())


def test_system_error_then_rejoin_leaves_the_channel_closed(standin: RealtimeStandIn) -> None:
    """The reference's pitfall: the rejoin duplicates a live join, whose phx_close (for the old
    join ref) closes the client's new channel for good."""

    async def scenario() -> None:
        client, channel, feed = await subscribe(standin)
        assert standin.send_system_error("boom") == 1
        await until(lambda: feed.states[-3:] == [CHANNEL_ERROR, SUBSCRIBED, CLOSED])
        assert channel.is_closed
        # The server still holds (and readies) the newer join the client has given up on.
        await until(lambda: standin.ready_topics() == ["realtime:sessions-feed"])
        await client.close()

    asyncio.run(scenario())


# -- raw Phoenix frames ----------------------------------------------------------------------------


class Raw:
    """A raw Phoenix socket speaking vsn 1.0.0 (objects) or 2.0.0 (arrays)."""

    def __init__(self, ws: ClientConnection, vsn: str) -> None:
        self.ws, self.vsn = ws, vsn

    async def send(
        self, topic: str, event: str, payload: Any, ref: str | None, join_ref: str | None = None
    ) -> None:
        if self.vsn == "2.0.0":
            frame: Any = [join_ref, ref, topic, event, payload]
        else:
            frame = {"topic": topic, "event": event, "payload": payload, "ref": ref}
            frame["join_ref"] = join_ref
        await self.ws.send(json.dumps(frame))

    async def recv(self) -> tuple[str | None, str | None, str, str, Any]:
        """(join_ref, ref, topic, event, payload); vsn 1.0.0 never carries join_ref."""
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        if self.vsn == "2.0.0":
            assert isinstance(frame, list)
            return (frame[0], frame[1], frame[2], frame[3], frame[4])
        assert set(frame) == {"event", "payload", "ref", "topic"}
        return None, frame["ref"], frame["topic"], frame["event"], frame["payload"]


def join_payload(*bindings: dict[str, Any]) -> dict[str, Any]:
    return {"config": {"postgres_changes": list(bindings), "private": False}, "access_token": "x"}


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
def test_raw_phoenix_frames(standin: RealtimeStandIn, database_url: str, vsn: str) -> None:
    v2 = vsn == "2.0.0"
    users = {"event": "INSERT", "schema": "public", "table": "users"}
    coach_filter = {"event": "*", "schema": "public", "table": "users", "filter": "role=eq.coach"}

    def jref(ref: str) -> str | None:
        return ref if v2 else None

    async def scenario() -> None:
        url = f"ws://127.0.0.1:{standin.port}/socket/websocket?apikey=k&vsn={vsn}"
        async with connect(url) as ws:
            raw = Raw(ws, vsn)
            await raw.send("phoenix", "heartbeat", {}, "7")
            assert await raw.recv() == (
                None,
                "7",
                "phoenix",
                "phx_reply",
                {"status": "ok", "response": {}},
            )

            await raw.send("feed", "phx_join", join_payload(users), "1", "1")
            assert await raw.recv() == (  # Phoenix's "ignore" reply carries no join_ref
                None,
                "1",
                "feed",
                "phx_reply",
                {"status": "error", "response": {"reason": "unmatched topic"}},
            )

            await raw.send("realtime:feed", "phx_join", join_payload(users, coach_filter), "2", "2")
            echoed = [{**b, "id": binding_id(b)} for b in (users, coach_filter)]
            assert await raw.recv() == (
                jref("2"),
                "2",
                "realtime:feed",
                "phx_reply",
                {"status": "ok", "response": {"postgres_changes": echoed}},
            )
            ready = {
                "channel": "feed",
                "extension": "postgres_changes",
                "status": "ok",
                "message": "Subscribed to PostgreSQL",
            }
            assert await raw.recv() == (None, None, "realtime:feed", "system", ready)

            coach, client = await asyncio.to_thread(add_coach_and_client, database_url)
            for row, ids in ((coach, [b["id"] for b in echoed]), (client, [echoed[0]["id"]])):
                join_ref, ref, topic, event, payload = await raw.recv()
                assert (join_ref, ref, topic, event) == (
                    None,
                    None,
                    "realtime:feed",
                    "postgres_changes",
                )
                assert (payload["ids"], payload["data"]["record"]["id"]) == (ids, row)

            # A second join of the topic replaces the first: reply, then phx_close of join 2.
            # The binding keeps its id: the id is the hash of its params, not a counter.
            await raw.send("realtime:feed", "phx_join", join_payload(users), "3", "3")
            assert await raw.recv() == (
                jref("3"),
                "3",
                "realtime:feed",
                "phx_reply",
                {"status": "ok", "response": {"postgres_changes": [echoed[0]]}},
            )
            assert await raw.recv() == (jref("2"), "2", "realtime:feed", "phx_close", {})
            assert (await raw.recv())[3] == "system"

            # A message carrying the older join's ref, a leave included, is dropped unanswered;
            # a push on a topic not joined gets "unmatched topic"; leaving one is answered ok.
            await raw.send("realtime:feed", "phx_leave", {}, "31", "2")
            await raw.send("realtime:feed", "broadcast", {}, "32", "2")
            await raw.send("realtime:nobody", "broadcast", {}, "33", "7")
            assert await raw.recv() == (
                None,
                "33",
                "realtime:nobody",
                "phx_reply",
                {"status": "error", "response": {"reason": "unmatched topic"}},
            )
            await raw.send("realtime:nobody", "phx_leave", {}, "34", "7")
            assert await raw.recv() == (
                jref("7"),
                "34",
                "realtime:nobody",
                "phx_reply",
                {"status": "ok", "response": {}},
            )
            assert standin.stale_messages == 2
            assert standin.ready_topics() == ["realtime:feed"]

            await raw.send("realtime:feed", "phx_leave", {}, "4", "3")
            assert await raw.recv() == (
                jref("3"),
                "4",
                "realtime:feed",
                "phx_reply",
                {"status": "ok", "response": {}},
            )
            assert await raw.recv() == (jref("3"), "3", "realtime:feed", "phx_close", {})

            # A table outside the publication: the join succeeds, the subscription does not.
            unpublished = {"event": "*", "schema": "public", "table": "alembic_version"}
            await raw.send("realtime:other", "phx_join", join_payload(unpublished), "5", "5")
            assert (await raw.recv())[3] == "phx_reply"
            *_, event, payload = await raw.recv()
            assert (event, payload["status"]) == ("system", "error")
            assert payload["message"].startswith("Unable to subscribe to changes")
            assert standin.ready_topics() == []

    asyncio.run(scenario())


def test_unknown_path_is_refused(standin: RealtimeStandIn) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{standin.port}/nope/websocket")
        assert refused.value.response.status_code == 404

    asyncio.run(scenario())


def test_stop_drops_the_slot_and_the_thread(database_url: str) -> None:
    standin = RealtimeStandIn(database_url).start()
    with psycopg.connect(database_url, autocommit=True) as conn:
        query = "SELECT temporary FROM pg_replication_slots WHERE slot_name = %s"
        assert conn.execute(query, (standin.slot_name,)).fetchone() == (True,)
        standin.stop()
        # The server drops a temporary slot when its walsender exits, just after the socket
        # closes: wait for it rather than race it.
        wait_for(
            lambda: conn.execute(query, (standin.slot_name,)).fetchone() is None,
            10,
            message="temporary slot dropped",
        )
    assert not [t for t in threading.enumerate() if t.name == "realtime-standin"]
    standin.stop()  # idempotent
