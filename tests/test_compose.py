"""docker-compose.yml and its image, checked without Docker.

Every command a service runs is parsed by the real `coachpipe` CLI, so a renamed command or
option breaks this test before it breaks a deployment. Environment variables must be settings
the code reads, secrets must come from the environment, and nothing is published beyond
127.0.0.1.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import jwt
import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from coachpipe.cli import app
from config import Settings, SourceName
from tasks.names import QUEUES

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
APP_ANCHOR = "x-coachpipe"
# The services that run the coachpipe image, and what the default stack must contain.
APP_SERVICES = {"migrate", "listener", "worker", "beat", "flower", "api"}
DEFAULT_SERVICES = APP_SERVICES | {"db", "redis"}
# App-service variables that are not settings: read by Python itself.
EXTRA_APP_VARIABLES = {"PYTHONUNBUFFERED"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|AUTH")
# A whole value that is one interpolation: `${VAR}`, `${VAR:?message}` or `${VAR:-}` (an empty
# default). `${VAR:-literal}` is refused: the literal would be a secret in the file.
SECRET_VALUE = re.compile(r"\$\{[A-Z][A-Z0-9_]*(?::?\?[^}]*|:?-)?\}")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])([^}]*))?\}")
USAGE_ERRORS = (click.UsageError, typer.TyperException)
CELERY_COMMANDS = {"worker", "beat", "flower", "inspect", "status", "events"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's `environment` as a mapping; None means "passed through from the host"."""
    raw = service.get("environment") or {}
    if isinstance(raw, dict):
        return {name: None if value is None else str(value) for name, value in raw.items()}
    pairs = (entry.split("=", 1) for entry in raw)
    return {pair[0]: pair[1] if len(pair) == 2 else None for pair in pairs}


