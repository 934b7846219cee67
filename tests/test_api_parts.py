"""The read API's pure parts, table-tested: who may read, token extraction, response shaping,
ETags and conditional requests, and when streams hear of a status change."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from api.access import presented_token, require_reader
from api.auth import AuthError, ForbiddenError, Principal
from api.responses import (
    aggregate_body,
    coach_body,
    conditional_json,
    etag,
    not_modified,
    status_body,
    status_event,
)
from api.status_watch import color_changed
from pipeline.health import Color, ListenerHealth, ListenerState, RealtimeStatus
from pipeline.stored import StoredAggregate

COACH = uuid.UUID("00000000-0000-0000-0000-0000000000c1")
OTHER = uuid.UUID("00000000-0000-0000-0000-0000000000c2")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def stored(
    name: str = "coach-stats", version: int = 7, value: bytes = b'{"n":1}'
) -> StoredAggregate:
    return StoredAggregate(COACH, name, version, NOW, NOW, 2, value)


def status(color: Color, reason: str = "because") -> RealtimeStatus:
    listener = ListenerHealth("l1", "postgres", ListenerState.CONNECTED, heartbeat_at=1.0)
    return RealtimeStatus(color=color, listeners=(listener,), reason=reason)


@pytest.mark.parametrize(
    ("authorization", "bearer", "access_token", "expected"),
    [
        (None, None, None, None),
        ("Bearer abc", "abc", None, "abc"),
        ("Bearer abc", "abc", "query", "abc"),  # the header wins over the query parameter
        (None, None, "query", "query"),
        ("", None, "query", "query"),
        ("Basic dXNlcjpwdw==", None, None, AuthError),  # another scheme is refused, not ignored
        ("Basic dXNlcjpwdw==", None, "query", AuthError),
        ("Bearer", None, None, AuthError),  # `Bearer` with no token
    ],
)
def test_presented_token(
    authorization: str | None, bearer: str | None, access_token: str | None, expected: object
) -> None:
    if expected is AuthError:
        with pytest.raises(AuthError, match="Bearer <token>"):
            presented_token(authorization, bearer, access_token)
    else:
        assert presented_token(authorization, bearer, access_token) == expected


@pytest.mark.parametrize(
    ("who", "coach", "allowed"),
    [
        (Principal(str(COACH), "authenticated", admin=False), COACH, True),
        (Principal(str(COACH), "authenticated", admin=False), OTHER, False),
        (Principal("", "service_role", admin=True), OTHER, True),
        (Principal(str(OTHER), "authenticated", admin=True), COACH, True),
        (Principal("", "authenticated", admin=False), COACH, False),
    ],
)
def test_require_reader(who: Principal, coach: uuid.UUID, allowed: bool) -> None:
    if allowed:
        require_reader(who, coach)
    else:
        with pytest.raises(ForbiddenError) as raised:
            require_reader(who, coach)
        assert raised.value.status == 403


def test_aggregate_body_splices_the_stored_json_unchanged() -> None:
    body = aggregate_body(stored(value=b'{"b":2,"a":[1.50,null]}'))
    encoded = orjson.dumps(body)
    assert b'"value":{"b":2,"a":[1.50,null]}' in encoded  # as stored, not re-serialized
    assert orjson.loads(encoded) == {
        "aggregate": "coach-stats",
        "version": 7,
        "computed_at": NOW.isoformat(),
        "as_of": NOW.isoformat(),
        "schema_version": 2,
        "value": {"b": 2, "a": [1.5, None]},
    }


def test_coach_body_names_the_coach_and_each_aggregate() -> None:
    found = {"coach-stats": stored(), "coach-trends": stored("coach-trends", 9)}
    body = orjson.loads(orjson.dumps(coach_body(COACH, found)))
    assert body["coach_id"] == str(COACH)
    assert {name: a["version"] for name, a in body["aggregates"].items()} == {
        "coach-stats": 7,
        "coach-trends": 9,
    }


def test_etag_changes_with_any_version_and_only_then() -> None:
    base = {"coach-stats": stored(), "coach-trends": stored("coach-trends", 9)}
    same = {"coach-stats": stored(value=b"{}"), "coach-trends": stored("coach-trends", 9)}
    newer = {"coach-stats": stored(), "coach-trends": stored("coach-trends", 10)}
    assert etag(base) == etag(same)
    assert etag(base) != etag(newer)
    assert etag(base) != etag({"coach-stats": stored()})
    assert etag(base).startswith('"') and etag(base).endswith('"')


TAG = '"abc"'


@pytest.mark.parametrize(
    ("if_none_match", "expected"),
    [
        (None, False),
        ("", False),
        ('"abc"', True),
        ('W/"abc"', True),  # weak comparison
        ('"old", "abc"', True),
        ('"old",W/"abc"', True),
        ('"old"', False),
        ("abc", False),  # unquoted is a different tag
        ("*", True),
        ('"old", *', True),
    ],
)
def test_not_modified(if_none_match: str | None, expected: bool) -> None:
    assert not_modified(if_none_match, TAG) is expected


def test_conditional_json_answers_304_with_the_tag_or_the_body() -> None:
    unchanged = conditional_json({"a": 1}, TAG, TAG)
    assert (unchanged.status_code, unchanged.body, unchanged.headers["etag"]) == (304, b"", TAG)
    fresh = conditional_json({"a": 1}, TAG, '"old"')
    assert (fresh.status_code, orjson.loads(fresh.body)) == (200, {"a": 1})
    assert fresh.headers["etag"] == TAG
    assert fresh.headers["cache-control"] == "private, no-cache"
    assert fresh.media_type == "application/json"


@pytest.mark.parametrize(("admin", "listeners"), [(True, 1), (False, 0)])
def test_status_body_shows_listeners_to_admins_only(admin: bool, listeners: int) -> None:
    body = status_body(status(Color.YELLOW), admin=admin)
    assert (body["status"], body["reason"]) == ("yellow", "because")
    assert isinstance(body["listeners"], list) and len(body["listeners"]) == listeners


def test_status_event_carries_color_and_reason_only() -> None:
    event = orjson.loads(status_event(status(Color.RED, "no heartbeat")))
    assert event == {"status": "red", "reason": "no heartbeat"}


@pytest.mark.parametrize(
    ("previous", "current", "changed"),
    [
        (None, Color.GREEN, True),  # a first status is news
        (Color.GREEN, Color.GREEN, False),
        (Color.GREEN, Color.YELLOW, True),
        (Color.YELLOW, Color.RED, True),
        (Color.RED, Color.GREEN, True),
    ],
)
def test_color_changed(previous: Color | None, current: Color, changed: bool) -> None:
    before = None if previous is None else status(previous, "earlier")
    assert color_changed(before, status(current, "now")) is changed


def test_a_new_reason_with_the_same_color_is_not_news() -> None:
    assert not color_changed(status(Color.YELLOW, "one"), status(Color.YELLOW, "two"))
