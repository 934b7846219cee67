"""Celery's broker on a Sentinel-guarded Redis (`BROKER_URL=sentinel://…;sentinel://…` with
BROKER_MASTER_NAME): the settings it takes, changes → aggregates through it, and a
`SENTINEL FAILOVER` of the broker's master in the middle of a burst.

The data store stays the private Redis (`redis_url`): only the broker fails over here
(`tests/test_sentinel.py` fails the data store over)."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.app.utils import filter_hidden_settings
from pydantic import SecretStr

from coachpipe.doctor import Severity, run_checks
from config import Settings, SettingsError, load_settings
from devtools.processes import listener_connected, running, start_listener, start_worker, wait_for
from devtools.redis_topologies import MASTER_NAME, PrivateSentinel, server
from pipeline import seed
from pipeline.redis_client import RedisClient
from tasks.celery import celery_config
from tests.pipeline_checks import settle
from tests.test_beat import lock_holders
from tests.test_cluster_e2e import failover_stack, through_failover
from tests.test_listener_postgres import burst

SMALL = seed.SeedPlan(coaches=6, clients_per_coach=3, sessions_per_client=2)
SENTINELS = "sentinel://:master-pw@127.0.0.1:26379;sentinel://:master-pw@127.0.0.1:26380"
BROKER_OPTIONS = {"master_name": MASTER_NAME}


def test_a_sentinel_broker_gets_its_master_name_and_the_sentinels_password(
    settings: Settings,
) -> None:
    sentinel = settings.model_copy(update={
        "broker_url": SecretStr(SENTINELS), "broker_master_name": "mymaster",
        "broker_sentinel_password": SecretStr("sentinel-pw"),
    })  # fmt: skip
    config = celery_config(sentinel)
    assert config["broker_url"] == SENTINELS
    options = config["broker_transport_options"]
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"] == {"password": "sentinel-pw"}
    assert "visibility_timeout" in options  # still kombu's Redis transport
    # What `celery inspect conf`, `celery report` and Flower show: neither password.
    shown = str(filter_hidden_settings(config))
    assert "master-pw" not in shown and "sentinel-pw" not in shown
    assert "127.0.0.1:26379" in shown


def test_a_sentinel_broker_url_needs_its_master_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_URL", SENTINELS)
    monkeypatch.delenv("BROKER_MASTER_NAME", raising=False)
    with pytest.raises(SettingsError, match="BROKER_MASTER_NAME must be set") as raised:
        load_settings(_env_file=None)
    assert "master-pw" not in str(raised.value)
    monkeypatch.setenv("BROKER_MASTER_NAME", "mymaster")
    assert load_settings(_env_file=None).require_broker_url() == SENTINELS


@pytest.mark.parametrize(
    "url",
    [
        "sentinel://h:1;sentinel://",
        "sentinel://127.0.0.1:26379;redis://127.0.0.1:6379",
        "sentinel://h;",
    ],
)
def test_every_part_of_a_sentinel_broker_url_names_a_sentinel(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_URL", url)
    monkeypatch.setenv("BROKER_MASTER_NAME", "mymaster")
    with pytest.raises(SettingsError, match="BROKER_URL: must list sentinels"):
        load_settings(_env_file=None)


@pytest.mark.parametrize(
    "url",
    [
        "sentinel://:pw@h1:26379;sentinel://h2:26379",
        "sentinel://h1:26379;sentinel://:pw@h2:26379",
        "sentinel://u:pw@h1:26379;sentinel://:pw@h2:26379",
    ],
)
def test_every_part_of_a_sentinel_broker_url_carries_the_same_password(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu switches to the next part's credentials after a connection error: a part
    without the master's password would fail to authenticate mid-failover."""
    monkeypatch.setenv("BROKER_URL", url)
    monkeypatch.setenv("BROKER_MASTER_NAME", "mymaster")
    with pytest.raises(SettingsError, match="same user and password") as raised:
        load_settings(_env_file=None)
    assert "pw" not in str(raised.value).replace("password", "")


def test_changes_become_aggregates_through_a_broker_on_sentinel(
    database_url: str,
    redis_client: RedisClient,
    sentinel_redis: PrivateSentinel,
    service_env: dict[str, str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    env = service_env | sentinel_redis.broker_env
    on_sentinel = settings.model_copy(update={
        "broker_url": SecretStr(env["BROKER_URL"]), "broker_master_name": MASTER_NAME,
    })  # fmt: skip
    broker = next(check for check in run_checks(on_sentinel) if check.name == "broker")
    assert broker.severity is Severity.OK, broker.message  # `coachpipe doctor` reaches it
    seed.load(database_url, SMALL)
    worker = start_worker(env, tmp_path, broker_url=env["BROKER_URL"],
                          broker_options=BROKER_OPTIONS)  # fmt: skip
    listener = start_listener(env, tmp_path)
    with running(worker), running(listener):
        wait_for(lambda: listener_connected(redis_client, listener), 20,
                 message="listener to connect")  # fmt: skip
        settle(database_url, redis_client)
        burst(database_url, 100)
        settle(database_url, redis_client)
    # The tasks went through the master the sentinels name (kombu's bindings live there).
    master = server(sentinel_redis.master_port())
    assert master.exists("_kombu.binding.realtime") and master.exists("_kombu.binding.refresh")


def test_a_failover_of_the_brokers_master_during_a_burst_loses_nothing(
    database_url: str,
    redis_client: RedisClient,
    sentinel_redis: PrivateSentinel,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """The broker's master hands over while changes stream in: producers (the listener, beat)
    and the worker reconnect to the promoted replica, and every aggregate ends equal to the
    oracle; tasks sent to the old master in its last moment are lost with it, and the
    scheduler's pending requests (in the data store) bring their work back."""
    env = service_env | sentinel_redis.broker_env

    def failover_and_demotion() -> tuple[int, int]:
        # Until the sentinels demote the old master (~10 s), connections opened before the
        # promotion go on using it; its unconsumed messages go when it resyncs as a replica.
        old, new = sentinel_redis.failover()
        wait_for(lambda: sentinel_redis.demoted(old), 30, message="the old master to follow")
        return old, new

    with failover_stack(env, redis_client, database_url, env["BROKER_URL"], tmp_path,
                        broker_options=BROKER_OPTIONS) as stack:  # fmt: skip
        worker, port, (first, second) = stack
        # The changes stream on through the promotion and the demotion.
        (_, new), seconds = through_failover(
            database_url, redis_client, port, 47, failover_and_demotion
        )
        print(  # the figure for the README (run with -s)
            f"\nbroker sentinel failover: promoted and old master demoted in "
            f"{seconds['failover']:.2f} s; last change → every aggregate equal to the oracle "
            f"{seconds['values']:.2f} s, nothing pending or claimed {seconds['settled']:.2f} s"
        )
        # Everything runs on the new master now: beat's tasks (a fallback poll every
        # FALLBACK_POLL_S) still reach the worker, and a new burst still converges.
        polls = lambda: worker.output().count("fallback_poll_skipped")  # noqa: E731
        seen = polls()
        wait_for(lambda: polls() >= seen + 2, 30,
                 message="beat's fallback polls to reach the worker through the new master")  # fmt: skip
        burst(database_url, 100, 4700)
        settle(database_url, redis_client)
        assert worker.alive() and first.alive() and second.alive()
        assert len(lock_holders(first, second)) == 1
        assert sentinel_redis.master_port() == new
        assert "Connection to broker lost" in worker.output()  # it did reconnect
