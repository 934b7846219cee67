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


# --- hand-made messages, as the "Logical Replication Message Formats" page lays them out ------
OID = 16_400  # a relation the stream announces before its changes
INT4, TEXT_OID, BOOL_OID = 23, 25, 16


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def relation(oid: int = OID) -> bytes:
    columns = [("id", INT4), ("coach_id", TEXT_OID), ("done", BOOL_OID)]
    body = b"".join(
        b"\x01" + cstring(name) + type_oid.to_bytes(4, "big") + (-1).to_bytes(4, "big", signed=True)
        for name, type_oid in columns
    )
    return (
        b"R" + oid.to_bytes(4, "big") + cstring("public") + cstring("goals") + b"d"
        + len(columns).to_bytes(2, "big") + body
    )  # fmt: skip


def text(value: bytes) -> bytes:
    return b"t" + len(value).to_bytes(4, "big") + value


def row(*values: bytes, count: int | None = None) -> bytes:
    return (len(values) if count is None else count).to_bytes(2, "big") + b"".join(values)


GOOD_ROW = row(text(b"7"), text(b"coach-1"), text(b"t"))


def change(kind: bytes, *parts: bytes, oid: int = OID) -> bytes:
    return kind + oid.to_bytes(4, "big") + b"".join(parts)


def begin(xid: int = 7) -> bytes:
    return b"B" + (1).to_bytes(8, "big") + (0).to_bytes(8, "big") + xid.to_bytes(4, "big")


COMMIT = b"C\x00" + (1).to_bytes(8, "big") + (2).to_bytes(8, "big") + (0).to_bytes(8, "big")


def truncate(*oids: int) -> bytes:
    return (
        b"T" + len(oids).to_bytes(4, "big") + b"\x00" + b"".join(o.to_bytes(4, "big") for o in oids)
    )


