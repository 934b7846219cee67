"""The listener's last-event marker: a missing or unusable marker falls back to a refresh of
every active coach (never to "now", never to a crash loop), with a log line and a counter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from config import Settings
from listeners import last_event
from listeners.last_event import Unusable
from listeners.runner import Listener
from listeners.source import Batch, Resync, Source, SourceStatus
from pipeline import keys, seed
from pipeline.aggregates import CRITICAL
from pipeline.db import make_engine
from tests.recording_sender import RecordingSender

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CRITICAL_NAMES = sorted(a.name for a in CRITICAL)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, Unusable.MISSING),
        (b"", Unusable.UNREADABLE),
        (b"garbage", Unusable.UNREADABLE),
        (b"\xff\xfe\x00", Unusable.UNREADABLE),
        (b"1764504000.5", Unusable.UNREADABLE),
        (b"2026-11-30T11:00:00", Unusable.NO_TIMEZONE),
        (b"2026-11-30T12:02:00+00:00", Unusable.IN_FUTURE),
        (b"9999-12-31T23:59:59+00:00", Unusable.IN_FUTURE),
        (b"2026-11-30T12:00:30+00:00", datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC)),
        (b"2026-11-30T13:00:00+02:00", datetime(2026, 11, 30, 11, 0, tzinfo=UTC)),
        ("2026-11-30T11:00:00Z\n", datetime(2026, 11, 30, 11, 0, tzinfo=UTC)),
        (b"2020-01-01T00:00:00+00:00", datetime(2020, 1, 1, tzinfo=UTC)),
    ],
)
def test_decode(raw: object, expected: object) -> None:
    assert last_event.decode(raw, NOW) == expected


def test_encode_round_trips() -> None:
    stamp = NOW.timestamp() - 12.25
    assert last_event.decode(last_event.encode(stamp).encode(), NOW) == NOW - timedelta(
        seconds=12.25
    )


class OneResync(Source):
    """A source that asks for one catch-up without a bound of its own, then ends (as the
    `supabase` source does after dropping events while Redis was away)."""

    name = "supabase"

    def __init__(self) -> None:
        self.status = SourceStatus()

    async def items(self) -> AsyncIterator[Batch | Resync]:
        yield Resync("events dropped while the queue was full")

    async def confirm(self, position: str | None) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
def listener(
    settings: Settings, database_url: str, redis_client: redis.Redis
) -> Iterator[tuple[Listener, RecordingSender]]:
    engine = make_engine(database_url)
    sender = RecordingSender()
    yield Listener(OneResync(), settings, client=redis_client, engine=engine, sender=sender), sender
    engine.dispose()


def fallbacks(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "coachpipe_catch_up_fallbacks_total", {"source": "supabase", "reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (None, "missing"),
        (b"not a time", "unreadable"),
        (b"\xff\xfe", "unreadable"),
        (b"2026-11-30T11:00:00", "no_timezone"),
        (b"2999-01-01T00:00:00+00:00", "in_future"),
    ],
)
def test_an_unusable_marker_refreshes_every_active_coach(
    listener: tuple[Listener, RecordingSender],
    redis_client: redis.Redis,
    stored: bytes | None,
    reason: str,
) -> None:
    runner, sender = listener
    if stored is not None:
        redis_client.set(keys.source_last_event("supabase"), stored)
    before = fallbacks(reason)
    with capture_logs() as logs:
        asyncio.run(runner.run())  # before: a ValueError ended the listener, at every restart
    assert sorted(aggregate for aggregate, _ in sender.wide_refreshes) == CRITICAL_NAMES
    assert fallbacks(reason) == before + 1
    [line] = [entry for entry in logs if entry["event"] == "last_event_marker_unusable"]
    assert line["reason"] == reason
    assert line["fallback"] == "every active coach"


def test_a_usable_marker_catches_up_the_coaches_changed_since(
    listener: tuple[Listener, RecordingSender], redis_client: redis.Redis, database_url: str
) -> None:
    runner, sender = listener
    seed.load(database_url, seed.SeedPlan(coaches=2, clients_per_coach=2, sessions_per_client=1))
    with psycopg.connect(database_url) as conn:
        coach, client = conn.execute(
            "SELECT coach_id, id FROM users WHERE role = 'client' LIMIT 1"
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            "INSERT INTO goals (coach_id, client_id, title, progress) VALUES (%s, %s, 'g', 10)",
            (coach, client),
        )
    marker = last_event.encode((datetime.now(UTC) - timedelta(minutes=1)).timestamp())
    redis_client.set(keys.source_last_event("supabase"), marker)
    asyncio.run(runner.run())
    assert not sender.wide_refreshes
    due = runner.scheduler.due_pairs()
    for name in CRITICAL_NAMES:
        assert (name, coach) in due, name
