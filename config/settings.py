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
        raw = value.get_secret_value()
        scheme = urlsplit(raw).scheme
        if scheme not in allowed:
            raise ValueError(f"must be a URL with scheme {' or '.join(allowed)}")
        if not urlsplit(raw).hostname and "host=" not in raw:
            raise ValueError("must name a host")
        return value

    return AfterValidator(check)


PostgresUrl = Annotated[SecretStr, _check_scheme(("postgresql", "postgres", "postgresql+psycopg"))]
RedisUrl = Annotated[SecretStr, _check_scheme(("redis", "rediss", "unix"))]
BrokerUrl = Annotated[SecretStr, _check_scheme(("redis", "rediss", "amqp", "amqps", "pyamqp"))]
HttpUrl = Annotated[SecretStr, _check_scheme(("http", "https", "ws", "wss"))]


class Settings(BaseSettings):
    """Every knob of the pipeline. `.env.example` documents each one."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Services. None means "not configured": `coachpipe demo` then starts private ones.
    database_url: PostgresUrl | None = None
    redis_url: RedisUrl | None = None
    broker_url: BrokerUrl | None = Field(
        default=None, description="Celery broker; defaults to REDIS_URL. RabbitMQ works unchanged."
    )
    supabase_url: HttpUrl | None = None
    supabase_key: SecretStr | None = None
    supabase_jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret that signs dashboard users' JWTs (read API)."
    )
    supabase_jwks_url: HttpUrl | None = Field(
        default=None, description="JWKS endpoint for asymmetric JWT signing keys (read API)."
    )

    # Dedup and recompute.
    debounce_ms: int = Field(default=50, ge=0, le=10_000)
    pending_stale_s: float = Field(default=30.0, gt=0, le=3600)
    recompute_batch_size: int = Field(default=200, ge=1, le=5_000)
    refresh_batch_size: int = Field(default=500, ge=1, le=10_000)

    # Beat.
    secondary_refresh_s: float = Field(default=90.0, gt=0, le=3600)
    clock_tick_s: float = Field(default=30.0, gt=0, le=3600)
    fallback_poll_s: float = Field(default=60.0, gt=0, le=3600)
    status_check_s: float = Field(default=5.0, gt=0, le=300)
    reconcile_s: float = Field(default=3600.0, gt=0, le=86_400)

    # Celery reliability.
    visibility_timeout_s: int = Field(default=60, ge=5, le=86_400)
    realtime_time_limit_s: int = Field(default=30, ge=1, le=3600)
    refresh_time_limit_s: int = Field(default=50, ge=1, le=3600)

    # Listeners.
    listener_source: SourceName = SourceName.POSTGRES
    heartbeat_s: float = Field(default=5.0, gt=0, le=300)
    heartbeat_stale_s: float = Field(default=15.0, gt=0, le=3600)
    reconnect_initial_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=8.0, gt=0, le=600)
    slot_name: str = Field(default="coachpipe", pattern=r"^[a-z0-9_]{1,63}$")
    publication_name: str = Field(default="coachpipe", pattern=r"^[a-z0-9_]{1,63}$")
    slot_lag_warn_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    max_payload_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    # Operations.
    log_level: str = Field(default="INFO", pattern=r"^(?i:debug|info|warning|error|critical)$")
    log_format: LogFormat = LogFormat.JSON
    listener_metrics_port: int = Field(default=9108, ge=0, le=65_535)
    worker_metrics_port: int = Field(default=9109, ge=0, le=65_535)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65_535)
    flower_basic_auth: SecretStr | None = None
    data_dir: str = Field(default=".data", description="Where `coachpipe demo` keeps its services.")

    @model_validator(mode="after")
    def _reconnect_bounds(self) -> Settings:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("RECONNECT_MAX_S must be >= RECONNECT_INITIAL_S")
        if self.heartbeat_stale_s <= self.heartbeat_s:
            raise ValueError("HEARTBEAT_STALE_S must be greater than HEARTBEAT_S")
        return self

    # Accessors that fail with the variable's name when a service is not configured.
    def require_database_url(self) -> str:
        return _require(self.database_url, "DATABASE_URL")

    def require_redis_url(self) -> str:
        return _require(self.redis_url, "REDIS_URL")

    def require_broker_url(self) -> str:
        if self.broker_url is not None:
            return self.broker_url.get_secret_value()
        return self.require_redis_url()

    @property
    def debounce_s(self) -> float:
        return self.debounce_ms / 1000


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