# (name, message, reason) — every damaged message raises `BadEventError` with exactly this
# reason (the label of `coachpipe_bad_input_total`), on a decoder that has seen `relation()`.
DAMAGED = [
    ("empty", b"", "bad_wal_message"),
    ("unknown kind", b"Z\x01\x02", "bad_wal_message"),
    ("a kind of a protocol we did not ask for (v2 stream start)", b"S" + (7).to_bytes(4, "big") + b"\x01", "bad_wal_message"),
    ("a kind in lower case", b"i" + GOOD_ROW, "bad_wal_message"),
    ("begin truncated", begin()[:-2], "bad_wal_message"),
    ("commit truncated", COMMIT[:-1], "bad_wal_message"),
    ("relation truncated in its name", b"R" + (1).to_bytes(4, "big") + b"public", "bad_wal_message"),
    ("relation truncated in its columns", relation(oid=17)[:-3], "bad_wal_message"),
    ("relation name not UTF-8", b"R" + (1).to_bytes(4, "big") + b"\xff\xfe\0goals\0d\0\0", "bad_wal_message"),
    ("insert without relation id", b"I", "bad_wal_message"),
    ("insert without marker", change(b"I"), "bad_wal_message"),
    ("insert without tuple", change(b"I", b"N"), "bad_wal_message"),
    ("insert with a wrong marker", change(b"I", b"K", GOOD_ROW), "bad_wal_message"),
    ("insert with too few values", change(b"I", b"N", row(text(b"7"), text(b"c"))), "bad_wal_message"),
    ("insert with too many values", change(b"I", b"N", row(text(b"7"), text(b"c"), text(b"t"), b"n")), "bad_wal_message"),
    ("insert announcing more values than sent", change(b"I", b"N", row(text(b"7"), count=3)), "bad_wal_message"),
    ("insert with an unknown value kind", change(b"I", b"N", row(text(b"7"), b"x", b"n")), "bad_wal_message"),
    ("insert with a value longer than the message", change(b"I", b"N", row(text(b"7"), b"t\x00\x00\x00\xff" + b"c", b"n")), "bad_wal_message"),
    ("insert with a value not UTF-8", change(b"I", b"N", row(text(b"7"), text(b"\xff\xfe"), b"n")), "bad_wal_message"),
    ("insert with an integer that is not one", change(b"I", b"N", row(text(b"seven"), text(b"c"), b"n")), "bad_wal_message"),
    ("insert for an unannounced relation", change(b"I", b"N", GOOD_ROW, oid=1), "unknown_relation"),
    ("update for an unannounced relation", change(b"U", b"N", GOOD_ROW, oid=0xFFFFFFFF), "unknown_relation"),
    ("update with a wrong marker", change(b"U", b"X", GOOD_ROW), "bad_wal_message"),
    ("update: old row, then no new row", change(b"U", b"O", GOOD_ROW), "bad_wal_message"),
    ("update: old row, then a wrong marker", change(b"U", b"O", GOOD_ROW, b"K", GOOD_ROW), "bad_wal_message"),
    ("delete for an unannounced relation", change(b"D", b"K", GOOD_ROW, oid=2), "unknown_relation"),
    ("delete with a new-row marker", change(b"D", b"N", GOOD_ROW), "bad_wal_message"),
    ("truncate of an unannounced relation", truncate(OID, 5), "unknown_relation"),
    ("truncate announcing more relations than sent", truncate(OID)[:-4], "bad_wal_message"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("message", "reason"), [case[1:] for case in DAMAGED], ids=[case[0] for case in DAMAGED]
)
def test_damaged_messages_raise_bad_event_and_leave_the_decoder_usable(
    message: bytes, reason: str
) -> None:
    decoder = Decoder()
    assert decoder.decode(relation(), 1) == []
    assert isinstance(decoder.decode(begin(), 2), Begin)
    with pytest.raises(BadEventError) as raised:
        decoder.decode(message, 3)
    assert raised.value.reason == reason
    # The stream goes on: the relation cache and the open transaction are intact.
    decoded = decoder.decode(change(b"I", b"N", GOOD_ROW), 4)
    assert isinstance(decoded, list)
    (event,) = decoded
    assert (event.table, event.type, event.new) == (
        "goals",
        ChangeType.INSERT,
        {"id": 7, "coach_id": "coach-1", "done": True},
    )
    assert isinstance(decoder.decode(COMMIT, 5), Commit)


# (name, message, events): well-formed messages decode to exactly these (table, type, new, old).
WELL_FORMED = [
    ("origin", b"O" + (9).to_bytes(8, "big") + cstring("node-a"), []),
    ("type", b"Y" + (16_500).to_bytes(4, "big") + cstring("public") + cstring("mood"), []),
    ("message", b"M\x01" + (9).to_bytes(8, "big") + cstring("app") + (2).to_bytes(4, "big") + b"hi", []),
    ("relation", relation(oid=18), []),
    ("insert", change(b"I", b"N", GOOD_ROW), [("goals", ChangeType.INSERT, {"id": 7, "coach_id": "coach-1", "done": True}, None)]),
    ("insert with nulls", change(b"I", b"N", row(text(b"7"), b"n", b"n")), [("goals", ChangeType.INSERT, {"id": 7, "coach_id": None, "done": None}, None)]),
    ("update", change(b"U", b"N", GOOD_ROW), [("goals", ChangeType.UPDATE, {"id": 7, "coach_id": "coach-1", "done": True}, None)]),
    ("update with an unchanged TOASTed value", change(b"U", b"N", row(text(b"7"), b"u", text(b"f"))), [("goals", ChangeType.UPDATE, {"id": 7, "done": False}, None)]),
    ("update with the old key", change(b"U", b"K", row(text(b"6"), b"n", b"n"), b"N", GOOD_ROW), [("goals", ChangeType.UPDATE, {"id": 7, "coach_id": "coach-1", "done": True}, {"id": 6, "coach_id": None, "done": None})]),
    ("update with the old row", change(b"U", b"O", row(text(b"7"), text(b"coach-0"), text(b"f")), b"N", GOOD_ROW), [("goals", ChangeType.UPDATE, {"id": 7, "coach_id": "coach-1", "done": True}, {"id": 7, "coach_id": "coach-0", "done": False})]),
    ("delete by key", change(b"D", b"K", row(text(b"7"), b"n", b"n")), [("goals", ChangeType.DELETE, None, {"id": 7, "coach_id": None, "done": None})]),
    ("delete with the old row", change(b"D", b"O", GOOD_ROW), [("goals", ChangeType.DELETE, None, {"id": 7, "coach_id": "coach-1", "done": True})]),
    ("truncate", truncate(OID), [("goals", ChangeType.TRUNCATE, None, None)]),
    ("truncate of none", truncate(), []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("message", "events"), [case[1:] for case in WELL_FORMED], ids=[case[0] for case in WELL_FORMED]
)
def test_well_formed_messages_decode_to_their_events(
    message: bytes, events: list[tuple[str, ChangeType, object, object]]
) -> None:
    decoder = Decoder()
    decoder.decode(relation(), 1)
    decoded = decoder.decode(message, 3)
    assert isinstance(decoded, list)
    assert [(e.table, e.type, e.new, e.old) for e in decoded] == events
