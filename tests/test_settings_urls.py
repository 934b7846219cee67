"""Service URLs: the schemes and forms each setting accepts, and the message when not."""

from __future__ import annotations

import pytest

from config import SettingsError, load_settings

ACCEPTED = [
    ("REDIS_URL", "redis://127.0.0.1:6379/0"),
    ("REDIS_URL", "rediss://user:pw@cache.example.com:6380/1"),
    ("REDIS_URL", "unix:///tmp/redis.sock"),
    ("REDIS_URL", "unix:///run/redis/redis.sock?db=2"),
    ("REDIS_URL", "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"),
    ("REDIS_URL", "rediss+cluster://:pw@cache.example.com:6380"),
    ("REDIS_URL", "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0"),
    ("REDIS_URL", "rediss+sentinel://u:pw@s1.example.com/mymaster?sentinel_password=x"),
    ("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/app"),
    ("DATABASE_URL", "postgresql:///app"),
    ("DATABASE_URL", "postgresql:///app?host=/run/postgresql"),
    ("DATABASE_URL", "postgres://u:p@db/app"),
    ("DATABASE_URL", "postgresql+psycopg://u@db/app"),
    ("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    ("BROKER_URL", "redis://127.0.0.1:6379/1"),
]
REFUSED = [
    ("REDIS_URL", "nonsense", "scheme"),
    ("REDIS_URL", "redis://", "must name a host"),
    ("REDIS_URL", "unix://", "socket path"),
    ("REDIS_URL", "http://127.0.0.1:6379", "scheme"),
    ("REDIS_URL", "redis+cluster://", "must name a host"),
    ("DATABASE_URL", "mysql://127.0.0.1/app", "scheme"),
    ("BROKER_URL", "sqs://", "scheme"),
]


@pytest.mark.parametrize(("name", "url"), ACCEPTED)
def test_accepted(name: str, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, url)
    settings = load_settings(_env_file=None)
    value = getattr(settings, name.lower())
    assert value is not None and value.get_secret_value() == url


@pytest.mark.parametrize(("name", "url", "says"), REFUSED)
def test_refused_with_the_variable_and_rule_never_the_value(
    name: str, url: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, url)
    with pytest.raises(SettingsError) as raised:
        load_settings(_env_file=None)
    assert name in str(raised.value) and says in str(raised.value)
    assert "127.0.0.1" not in str(raised.value) and "nonsense" not in str(raised.value)


@pytest.mark.parametrize(
    "url", ["redis+cluster://127.0.0.1:7000", "redis+sentinel://127.0.0.1:26379/mymaster"]
)
def test_a_cluster_or_sentinel_store_needs_its_own_broker(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.delenv("BROKER_URL", raising=False)
    with pytest.raises(SettingsError, match="Set BROKER_URL"):
        load_settings(_env_file=None).require_broker_url()
    monkeypatch.setenv("BROKER_URL", "amqp://127.0.0.1//")
    assert load_settings(_env_file=None).require_broker_url() == "amqp://127.0.0.1//"
