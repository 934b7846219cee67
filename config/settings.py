"""The one settings object, read from the environment and `.env`.

Built once at the edge of each process (CLI, Celery app, listener main) and passed in.
Secrets are `SecretStr`: they never appear in `repr`, logs or validation errors.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import SettingsError


class SourceName(StrEnum):
    SUPABASE = "supabase"
    POSTGRES = "postgres"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


def _check_scheme(allowed: tuple[str, ...]) -> AfterValidator:
    def check(value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in allowed:
            raise ValueError(f"must be a URL with scheme {' or '.join(allowed)}")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("must name a socket path (unix:///run/redis/redis.sock)")
        elif parts.scheme.startswith("postgres"):
            pass  # libpq: no host is the local socket (postgresql:///db, ?host=/run/postgresql)
        elif not parts.hostname:
            raise ValueError("must name a host")
        return value

    return AfterValidator(check)


DEMO_ENV_FILE = ".data/demo.env"
"""Written by a running `coachpipe demo` (removed when it stops): the CLI finds the demo's
services there when neither the environment nor `.env` names them."""


PostgresUrl = Annotated[SecretStr, _check_scheme(("postgresql", "postgres", "postgresql+psycopg"))]
REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)
"""One server, a Redis Cluster or a Sentinel-guarded master (`pipeline.redis_client`)."""
RedisUrl = Annotated[SecretStr, _check_scheme(REDIS_SCHEMES)]
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "sentinel")
SENTINEL_BROKER = "sentinel"
"""Celery's (kombu's) Redis-over-Sentinel broker: `sentinel://[:pass@]host:26379[/db]`, several
sentinels joined by `;` (`sentinel://h1:26379;sentinel://h2:26379`), with BROKER_MASTER_NAME."""


def _check_sentinel_hosts(value: SecretStr | None) -> SecretStr | None:
    """Every `;`-separated part of a `sentinel://` broker URL names a sentinel host, and all
    carry the same credentials: on a connection error kombu moves on to the next part and
    takes *its* user and password for the master (`kombu.Connection.switch`), so a part
    without them would fail to authenticate during a failover."""
    if value is None:
        return None
    url = value.get_secret_value()
    if urlsplit(url).scheme == SENTINEL_BROKER:
        parts = [urlsplit(part.strip()) for part in url.split(";")]
        for part in parts:
            if part.scheme != SENTINEL_BROKER or not part.hostname:
                raise ValueError(
                    "must list sentinels as sentinel://host:port, joined by ';' "
                    "(sentinel://h1:26379;sentinel://h2:26379)"
                )
        if len({(part.username, part.password) for part in parts}) > 1:
            raise ValueError(
                "every sentinel:// part must carry the same user and password (the master's): "
                "kombu uses the next part's after a connection error"
            )
    return value


BrokerUrl = Annotated[
    SecretStr, _check_scheme(BROKER_SCHEMES), AfterValidator(_check_sentinel_hosts)
]
HttpUrl = Annotated[SecretStr, _check_scheme(("http", "https", "ws", "wss"))]


class Settings(BaseSettings):
    """Every knob of the pipeline. `.env.example` documents each one."""

    model_config = SettingsConfigDict(
        # Later files win: `.env` over the demo's settings; the environment over both.
        env_file=(DEMO_ENV_FILE, ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # Services. None means "not configured": `coachpipe demo` then starts private ones.
    database_url: PostgresUrl | None = Field(
        default=None, description="Postgres holding the five tables (service credentials)."
    )
    redis_url: RedisUrl | None = Field(
        default=None,
        description="Redis for aggregates, dedup markers, listener health and beat's lock: "
        "redis://, a Cluster (redis+cluster://host:port,...) or Sentinel "
        "(redis+sentinel://host:port,.../master-name).",
    )
    broker_url: BrokerUrl | None = Field(
        default=None,
        description="Celery broker; defaults to REDIS_URL. amqp:// for RabbitMQ: quorum queues, "
        "publisher confirms. sentinel://host:26379;sentinel://host:26379 for a "
        "Sentinel-guarded Redis (with BROKER_MASTER_NAME).",
    )
    broker_master_name: str | None = Field(
        default=None,
        min_length=1,
        description="With a sentinel:// BROKER_URL: the name the sentinels monitor the "
        "broker's master under.",
    )
    broker_sentinel_password: SecretStr | None = Field(
        default=None,
        description="With a sentinel:// BROKER_URL: the sentinels' own password (their "
        "requirepass), when they have one; the password in the URL is the master's.",
    )
    supabase_url: HttpUrl | None = Field(
        default=None, description="Supabase project URL, for the `supabase` listener source."
    )
    supabase_key: SecretStr | None = Field(
        default=None, description="Supabase service role (or secret) key for that source."
    )
    supabase_jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret that signs dashboard users' JWTs (read API)."
    )
    supabase_jwks_url: HttpUrl | None = Field(
        default=None, description="JWKS endpoint for asymmetric JWT signing keys (read API)."
    )

    # Dedup and recompute.
    debounce_ms: int = Field(
        default=50, ge=0, le=10_000,
        description="At most one recompute per coach and aggregate per window; idle keys: at once.",
    )  # fmt: skip
    coach_share: float = Field(
        default=0.1, gt=0, le=1,
        description="Share of one worker a single coach's recomputes may hold: a coach whose "
        "measured recompute cost / COACH_SHARE exceeds DEBOUNCE_MS gets that wider window "
        "(at most PENDING_STALE_S).",
    )  # fmt: skip
    pending_stale_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="A pending marker or claim older than this is treated as lost and redone.",
    )  # fmt: skip
    claim_lease_s: float = Field(
        default=3.0, ge=0.3, le=300,
        description="A drain's claim lapses this long after its worker stops renewing it; "
        "then a sweep gives the work to another worker.",
    )  # fmt: skip
    scheduler_shards: int = Field(
        default=1, ge=1, le=1024,
        description="Shards of the recompute scheduler (one drain task answers one shard); "
        "more spread its scripts over a Redis Cluster's masters. Lowering it strands nothing: "
        "every worker sweeps the most shards any process used.",
    )  # fmt: skip
    worker_sweep_s: float = Field(
        default=1.0, ge=0, le=300,
        description="How often each worker sweeps expired claims and lost drains (0: never).",
    )  # fmt: skip
    recompute_batch_size: int = Field(
        default=200,
        ge=1,
        le=5_000,
        description="Most coaches one realtime drain recomputes at once.",
    )
    refresh_batch_size: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="Coaches per batch in beat's bulk refreshes: a batch holds a pool process "
        "from start to end, so smaller batches let realtime drains in sooner.",
    )

    # Beat.
    secondary_refresh_s: float = Field(
        default=90.0, gt=0, le=3600, description="Refresh interval of secondary aggregates."
    )
    clock_tick_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="How often time-dependent fields (upcoming, last 30 days) follow the clock, "
        "and the summaries' next sessions that have begun are read again.",
    )  # fmt: skip
    fallback_poll_s: float = Field(
        default=60.0, gt=0, le=3600,
        description="Polling of critical aggregates while the realtime status is not green.",
    )  # fmt: skip
    status_check_s: float = Field(
        default=5.0, gt=0, le=300, description="How often beat derives the realtime status."
    )
    reconcile_s: float = Field(
        default=3600.0, gt=0, le=86_400,
        description="Full refresh of every aggregate of every coach, the safety net.",
    )  # fmt: skip

    # Consistency audit (pipeline.audit).
    audit_cycle_s: float = Field(
        default=3600.0, gt=0, le=7 * 86_400,
        description="Beat's audit visits every active coach once per this period.",
    )  # fmt: skip
    audit_interval_s: float = Field(
        default=10.0, gt=0, le=3600, description="How often beat audits its next sample."
    )
    audit_grace_s: float = Field(
        default=5.0, ge=0, le=600,
        description="A stored value still older than the audit's snapshot this long after it "
        "is a mismatch (the freshness promise).",
    )  # fmt: skip
    audit_consistency_slo: float = Field(
        default=0.999, gt=0, le=1,
        description="Status turns yellow when an aggregate's audited consistency is below this.",
    )  # fmt: skip

    # Celery reliability.
    visibility_timeout_s: int = Field(
        default=60, ge=5, le=86_400,
        description="Redis broker: a task whose worker died is redelivered after this.",
    )  # fmt: skip
    realtime_time_limit_s: int = Field(
        default=30, ge=1, le=3600, description="Hard time limit of a realtime drain task."
    )
    refresh_time_limit_s: int = Field(
        default=50, ge=1, le=3600, description="Hard time limit of a beat refresh task."
    )

    # Listeners.
    listener_source: SourceName = Field(
        default=SourceName.POSTGRES, description="`postgres` (replication slot) or `supabase`."
    )
    heartbeat_s: float = Field(
        default=5.0, gt=0, le=300, description="Listener heartbeat interval (state in Redis)."
    )
    heartbeat_stale_s: float = Field(
        default=15.0, gt=0, le=3600,
        description="A heartbeat older than this counts as gone (status turns red).",
    )  # fmt: skip
    reconnect_initial_s: float = Field(
        default=0.5, gt=0, le=60, description="First reconnect delay (exponential, jittered)."
    )
    reconnect_max_s: float = Field(
        default=8.0, gt=0, le=600, description="Longest reconnect delay."
    )
    red_after_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="Realtime status turns red once no listener has been connected this long.",
    )  # fmt: skip
    heartbeat_reply_s: float = Field(
        default=4.0, gt=0, le=60,
        description="`supabase` source: a Phoenix heartbeat unanswered this long: a dead link.",
    )  # fmt: skip
    subscribe_timeout_s: float = Field(
        default=90.0, gt=0, le=3600,
        description="`supabase` source: how long a joined channel may wait for the server's "
        "'Subscribed to PostgreSQL' before the connection is rebuilt.",
    )  # fmt: skip
    canary_s: float = Field(
        default=5.0, ge=0, le=300,
        description="`supabase` source: how often the end-to-end canary row is written (0: off).",
    )  # fmt: skip
    canary_deadline_s: float = Field(
        default=15.0, gt=0, le=600,
        description="`supabase` source: a canary not back through Realtime this long means a "
        "stalled subscription (reconnect and catch up).",
    )  # fmt: skip
    partition_check_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="`supabase` source: how often the partitions of a partitioned watched table "
        "are re-read; a partition created, attached or detached meanwhile rebuilds the link.",
    )  # fmt: skip
    slot_name: str = Field(
        default="coachpipe", pattern=r"^[a-z0-9_]{1,63}$",
        description="Logical replication slot of the `postgres` source.",
    )  # fmt: skip
    publication_name: str = Field(
        default="coachpipe", pattern=r"^[a-z0-9_]{1,63}$",
        description="Publication the slot streams (the five tables).",
    )  # fmt: skip
    slot_lag_warn_bytes: int = Field(
        default=256 * 1024 * 1024, ge=0,
        description="Warn (log, status, doctor) when the slot holds more WAL than this.",
    )  # fmt: skip

    # Operations.
    log_level: str = Field(
        default="INFO", pattern=r"^(?i:debug|info|warning|error|critical)$",
        description="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    )  # fmt: skip
    log_format: LogFormat = Field(
        default=LogFormat.JSON, description="`json` (one object per line) or `console`."
    )
    listener_metrics_port: int = Field(
        default=9108, ge=0, le=65_535, description="Listener's Prometheus port (0: off)."
    )
    worker_metrics_port: int = Field(
        default=9109, ge=0, le=65_535, description="Worker's Prometheus port (0: off)."
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the listener's and worker's metrics ports bind (0.0.0.0: every "
        "interface, for a scraper on another host or container).",
    )
    api_host: str = Field(default="127.0.0.1", description="Address `coachpipe api` binds.")
    api_port: int = Field(default=8000, ge=1, le=65_535, description="Port of `coachpipe api`.")
    api_max_url_bytes: int = Field(
        default=8192, ge=256, le=1_048_576, description="Longer request URLs get 414 at once."
    )
    api_max_header_bytes: int = Field(
        default=16_384, ge=1024, le=1_048_576,
        description="Request headers larger than this in all get 431 at once.",
    )  # fmt: skip
    api_cors_origins: str = Field(
        default="",
        description="Comma-separated origins of the team's own app allowed to call the read API "
        "from a browser (none by default).",
    )
    jwt_audience: str = Field(
        default="authenticated",
        description="`aud` a user's token must carry (Supabase Auth issues `authenticated`).",
    )
    jwt_issuer: str | None = Field(
        default=None,
        description="`iss` a user's token must carry; default SUPABASE_URL + `/auth/v1`, as "
        "Supabase Auth issues it (unchecked when neither is set).",
    )
    jwt_max_lifetime_s: int = Field(
        default=7 * 86_400, ge=60, le=365 * 86_400,
        description="Tokens valid longer than this (exp - iat, or exp - now) are refused.",
    )  # fmt: skip
    flower_basic_auth: SecretStr | None = Field(
        default=None, description="`user:password` that protects Flower (required to start it)."
    )
    flower_insecure: bool = Field(
        default=False, description="Start Flower without FLOWER_BASIC_AUTH (trusted networks)."
    )
    data_dir: str = Field(default=".data", description="Where `coachpipe demo` keeps its services.")

    @model_validator(mode="after")
    def _sentinel_broker_names_its_master(self) -> Settings:
        sentinel = self.broker_url is not None and self.broker_url.get_secret_value().startswith(
            f"{SENTINEL_BROKER}://"
        )
        if sentinel and self.broker_master_name is None:
            raise ValueError(
                "BROKER_MASTER_NAME must be set with a sentinel:// BROKER_URL (the name the "
                "sentinels monitor the master under, e.g. mymaster)"
            )
        return self

    @model_validator(mode="after")
    def _reconnect_bounds(self) -> Settings:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("RECONNECT_MAX_S must be >= RECONNECT_INITIAL_S")
        if self.heartbeat_stale_s <= self.heartbeat_s:
            raise ValueError("HEARTBEAT_STALE_S must be greater than HEARTBEAT_S")
        if self.canary_s and self.canary_deadline_s <= self.canary_s:
            raise ValueError("CANARY_DEADLINE_S must be greater than CANARY_S")
        return self

    # Accessors that fail with the variable's name when a service is not configured.
    def cors_origins(self) -> list[str]:
        return [origin.strip() for origin in self.api_cors_origins.split(",") if origin.strip()]

    def expected_issuer(self) -> str | None:
        """The `iss` of the project's user tokens: JWT_ISSUER, else SUPABASE_URL/auth/v1."""
        if self.jwt_issuer:
            return self.jwt_issuer
        if self.supabase_url is not None:
            return self.supabase_url.get_secret_value().rstrip("/") + "/auth/v1"
        return None

    def require_database_url(self) -> str:
        return _require(self.database_url, "DATABASE_URL")

    def require_redis_url(self) -> str:
        return _require(self.redis_url, "REDIS_URL")

    def require_broker_url(self) -> str:
        """BROKER_URL, else REDIS_URL when it names one server: Celery's Redis transport
        speaks neither Cluster nor this project's `redis+sentinel://` form."""
        if self.broker_url is not None:
            return self.broker_url.get_secret_value()
        redis_url = self.require_redis_url()
        if "+" in urlsplit(redis_url).scheme:
            raise SettingsError(
                "BROKER_URL is not set, and REDIS_URL names a Redis Cluster or Sentinel, which "
                "Celery cannot use as its broker. Set BROKER_URL (amqp://… for RabbitMQ, "
                "sentinel://… with BROKER_MASTER_NAME for a Sentinel-guarded Redis, or a "
                "redis:// server)."
            )
        return redis_url


def _require(value: SecretStr | None, name: str) -> str:
    if value is None:
        raise SettingsError(
            f"{name} is not set. Set it in the environment or .env, "
            "or run `make demo` to start private services."
        )
    return value.get_secret_value()


def load_settings(**overrides: object) -> Settings:
    """Build `Settings`, turning validation errors into one message per variable.

    The message names the variable and the rule it broke, never the value: a wrong value
    is often a secret pasted into the wrong variable.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            location = ".".join(str(part) for part in error["loc"]) or "settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{location.upper()}: {message}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
