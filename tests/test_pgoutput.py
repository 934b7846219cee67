"""The pgoutput decoder on messages from a real server, and on damaged ones."""

from __future__ import annotations

import select
import time
import uuid
from typing import Any

import psycopg
import psycopg2
import psycopg2.extras
import pytest

from listeners.pgoutput import Begin, Commit, Decoder
from pipeline.db import libpq_dsn
from pipeline.errors import BadEventError
from pipeline.events import ChangeEvent, ChangeType


def capture(
    database_url: str, statements: list[str], params: dict[str, Any]
) -> list[tuple[bytes, int]]:
    """Run `statements` in one transaction and return the raw pgoutput messages they produce."""
    slot = f"test_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(
        libpq_dsn(database_url), connection_factory=psycopg2.extras.LogicalReplicationConnection
    )
    cur = conn.cursor()
    cur.execute(f"CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput")
    with psycopg.connect(database_url) as writer:
        for statement in statements:
            writer.execute(statement, params)
        writer.commit()
    cur.start_replication(
        slot_name=slot,
        decode=False,
        options={"proto_version": "1", "publication_names": "coachpipe"},
    )
    messages: list[tuple[bytes, int]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = cur.read_message()
        if message is None:
            select.select([conn], [], [], 0.2)
            continue
        messages.append((message.payload, message.data_start))
        if message.payload[:1] == b"C":
            break
    conn.close()
    return messages


def decode_all(messages: list[tuple[bytes, int]]) -> tuple[list[Any], list[ChangeEvent]]:
    decoder = Decoder()
    boundaries, events = [], []
    for payload, start in messages:
        result = decoder.decode(payload, start)
        if isinstance(result, Begin | Commit):
            boundaries.append(result)
        else:
            events.extend(result)
    return boundaries, events


def test_inserts_updates_deletes_and_truncates_decode_with_old_rows(database_url: str) -> None:
    coach, other, client = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    messages = capture(
        database_url,
        [
            "INSERT INTO users (id, role, full_name) VALUES (%(coach)s, 'coach', 'A'), (%(other)s, 'coach', 'B')",
            "INSERT INTO users (id, role, coach_id, full_name) VALUES (%(client)s, 'client', %(coach)s, 'Zoë')",
            "UPDATE users SET coach_id = %(other)s WHERE id = %(client)s",
            "DELETE FROM users WHERE id = %(client)s",
            "TRUNCATE goals",
        ],
        {"coach": coach, "other": other, "client": client},
    )
    (begin, commit), events = decode_all(messages)
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    kinds = [(e.table, e.type) for e in events]
    assert kinds == [
        ("users", ChangeType.INSERT), ("users", ChangeType.INSERT), ("users", ChangeType.INSERT),
        ("users", ChangeType.UPDATE), ("users", ChangeType.DELETE), ("goals", ChangeType.TRUNCATE),
    ]  # fmt: skip
    moved = events[3]
    assert moved.new is not None and moved.old is not None
    assert (moved.new["coach_id"], moved.old["coach_id"]) == (str(other), str(coach))
    assert moved.new["full_name"] == "Zoë"
    deleted = events[4]
    assert deleted.new is None and deleted.old is not None and deleted.old["role"] == "client"
    assert all(e.commit_ts == begin.commit_ts for e in events)
    assert commit.end_lsn > 0


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"I",
        b"I\x00\x00\x00\x01N\x00\x01t",
        b"R\x00\x00\x00\x01public",
        b"Z\x01\x02",
        b"U\xff\xff\xff\xffN",
    ],
    ids=[
        "empty",
        "insert-truncated",
        "insert-unknown-relation",
        "relation-truncated",
        "unknown-kind",
        "update-unknown",
    ],
)
def test_damaged_messages_raise_bad_event_and_leave_the_decoder_usable(payload: bytes) -> None:
    decoder = Decoder()
    try:
        result = decoder.decode(payload, 1)
    except BadEventError as error:
        assert error.reason in {"bad_wal_message", "unknown_relation"}
    else:
        assert result == []  # unknown message kinds are ignored
    assert decoder.decode(
        b"B" + (1).to_bytes(8, "big") + (0).to_bytes(8, "big") + (7).to_bytes(4, "big"), 2
    )
