"""Settings: every knob from the environment; bad values named, secrets never printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config import Settings, SettingsError, load_settings

SECRET = "s3cr3t-Pa55word"


def test_defaults_need_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = load_settings(_env_file=None)
    assert settings.database_url is None and settings.debounce_ms == 50


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{SECRET}@db:5432/app")
    monkeypatch.setenv("DEBOUNCE_MS", "75")
    monkeypatch.setenv("LISTENER_SOURCE", "supabase")
    settings = load_settings(_env_file=None)
    assert settings.debounce_ms == 75
    assert settings.listener_source.value == "supabase"
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("redis_url", "broker_url", "expected"),
    [
        ("redis://cache:6379/0", None, "redis://cache:6379/0"),  # falls back to REDIS_URL
        ("redis://cache:6379/0", "redis://broker:6379/1", "redis://broker:6379/1"),
        (None, "amqp://guest:guest@rabbit:5672//", "amqp://guest:guest@rabbit:5672//"),
        ("redis://:pw@cache:6379/0", None, "redis://:pw@cache:6379/0"),  # the real URL, unmasked
    ],
)
def test_the_broker_url_is_broker_url_else_redis_url(
    monkeypatch: pytest.MonkeyPatch, redis_url: str | None, broker_url: str | None, expected: str
) -> None:
    for variable, value in (("REDIS_URL", redis_url), ("BROKER_URL", broker_url)):
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, value)
    assert load_settings(_env_file=None).require_broker_url() == expected


def test_without_broker_and_redis_url_the_broker_url_names_redis_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("BROKER_URL", raising=False)
    with pytest.raises(SettingsError, match=r"REDIS_URL is not set"):
        load_settings(_env_file=None).require_broker_url()


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("DATABASE_URL", f"mysql://root:{SECRET}@db/x", "DATABASE_URL"),
        ("REDIS_URL", f"http://:{SECRET}@cache", "REDIS_URL"),
        ("DEBOUNCE_MS", "-5", "DEBOUNCE_MS"),
        ("DEBOUNCE_MS", "fast", "DEBOUNCE_MS"),
        ("LISTENER_SOURCE", "kafka", "LISTENER_SOURCE"),
        ("SLOT_NAME", "Robert'); drop table", "SLOT_NAME"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL"),
    ],
)
def test_a_bad_value_fails_naming_the_variable_and_not_the_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings(_env_file=None)
    assert named in str(error.value)
    assert SECRET not in str(error.value)
    assert value not in str(error.value)


def test_a_missing_service_url_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(SettingsError, match=r"DATABASE_URL is not set.*make demo"):
        load_settings(_env_file=None).require_database_url()


def test_env_example_documents_every_setting() -> None:
    text = Path(__file__).parent.parent.joinpath(".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    assert documented == {name.upper() for name in Settings.model_fields}
