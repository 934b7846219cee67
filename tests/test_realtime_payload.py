"""`parse_change`: Supabase Realtime `postgres_changes` payloads → events. A table of cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from listeners.realtime_payload import SOURCE, parse_change
from pipeline.errors import BadEventError
from pipeline.events import ChangeEvent, ChangeType
from pipeline.tables import WATCHED_TABLES

COACH = "0b5e4a52-3c1f-4d55-9d1e-6f6a0c7f1a01"
ROW = {"id": "7", "coach_id": COACH, "status": "completed"}
OLD = {"id": "7", "coach_id": COACH, "status": "scheduled"}
STAMP = "2026-01-01T00:00:00.000Z"
AT = datetime(2026, 1, 1, tzinfo=UTC)


def data(**fields: Any) -> dict[str, Any]:
    """The `data` object of a payload as Realtime sends it for an INSERT into `sessions`."""
    base: dict[str, Any] = {
        "schema": "public",
        "table": "sessions",
        "type": "INSERT",
        "commit_timestamp": STAMP,
        "columns": [{"name": "coach_id", "type": "uuid"}],
        "errors": None,
        "record": ROW,
    }
    return base | fields


def payload(**fields: Any) -> dict[str, Any]:
    return {"ids": [1], "data": data(**fields)}


def event(
    kind: ChangeType = ChangeType.INSERT,
    new: Any = ROW,
    old: Any = None,
    commit_ts: datetime | None = AT,
    table: str = "sessions",
) -> ChangeEvent:
    return ChangeEvent(table, kind, new, old, commit_ts, position=None, source=SOURCE)


USABLE = [
    ("insert", payload(), event(), None),
    ("insert, lowercase type", payload(type="insert"), event(), None),
    ("insert, mixed-case type", payload(type="Insert"), event(), None),
    (
        "update with old record",
        payload(type="UPDATE", old_record=OLD),
        event(ChangeType.UPDATE, ROW, OLD),
        None,
    ),
    (
        "update without old record (replica identity default)",
        payload(type="UPDATE"),
        event(ChangeType.UPDATE, ROW, None),
        None,
    ),
    (
        "delete: the old record only",
        payload(type="DELETE", record=None, old_record=OLD),
        event(ChangeType.DELETE, None, OLD),
        None,
    ),
    (
        "delete: record absent",
        {"data": {k: v for k, v in data(type="DELETE", old_record=OLD).items() if k != "record"}},
        event(ChangeType.DELETE, None, OLD),
        None,
    ),
    ("empty record", payload(record={}), event(new={}), None),
    ("no ids", {"data": data()}, event(), None),
    ("errors: empty list", payload(errors=[]), event(), None),
    ("errors: absent", {"data": {k: v for k, v in data().items() if k != "errors"}}, event(), None),
    (
        "errors: payload too large (values over 64 bytes dropped)",
        payload(errors=["Error 413: Payload Too Large"], record={"coach_id": COACH}),
        event(new={"coach_id": COACH}),
        "server_error_413",
    ),
    (
        "commit timestamp with offset",
        payload(commit_timestamp="2026-01-01T02:00:00+02:00"),
        event(commit_ts=datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))),
        None,
    ),
    (
        "commit timestamp with microseconds",
        payload(commit_timestamp="2026-01-01T00:00:00.123456Z"),
        event(commit_ts=AT.replace(microsecond=123456)),
        None,
    ),
    ("commit timestamp absent", payload(commit_timestamp=None), event(commit_ts=None), None),
    (
        "commit timestamp not text",
        payload(commit_timestamp=1767225600),
        event(commit_ts=None),
        None,
    ),
    (
        "commit timestamp garbage",
        payload(commit_timestamp="yesterday"),
        event(commit_ts=None),
        None,
    ),
    ("commit timestamp empty", payload(commit_timestamp=""), event(commit_ts=None), None),
]


@pytest.mark.parametrize(
    ("given", "expected", "warning"),
    [case[1:] for case in USABLE],
    ids=[case[0] for case in USABLE],
)
def test_usable_payloads(given: object, expected: ChangeEvent, warning: str | None) -> None:
    assert parse_change(given) == (expected, warning)


@pytest.mark.parametrize("table", WATCHED_TABLES)
def test_every_watched_table_is_accepted(table: str) -> None:
    parsed, warning = parse_change(payload(table=table))
    assert (parsed.table, warning) == (table, None)


BAD = [
    # Not a payload at all.
    ("none", None, "malformed_payload"),
    ("a list", [payload()], "malformed_payload"),
    ("a string", "postgres_changes", "malformed_payload"),
    ("no data", {"ids": [1]}, "malformed_payload"),
    ("data is null", {"data": None}, "malformed_payload"),
    ("data is a string", {"data": "{}"}, "malformed_payload"),
    ("data is a list", {"data": [data()]}, "malformed_payload"),
    # A table we do not watch.
    ("unwatched table", payload(table="invoices"), "unknown_table"),
    ("table in another case", payload(table="Sessions"), "unknown_table"),
    ("table qualified", payload(table="public.sessions"), "unknown_table"),
    ("table absent", {"data": {k: v for k, v in data().items() if k != "table"}}, "unknown_table"),
    ("table not text", payload(table=["sessions"]), "unknown_table"),
    ("another schema", payload(schema="auth"), "unknown_table"),
    ("schema absent", {"data": {k: v for k, v in data().items() if k != "schema"}}, "unknown_table"),
    ("unwatched table, bad type too", payload(table="invoices", type="UPSERT"), "unknown_table"),
    # A change type Realtime does not send.
    ("unknown type", payload(type="UPSERT"), "unknown_type"),
    ("type absent", {"data": {k: v for k, v in data().items() if k != "type"}}, "unknown_type"),
    ("type null", payload(type=None), "unknown_type"),
    ("type a number", payload(type=1), "unknown_type"),
    ("type empty", payload(type=""), "unknown_type"),
    ("type star (a subscription filter, not a change)", payload(type="*"), "unknown_type"),
    ("truncate (Realtime never sends one)", payload(type="TRUNCATE"), "unknown_type"),
    # Records that are not objects.
    ("record a string", payload(record="not an object"), "malformed_payload"),
    ("record a list", payload(record=[ROW]), "malformed_payload"),
    ("record a number", payload(record=42), "malformed_payload"),
    ("old record a string", payload(type="UPDATE", old_record="x"), "malformed_payload"),
    ("old record a list", payload(type="DELETE", record=None, old_record=[OLD]), "malformed_payload"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("given", "reason"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_unusable_payloads_raise_with_the_reason_the_metrics_count(
    given: object, reason: str
) -> None:
    with pytest.raises(BadEventError) as raised:
        parse_change(given)
    assert raised.value.reason == reason


def test_the_table_is_named_on_a_bad_type_of_a_watched_table() -> None:
    with pytest.raises(BadEventError) as raised:
        parse_change(payload(table="goals", type="TRUNCATE"))
    assert raised.value.table == "goals"
