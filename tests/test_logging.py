"""Secrets never reach a log line: masking by field name and inside text. Tables of cases."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import structlog

from config import load_settings
from config.logging import MASK, configure_logging, redact_secrets, redact_text

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.s3cr3tSignaturePart"

# (text, the same text as logged)
TEXTS = [
    # Passwords in URLs, whatever the scheme.
    ("postgresql://app:pw@db:5432/app", "postgresql://app:***@db:5432/app"),
    ("postgresql+psycopg://app:pw@db/app", "postgresql+psycopg://app:***@db/app"),
    ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
    ("rediss://default:p%40ss@cache:6380", "rediss://default:***@cache:6380"),
    ("amqp://guest:guest@rabbit//", "amqp://guest:***@rabbit//"),
    ("POSTGRESQL://APP:PW@DB/APP", "POSTGRESQL://APP:***@DB/APP"),
    ("postgresql://app:p@ss@db/app", "postgresql://app:***@db/app"),  # unescaped "@"
    ("redis://:a:b:c@cache", "redis://:***@cache"),
    # Cluster and Sentinel URLs: several hosts, the sentinels' own password in the query.
    ("redis+cluster://:pw@a:7000,b:7001", "redis+cluster://:***@a:7000,b:7001"),
    (
        "redis+sentinel://app:pw@s1:26379,s2:26379/mymaster/0?sentinel_password=spw",
        "redis+sentinel://app:***@s1:26379,s2:26379/mymaster/0?sentinel_password=***",
    ),
    (
        "connecting to postgresql://app:pw@db/app and redis://:pw2@cache/0",
        "connecting to postgresql://app:***@db/app and redis://:***@cache/0",
    ),
    ("error: 'postgresql://app:pw@db/app'", "error: 'postgresql://app:***@db/app'"),
    # URLs without a password are left alone.
    ("postgresql://app@db:5432/app", "postgresql://app@db:5432/app"),
    ("see http://example.com:8080/path", "see http://example.com:8080/path"),
    ("http://example.com:8080/a@b", "http://example.com:8080/a@b"),
    ("mailto:someone@example.com", "mailto:someone@example.com"),
    # Secret query parameters.
    (
        "wss://x.supabase.co/realtime/v1/websocket?apikey=K1&vsn=1.0.0",
        "wss://x.supabase.co/realtime/v1/websocket?apikey=***&vsn=1.0.0",
    ),
    ("https://x/y?vsn=1&api_key=K2", "https://x/y?vsn=1&api_key=***"),
    ("https://x/y?access_token=T1", "https://x/y?access_token=***"),
    ("https://x/y?token=T2&x=1", "https://x/y?token=***&x=1"),
    ("https://x/y?key=K3", "https://x/y?key=***"),
    ("https://x/y?password=P", "https://x/y?password=***"),
    ("https://x/y?APIKEY=K4", "https://x/y?APIKEY=***"),
    ("GET /coaches/1/events?access_token=T3 200", "GET /coaches/1/events?access_token=*** 200"),
    ("https://x/y?monkey=banana&keyword=a", "https://x/y?monkey=banana&keyword=a"),
    # Authorization headers.
    ("Authorization: Bearer abcdefgh12345", "Authorization: Bearer ***"),
    ("authorization: bearer abcdefgh12345", "authorization: bearer ***"),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ***"),
    ("bearer of bad news", "bearer of bad news"),  # too short to be a credential
    # JWTs anywhere.
    (JWT, MASK),
    (f"token {JWT} refused", f"token {MASK} refused"),
    (f"Bearer {JWT}", f"Bearer {MASK}"),
    # Nothing to mask.
    ("", ""),
    ("no secrets here", "no secrets here"),
    ("ratio 3:4@home", "ratio 3:4@home"),
    ("coachpipe:agg:{0b5e4a52}:coach-stats", "coachpipe:agg:{0b5e4a52}:coach-stats"),
    ("eyJ alone is not a token", "eyJ alone is not a token"),
]


@pytest.mark.parametrize(("text", "logged"), TEXTS, ids=[text[:60] for text, _ in TEXTS])
def test_credentials_inside_text_are_masked(text: str, logged: str) -> None:
    assert redact_text(text) == logged


SECRET = "s3cr3t-Pa55word"

# (field name, value, the value as logged)
FIELDS: list[tuple[str, Any, Any]] = [
    # Secret by name: masked whatever the value.
    ("password", SECRET, MASK),
    ("PASSWORD", SECRET, MASK),
    ("db_password", SECRET, MASK),
    ("passwd", SECRET, MASK),
    ("secret", SECRET, MASK),
    ("client_secret", SECRET, MASK),
    ("supabase_jwt_secret", SECRET, MASK),
    ("token", SECRET, MASK),
    ("access_token", SECRET, MASK),
    ("refresh_token", SECRET, MASK),
    ("api_key", SECRET, MASK),
    ("apikey", SECRET, MASK),
    ("ApiKey", SECRET, MASK),
    ("authorization", SECRET, MASK),
    ("Authorization", SECRET, MASK),
    ("cookie", SECRET, MASK),
    ("set_cookie", SECRET, MASK),
    ("credentials", SECRET, MASK),
    ("private_key", SECRET, MASK),
    ("dsn", SECRET, MASK),
    ("jwt", SECRET, MASK),
    ("password", 12345, MASK),
    ("credentials", {"user": "app", "password": SECRET}, MASK),
    ("token", [SECRET], MASK),
    # Nothing to hide: an absent secret is logged as absent.
    ("password", None, None),
    ("token", "", ""),
    # Other names: kept, with credentials inside text still masked.
    ("count", 3, 3),
    ("coach_id", "0b5e4a52", "0b5e4a52"),
    ("key", "coachpipe:agg:coach-stats", "coachpipe:agg:coach-stats"),
    ("author", "me", "me"),
    ("keyboard", "qwerty", "qwerty"),
    ("url", f"postgresql://app:{SECRET}@db/app", "postgresql://app:***@db/app"),
    ("error", f"Authorization: Bearer {SECRET}", "Authorization: Bearer ***"),
    ("detail", JWT, MASK),
    # Nested: names inside dicts, texts inside lists and tuples.
    (
        "request",
        {"headers": {"Authorization": SECRET, "Accept": "text/event-stream"}},
        {"headers": {"Authorization": MASK, "Accept": "text/event-stream"}},
    ),
    (
        "settings",
        {"redis_url": f"redis://:{SECRET}@cache/0", "debounce_ms": 50, "supabase_key": None},
        {"redis_url": "redis://:***@cache/0", "debounce_ms": 50, "supabase_key": None},
    ),
    (
        "attempts",
        [{"token": SECRET}, f"redis://:{SECRET}@cache/0", 3],
        [{"token": MASK}, "redis://:***@cache/0", 3],
    ),
    ("urls", (f"redis://:{SECRET}@cache/0",), ["redis://:***@cache/0"]),
    ("outer", {"inner": {"deeper": {"secret": SECRET}}}, {"inner": {"deeper": {"secret": MASK}}}),
]


@pytest.mark.parametrize(
    ("name", "value", "logged"), FIELDS, ids=[f"{name}={value!r}"[:60] for name, value, _ in FIELDS]
)
def test_fields_are_masked_by_name_and_by_content(name: str, value: Any, logged: Any) -> None:
    event = redact_secrets(None, "info", {"event": "something_happened", name: value})
    assert event == {"event": "something_happened", name: logged}


@pytest.mark.parametrize(
    ("event", "logged"),
    [
        ("token_refreshed", "token_refreshed"),  # the event name is never masked by name...
        (f"connect redis://:{SECRET}@cache/0", "connect redis://:***@cache/0"),  # ...its text is
    ],
)
def test_the_event_name_is_masked_by_content_only(event: str, logged: str) -> None:
    assert redact_secrets(None, "info", {"event": event}) == {"event": logged}


def test_every_logger_of_the_process_is_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """structlog and plain `logging` (Celery, kombu, uvicorn) both go through the masking."""
    monkeypatch.setenv("LOG_FORMAT", "json")
    configure_logging(load_settings(_env_file=None), process="test")
    try:
        structlog.get_logger("coachpipe.test").warning(
            "connecting", url=f"postgresql://app:{SECRET}@db/app", api_key=SECRET
        )
        logging.getLogger("kombu.test").error("broker at redis://:%s@cache/0", SECRET)
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert SECRET not in json.dumps(lines)
    first, second = lines
    assert (first["event"], first["url"], first["api_key"]) == (
        "connecting",
        "postgresql://app:***@db/app",
        MASK,
    )
    assert first["process"] == "test"
    assert second["event"] == "broker at redis://:***@cache/0"


@pytest.mark.parametrize(
    ("level", "per_task_lines"),
    [("INFO", logging.WARNING), ("WARNING", logging.WARNING), ("DEBUG", logging.WARNING)],
)
def test_celery_per_task_lines_stay_out_of_production_logs(level: str, per_task_lines: int) -> None:
    configure_logging(load_settings(_env_file=None, log_level=level))
    for name in ("celery.app.trace", "celery.worker.strategy"):
        assert logging.getLogger(name).level >= per_task_lines
    assert logging.getLogger().level == logging.getLevelName(level)
