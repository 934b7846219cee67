"""The Celery app is built from the settings handed in; only `celery -A tasks` reads the
environment, at its edge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import redis
from celery import Celery
from pydantic import SecretStr

from config import Settings
from devtools.processes import Proc, running, wait_for
from tasks import jobs, names
from tasks.celery import create_app

ROOT = Path(__file__).parent.parent


def empty_env() -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}


def run_python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_processes_import_with_an_empty_environment() -> None:
    done = run_python(empty_env(), "-c", "import listeners.runner, listeners.main, tasks, api")
    assert done.returncode == 0, done.stderr


def test_celery_at_the_edge_names_the_missing_setting_in_one_line() -> None:
    done = run_python(empty_env(), "-m", "celery", "-A", "tasks", "report")
    assert done.returncode == 2  # as every `coachpipe` command exits for a setting
    assert done.stderr.strip().splitlines() == [
        "coachpipe: REDIS_URL is not set. Set it in the environment or .env, or run "
        "`make demo` to start private services."
    ]


def test_celery_at_the_edge_builds_the_app_from_the_environment(
    service_env: dict[str, str],
) -> None:
    done = run_python(service_env, "-m", "celery", "-A", "tasks", "report")
    assert done.returncode == 0, done.stderr
    assert f"redbeat_redis_url: '{service_env['REDIS_URL']}'" in done.stdout


def test_each_app_carries_the_settings_it_was_built_from(settings: Settings) -> None:
    other = settings.model_copy(
        update={"broker_url": SecretStr("redis://127.0.0.1:1/7"), "realtime_time_limit_s": 7}
    )
    first, second = create_app(settings), create_app(other)
    try:
        assert first.conf.broker_url == settings.require_broker_url()
        assert second.conf.broker_url == "redis://127.0.0.1:1/7"
        assert first.settings is settings and second.settings is other
        assert first.runtime is not second.runtime
        drain = second.tasks[names.DRAIN]
        assert (drain.time_limit, drain.soft_time_limit) == (7, 2)
        refresh = second.tasks[names.REFRESH_ALL]
        assert refresh.time_limit == other.refresh_time_limit_s
        assert first.tasks[names.DRAIN].time_limit == settings.realtime_time_limit_s
        assert set(jobs.TASKS) <= set(first.tasks)
    finally:
        first.close()
        second.close()
    bystander = Celery("bystander")  # tasks are registered on our apps only, not shared
    assert not set(jobs.TASKS) & set(bystander.tasks)


def test_tasks_are_routed_by_name_to_their_queue(settings: Settings, broker_url: str) -> None:
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    app = create_app(settings)
    try:
        app.sender.send_drain(0, 0)
        app.sender.send_wide_refresh("coach-trends", "test")
        app.sender.send_refresh_batch(["coach-stats"], ["c1"], queue=names.REALTIME_QUEUE)
        app.sender.send_reconcile()
    finally:
        app.close()

    def queued(queue: str) -> list[str]:
        return [orjson.loads(raw)["headers"]["task"] for raw in broker.lrange(queue, 0, -1)]

    assert sorted(queued(names.REALTIME_QUEUE)) == [names.DRAIN, names.REFRESH_BATCH]
    assert sorted(queued(names.REFRESH_QUEUE)) == [names.RECONCILE, names.REFRESH_ALL]


def test_a_listener_enqueues_through_the_broker_of_the_settings_it_was_given(
    database_url: str, redis_url: str, broker_url: str, tmp_path: Path
) -> None:
    """One settings object: the listener's Celery app uses the broker its caller chose, with
    nothing in the environment (before, the broker came from the environment)."""
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    script = (
        "import sys\n"
        "from config import Settings, SourceName\n"
        "from listeners.main import run\n"
        "settings = Settings(_env_file=None, database_url=sys.argv[1], redis_url=sys.argv[2],"
        " broker_url=sys.argv[3], log_format='console', listener_metrics_port=0)\n"
        "sys.exit(run(settings, SourceName.POSTGRES))\n"
    )
    listener = Proc(
        "listener",
        [sys.executable, "-c", script, database_url, redis_url, broker_url],
        empty_env(),
        tmp_path / "listener.log",
    ).start()
    with running(listener):
        # A new slot's position is unknown: the listener asks for a refresh of everything.
        wait_for(
            lambda: broker.llen(names.REFRESH_QUEUE) > 0 or not listener.alive(),
            30,
            message="the catch-up refresh on the given broker",
        )
        assert listener.alive(), listener.output()[-3000:]
        assert listener.terminate(timeout=20) == 0, listener.output()[-3000:]