def as_argv(value: str | list[Any] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def dockerfile_path(compose: dict[str, Any]) -> Path:
    build = compose[APP_ANCHOR]["build"]
    return ROOT / str(build.get("context", ".")) / str(build.get("dockerfile", "Dockerfile"))


def dockerfile_instruction(path: Path, name: str) -> list[str]:
    """The last ENTRYPOINT or CMD of a Dockerfile, as an argv (exec or shell form)."""
    found = [
        line.split(None, 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.upper().startswith(name + " ")
    ]
    assert found, f"{path.name} has no {name}"
    value = found[-1]
    return json.loads(value) if value.startswith("[") else shlex.split(value)


def service_argv(name: str, service: dict[str, Any], compose: dict[str, Any]) -> list[str]:
    entrypoint = as_argv(service.get("entrypoint"))
    if not entrypoint and name in APP_SERVICES:
        entrypoint = dockerfile_instruction(dockerfile_path(compose), "ENTRYPOINT")
    return entrypoint + as_argv(service.get("command"))


def parse_coachpipe(args: list[str]) -> tuple[Any, Any]:
    """Parse `coachpipe ARGS` as the CLI would, without running the command.

    Returns the command and its parsed context. Typer may bundle its own copy of click, so
    groups are recognised by what they do, not by class.
    """
    command: Any = typer.main.get_command(app)
    parent: Any = None
    info_name = "coachpipe"
    remaining = list(args)
    while hasattr(command, "get_command"):
        assert remaining, f"`{info_name}` needs a subcommand"
        context = command.context_class(command, info_name=info_name, parent=parent)
        info_name, remaining = remaining[0], remaining[1:]
        subcommand = command.get_command(context, info_name)
        assert subcommand is not None, f"`coachpipe` has no command {info_name!r}"
        parent, command = context, subcommand
    return command, command.make_context(info_name, remaining, parent=parent)


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` with the given variables."""

    def substitute(match: re.Match[str]) -> str:
        name, colon, operator, argument = match.groups()
        current = variables.get(name)
        missing = current is None or (colon == ":" and current == "")
        if not missing:
            return str(current)
        if operator == "?":
            raise AssertionError(f"{name} is required: {argument}")
        return argument or ""  # `${VAR:-default}`, or `${VAR}` unset: empty, as compose does

    return INTERPOLATION.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def interpolations(node: Any) -> list[re.Match[str]]:
    if isinstance(node, dict):
        return [match for value in node.values() for match in interpolations(value)]
    if isinstance(node, list):
        return [match for value in node for match in interpolations(value)]
    return list(INTERPOLATION.finditer(node)) if isinstance(node, str) else []


# --- structure ------------------------------------------------------------------------------
def test_the_default_stack_has_every_process(services: dict[str, dict[str, Any]]) -> None:
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == DEFAULT_SERVICES
    assert services["realtime"]["profiles"] == ["realtime"]


def test_app_services_share_the_anchor(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    anchor = compose[APP_ANCHOR]
    for name in APP_SERVICES:
        service = services[name]
        assert service["image"] == anchor["image"], name
        assert service["build"] == anchor["build"], name
        assert service["environment"] == anchor["environment"], name
        assert "container_name" not in service, f"{name}: container_name prevents scaling"


def test_dependencies_exist_and_start_in_order(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if not service.get("profiles"):
                assert not services[dependency].get("profiles"), (
                    f"{name} (default stack) depends on {dependency}, which only a profile starts"
                )
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in APP_SERVICES - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
    assert services["listener"]["restart"] == "unless-stopped"


# --- commands -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_commands_are_real_cli_invocations(
    name: str, compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    argv = service_argv(name, services[name], compose)
    assert argv, f"{name} runs nothing"
    if argv[0] == "celery":
        assert argv[1:3] == ["-A", "tasks"], argv
        assert argv[3] in CELERY_COMMANDS, argv
        return
    assert argv[0] == "coachpipe", argv
    command, context = parse_coachpipe(argv[1:])
    assert command.callback is not None
    # Commands that pass unknown options on to Celery would swallow a renamed option silently.
    assert context.args == [], f"{name}: options the command does not know: {context.args}"
    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{name}: {argv!r}\n{result.output}"


def test_the_parser_check_catches_a_renamed_option() -> None:
    with pytest.raises(USAGE_ERRORS):
        parse_coachpipe(["api", "--bind", "0.0.0.0"])
    with pytest.raises(AssertionError):
        parse_coachpipe(["listener"])
    _, context = parse_coachpipe(["worker", "--queue", "realtime"])
    assert context.args == ["--queue", "realtime"]


def test_the_worker_serves_both_queues(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    _, context = parse_coachpipe(service_argv("worker", services["worker"], compose)[1:])
    assert set(context.params["queues"].split(",")) == set(QUEUES)


# --- environment ----------------------------------------------------------------------------
def test_app_variables_are_settings(services: dict[str, dict[str, Any]]) -> None:
    settings_variables = {name.upper() for name in Settings.model_fields}
    for name in APP_SERVICES:
        unknown = set(environment(services[name])) - settings_variables - EXTRA_APP_VARIABLES
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"


def test_postgres_variables_only_on_db(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name != "db":
            assert not [var for var in environment(service) if var.startswith("POSTGRES_")], name


def test_no_secret_literals(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for variable, value in environment(service).items():
            if SECRET_NAME.search(variable) and value is not None:
                assert SECRET_VALUE.fullmatch(value), f"{name}.{variable} is a literal: {value!r}"
            password = urlsplit(value).password if value and "://" in value else None
            if password is not None:
                assert SECRET_VALUE.fullmatch(password), f"{name}.{variable} embeds a password"


def test_profile_only_variables_are_not_required(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """Compose interpolates every service, active profile or not: `:?` there breaks `up`."""
    default = {name: s for name, s in services.items() if not s.get("profiles")}
    used_by_default = {m.group(1) for m in interpolations([compose[APP_ANCHOR], default])}
    for match in interpolations(compose):
        if match.group(3) == "?":
            assert match.group(1) in used_by_default, f"{match.group(0)} is profile-only"


def test_core_secrets_are_required(compose: dict[str, Any]) -> None:
    required = {m.group(1) for m in interpolations(compose) if m.group(2, 3) == (":", "?")}
    assert {"POSTGRES_PASSWORD", "SUPABASE_JWT_SECRET", "FLOWER_BASIC_AUTH"} <= required


def test_app_environment_is_valid_settings(services: dict[str, dict[str, Any]]) -> None:
    """With the secrets filled in, the app environment validates and names compose's services."""
    host = {
        "POSTGRES_PASSWORD": "0123abcd",
        "SUPABASE_JWT_SECRET": "j" * 40,
        "FLOWER_BASIC_AUTH": "admin:pw",
    }
    env = {
        variable: interpolate(value, host)
        for variable, value in environment(services["api"]).items()
        if value is not None
    }
    # Validated as given: neither the test's environment nor a `.env` file takes part.
    settings = Settings.model_validate({k.lower(): v for k, v in env.items()})
    assert urlsplit(settings.require_database_url()).hostname == "db"
    assert urlsplit(settings.require_redis_url()).hostname == "redis"
    assert urlsplit(settings.require_broker_url()).hostname == "redis"
    assert settings.require_broker_url() != settings.require_redis_url()
    assert settings.listener_source is SourceName.POSTGRES
    assert settings.flower_basic_auth is not None


# --- exposure -------------------------------------------------------------------------------
def published(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(host address, container port) of each published port."""
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.append((entry.get("host_ip"), str(entry["target"])))
            continue
        parts = str(entry).split(":")
        ports.append((parts[0] if len(parts) == 3 else None, parts[-1]))
    return ports


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for address, _ in published(service):
            assert address == "127.0.0.1", f"{name} publishes beyond 127.0.0.1"
    assert published(services["flower"]) == [("127.0.0.1", "5555")]
    assert published(services["api"]) == [("127.0.0.1", "8000")]


def test_workers_scale(services: dict[str, dict[str, Any]]) -> None:
    """`docker compose up --scale worker=N`: nothing may be unique to one container."""
    worker = services["worker"]
    assert "container_name" not in worker
    assert "hostname" not in worker  # Celery names each worker celery@<container id>
    assert not worker.get("ports")


def test_flower_requires_basic_auth(services: dict[str, dict[str, Any]]) -> None:
    value = environment(services["flower"])["FLOWER_BASIC_AUTH"]
    assert value is not None and re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", value)


def test_api_verifies_jwts(services: dict[str, dict[str, Any]]) -> None:
    value = environment(services["api"])["SUPABASE_JWT_SECRET"]
    assert value is not None and value.startswith("${SUPABASE_JWT_SECRET:?")


# --- Postgres, Redis and Realtime ----------------------------------------------------------
def test_postgres_runs_logical_replication(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    db = services["db"]
    argv = as_argv(db["command"])
    options = {argv[i + 1] for i, part in enumerate(argv[:-1]) if part == "-c"}
    assert {"wal_level=logical", "max_replication_slots=10", "max_wal_senders=10"} <= options
    assert "pg_isready" in db["healthcheck"]["test"]
    assert (
        environment(db)["POSTGRES_PASSWORD"]
        == "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD (URL-safe)}"
    )
    named = [volume.split(":")[0] for volume in db["volumes"]]
    assert "db-data" in named and "db-data" in compose["volumes"]
    for volume in db["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).is_file(), f"db mounts missing {source}"


def test_redis_persists(services: dict[str, dict[str, Any]]) -> None:
    argv = as_argv(services["redis"]["command"])
    assert argv[argv.index("--appendonly") + 1] == "yes"


def test_realtime_is_self_hosted_against_db(services: dict[str, dict[str, Any]]) -> None:
    realtime = services["realtime"]
    assert re.fullmatch(r"supabase/realtime:v2\.\d+\.\d+", realtime["image"])
    env = environment(realtime)
    assert env["DB_HOST"] == "db" and env["SEED_SELF_HOST"] == "true"
    assert env["DB_AFTER_CONNECT_QUERY"] == "SET search_path TO _realtime"
    # The listener reaches tenant `realtime-dev` through this name (SUPABASE_URL).
    aliases = realtime["networks"]["default"]["aliases"]
    assert any(alias.split(".")[0] == "realtime-dev" for alias in aliases)


# --- the image ------------------------------------------------------------------------------
def test_dockerfile_runs_coachpipe_as_non_root(compose: dict[str, Any]) -> None:
    built = dockerfile_path(compose)
    assert built.exists(), f"compose builds from {built}, which does not exist"
    for path in (p for p in {built, ROOT / "Dockerfile"} if p.exists()):
        assert dockerfile_instruction(path, "ENTRYPOINT")[0] == "coachpipe", path
        lines = path.read_text().splitlines()
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1] not in {"root", "0"}, f"{path.name} runs as root"
        assert any(line.startswith("FROM python:3.11") for line in lines)


def test_image_copies_every_package(compose: dict[str, Any]) -> None:
    """A package added to pyproject.toml but not copied would be missing from the image."""
    path = dockerfile_path(compose)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {
        source.rstrip("/")
        for line in path.read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    }
    assert packages | {"pyproject.toml", project["project"]["readme"]} <= copied
    ignore = Path(f"{path}.dockerignore")
    if ignore.exists():
        kept = {line[1:] for line in ignore.read_text().splitlines() if line.startswith("!")}
        assert copied <= kept, f"{ignore.name} leaves out {sorted(copied - kept)}"


def test_service_key_script_makes_a_service_role_jwt() -> None:
    secret = "s" * 40
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "service_key.py"), "--days", "1"],
        env={"SUPABASE_JWT_SECRET": secret},
        capture_output=True,
        text=True,
        check=True,
    )
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["role"] == "service_role"
    assert claims["exp"] - claims["iat"] == 86_400
    refused = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "service_key.py")],
        env={},
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2 and not refused.stdout
