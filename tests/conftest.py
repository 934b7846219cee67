"""Shared fixtures: a private Postgres and a private Redis for the whole run, and a private
RabbitMQ node once a test asks for it.

All are started from local binaries in a temporary directory, on free ports, independent of
whatever services the machine runs, and removed at the end. Each test starts from empty tables,
no replication slots and empty Redis databases (a RabbitMQ vhost of its own), so tests never
see each other's data. Tests marked `stacks` run once per combination of `tests.stacks`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from coachpipe.embedded import PrivatePostgres, PrivateRedis, free_port
from config import Settings, load_settings
from devtools.processes import Proc, running, start_worker, wait_for
from devtools.rabbitmq import PrivateRabbitMQ
from devtools.redis_topologies import PrivateRedisCluster, PrivateSentinel
from pipeline.db import make_engine
from pipeline.migrate import upgrade
from pipeline.redis_client import RedisClient, connect
from pipeline.tables import WATCHED_TABLES
from tasks.celery import create_app
from tasks.pipeline_app import PipelineApp
from tests.stacks import DEFAULT_STACK, STACKS, Stack

DATA_DB = 0
BROKER_DB = 1

# Short intervals so the end-to-end tests see beat, heartbeats and redelivery within seconds.
E2E_SETTINGS = {
    "DEBOUNCE_MS": "50",
    "VISIBILITY_TIMEOUT_S": "5",
    "PENDING_STALE_S": "10",
    "STATUS_CHECK_S": "1",
    "FALLBACK_POLL_S": "3",
    "HEARTBEAT_S": "1",
    "HEARTBEAT_STALE_S": "3",
    "CLOCK_TICK_S": "2",
    "SECONDARY_REFRESH_S": "3",
    "RECONCILE_S": "3600",
    "LOG_FORMAT": "console",
    "LISTENER_METRICS_PORT": "0",
    "WORKER_METRICS_PORT": "0",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("stacks"):
        metafunc.parametrize("stack", STACKS, ids=[each.id for each in STACKS], indirect=True)


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Stack:
    """The services of this test: one of `STACKS` for a `stacks` test, else the default."""
    return getattr(request, "param", DEFAULT_STACK)


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="coachpipe-tests-"))
    path.chmod(0o755)  # the Postgres server runs as `postgres` when the tests run as root
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(services_dir: Path) -> Iterator[PrivatePostgres]:
    server = PrivatePostgres(
        services_dir / "pg",
        durable=False,
        output_plugins=("wal2json",),
        settings=("track_commit_timestamp=on",),  # as the bench's: exact commit brackets
    )
    server.start()
    engine = make_engine(server.url)
    upgrade(engine, "coachpipe")
    engine.dispose()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def redis_server(services_dir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(services_dir / "redis", durable=False).start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def redis_cluster(services_dir: Path) -> Iterator[PrivateRedisCluster]:
    """A private Redis Cluster: 3 masters, 3 replicas (started once, ~7 s)."""
    cluster = PrivateRedisCluster(services_dir / "redis-cluster").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: PrivateRedisCluster) -> str:
    """The cluster's `redis+cluster://` URL, every primary emptied (a data-store URL like
    `redis_url`, for tests that run on either)."""
    client = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    client.close()
    return redis_cluster.url


@pytest.fixture
def cluster_client(cluster_url: str) -> Iterator[redis.RedisCluster]:
    """A client of the emptied private cluster (`cluster_url`)."""
    client = connect(cluster_url)
    assert isinstance(client, redis.RedisCluster)
    yield client
    client.close()


@pytest.fixture
def sentinel_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSentinel]:
    """A master, a replica and three sentinels of their own (~3 s), for one test."""
    guarded = PrivateSentinel(tmp_path_factory.mktemp("sentinel")).start()
    yield guarded
    guarded.stop()


@pytest.fixture(scope="session")
def rabbitmq_server(services_dir: Path) -> Iterator[PrivateRabbitMQ]:
    """Started by the first test that runs on RabbitMQ (about 7 s), stopped at the end."""
    server = PrivateRabbitMQ(services_dir / "rabbitmq").start()
    yield server
    server.destroy()


def reset_database(url: str) -> None:
    """Empty the watched tables and drop replication slots left by an earlier test."""
    with psycopg.connect(url, autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE NOT active"
        ).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        tables = ", ".join(f"public.{table}" for table in WATCHED_TABLES)
        conn.execute(f"TRUNCATE {tables} CASCADE")


@pytest.fixture
def database_url(postgres_server: PrivatePostgres) -> str:
    reset_database(postgres_server.url)
    return postgres_server.url


@pytest.fixture
def redis_url(stack: Stack, redis_server: PrivateRedis, request: pytest.FixtureRequest) -> str:
    """The test's data store, empty: a database of the private Redis, or the private Cluster."""
    if stack.store == "redis-cluster":
        return str(request.getfixturevalue("cluster_url"))
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    return f"redis://127.0.0.1:{redis_server.port}/{DATA_DB}"


