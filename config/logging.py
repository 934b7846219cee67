"""Structured logs for every process: one JSON object per line, secrets redacted.

`configure_logging` routes the standard library's loggers (Celery, kombu, the realtime client,
uvicorn) through the same structlog processors, so a password in a URL or an API key in a query
string is masked whoever logs it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from config.settings import LogFormat, Settings

MASK = "***"
SECRET_FIELDS = re.compile(
    r"pass(word)?|secret|token|api_?key|authorization|cookie|credential|private|dsn|jwt",
    re.IGNORECASE,
)
# The password runs to the last "@" of the authority, as URL parsers read it (redis-py does), so
# an unescaped "@" inside a password does not leave its tail in the log.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^/?#\s]+@", re.IGNORECASE)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](apikey|api_key|access_token|token|key|password|sentinel_password)=)"
    r"[^&\s'\"]+",
    re.IGNORECASE,
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+")
_BEARER = re.compile(r"(?P<head>\b(bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)


def redact_text(value: str) -> str:
    """Mask credentials embedded in free text: URL passwords, key query params, JWTs."""
    value = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", value)
    value = _QUERY_SECRET.sub(rf"\g<head>{MASK}", value)
    value = _BEARER.sub(rf"\g<head>{MASK}", value)
    return _JWT.sub(MASK, value)


def _redact(value: Any, key: str = "") -> Any:
    if key and SECRET_FIELDS.search(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: masks secret-looking fields and credentials inside strings."""
    for key in list(event_dict):
        event_dict[key] = _redact(event_dict[key], key if key != "event" else "")
    return event_dict


def drop_terminal_styling(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """uvicorn passes a `color_message` extra with ANSI codes beside the plain message; log
    files and JSON lines want the plain one only."""
    event_dict.pop("color_message", None)
    return event_dict


def configure_logging(settings: Settings, *, process: str = "") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        drop_terminal_styling,
        redact_secrets,
    ]
    if process:
        shared.insert(0, _bind_process(process))
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.log_format is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Libraries' routine chatter stays below INFO; so do Celery's two lines per task ("received",
    # "succeeded": megabytes a minute at a few changes a second), counted in metrics instead.
    for noisy in (
        "websockets", "httpx", "httpcore", "kombu", "amqp", "urllib3",
        "celery.app.trace", "celery.worker.strategy",
    ):  # fmt: skip
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _bind_process(process: str) -> Any:
    def add_process(
        _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("process", process)
        return event_dict

    return add_process