@pytest.fixture
def broker_url(stack: Stack, redis_server: PrivateRedis, request: pytest.FixtureRequest) -> str:
    """The test's broker, empty: a Redis database, or a fresh vhost on the RabbitMQ node."""
    if stack.broker == "rabbitmq":
        server: PrivateRabbitMQ = request.getfixturevalue("rabbitmq_server")
        return server.new_vhost()
    url = f"redis://127.0.0.1:{redis_server.port}/{BROKER_DB}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[RedisClient]:
    client = connect(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def pipeline_env(postgres_server: PrivatePostgres, redis_server: PrivateRedis) -> dict[str, str]:
    """The environment of every pipeline process in the tests, this one included.

    The test process builds a Celery app (to enqueue like a listener does, see `pipeline_app`)
    from the same settings as the worker and beat subprocesses it starts.
    """
    values = {
        "DATABASE_URL": postgres_server.url,
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/{DATA_DB}",
        "BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/{BROKER_DB}",
        **E2E_SETTINGS,
    }
    os.environ.update(values)
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def worker(service_env: dict[str, str], tmp_path: Path, broker_url: str) -> Iterator[Proc]:
    """A real Celery worker subprocess (prefork, 2 children) on an empty broker."""
    proc = start_worker(service_env, tmp_path, broker_url=broker_url)
    yield proc
    proc.terminate()


@pytest.fixture
def fresh_database(postgres_server: PrivatePostgres) -> Iterator[str]:
    """A new, empty database on the private server (not migrated), dropped afterwards."""
    name = f"fresh_{uuid.uuid4().hex[:10]}"
    reset_database(postgres_server.url)  # no slot of an earlier test may linger in the cluster
    with psycopg.connect(postgres_server.admin_url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_server.admin_url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def small_wal_server(services_dir: Path) -> Iterator[PrivatePostgres]:
    """A migrated server of its own that invalidates a slot holding more than 1 MB of WAL."""
    server = PrivatePostgres(
        services_dir / f"small-wal-{uuid.uuid4().hex[:8]}",
        durable=False,
        settings=("max_slot_wal_keep_size=1MB", "wal_keep_size=0"),
    )
    server.start()
    engine = make_engine(server.url)
    upgrade(engine, "coachpipe")
    engine.dispose()
    yield server
    server.destroy()


@pytest.fixture
def own_database(
    fresh_database: str,
    pipeline_env: dict[str, str],
    redis_url: str,
    broker_url: str,
    tmp_path: Path,
) -> Iterator[tuple[str, dict[str, str], Proc]]:
    """A new, unmigrated database, the environment pointing at it, and its own worker.

    A listener's slot there is dropped afterwards (a database with a slot cannot be dropped).
    """
    env = {**pipeline_env, "DATABASE_URL": fresh_database, "BROKER_URL": broker_url}
    worker = start_worker(env, tmp_path, broker_url=broker_url)
    try:
        yield fresh_database, env, worker
    finally:
        worker.terminate()
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = current_database() AND NOT active"
            )


@pytest.fixture
def settings(
    pipeline_env: dict[str, str], database_url: str, redis_url: str, broker_url: str
) -> Settings:
    return load_settings(_env_file=None, broker_url=broker_url, redis_url=redis_url)


@pytest.fixture
def schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat's schedule under the test settings (`tasks.schedule`)."""
    # Importing `tasks` builds the Celery app from the environment, set by then by the fixtures.
    from tasks.schedule import beat_schedule

    return beat_schedule(settings)


@pytest.fixture
def pipeline_app(settings: Settings) -> Iterator[PipelineApp]:
    """The Celery app a producer in this process uses (the listener's, the CLI's)."""
    app = create_app(settings)
    yield app
    app.close()


@pytest.fixture
def service_env(
    pipeline_env: dict[str, str], database_url: str, redis_url: str, broker_url: str
) -> dict[str, str]:
    """Environment for subprocesses (workers, beat, listeners), after the per-test reset."""
    return {**pipeline_env, "BROKER_URL": broker_url, "REDIS_URL": redis_url}


@pytest.fixture
def api(service_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`coachpipe api` as its own process, as deployed."""
    port = free_port()
    from tests.test_api import SECRET

    env = service_env | {"SUPABASE_JWT_SECRET": SECRET, "LOG_FORMAT": "console"}
    proc = Proc(
        "api",
        [sys.executable, "-m", "coachpipe", "api", "--port", str(port)],
        env,
        tmp_path / "api.log",
    ).start()
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not proc.alive():
            raise AssertionError(f"api exited early:\n{proc.output()[-3000:]}")
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    with running(proc):
        wait_for(healthy, 30, interval=0.2, message="coachpipe api to answer /healthz")
        yield base
