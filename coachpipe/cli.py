"""`coachpipe`: the operator's command line.

Every command builds `Settings` from the environment (and `.env`), does one thing and exits
non-zero with a one-line message when something outside is wrong (a setting, a service that
does not answer, an unknown coach), never with a traceback. `--json` prints what a script would
read; the default output is for people.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, ParamSpec, TypeVar
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table

from coachpipe.errors import CommandError
from config import Settings, SettingsError, SourceName, load_settings
from pipeline.aggregates import NAMES
from pipeline.redis_client import connect
from tasks.names import QUEUES

app = typer.Typer(
    name="coachpipe",
    help="Keeps coach dashboard aggregates fresh in Redis, in under a second.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
slot_app = typer.Typer(help="The logical replication slot of the `postgres` source.")
app.add_typer(slot_app, name="slot")
console = Console()
errors = Console(stderr=True)
Params = ParamSpec("Params")
Result = TypeVar("Result")

AggregateName = StrEnum("AggregateName", {name: name for name in NAMES})  # type: ignore[misc]


def _failure_message(error: Exception) -> str | None:
    import psycopg
    import redis
    import sqlalchemy.exc
    from kombu.exceptions import OperationalError as BrokerError

    from config.logging import redact_text
    from pipeline.errors import PipelineError

    if isinstance(error, CommandError | PipelineError):
        return str(error)
    if isinstance(error, sqlalchemy.exc.OperationalError | psycopg.OperationalError):
        return "cannot reach Postgres (DATABASE_URL): " + redact_text(str(error).splitlines()[0])
    if isinstance(error, redis.ConnectionError | redis.TimeoutError):
        return "cannot reach Redis (REDIS_URL): " + redact_text(str(error))
    if isinstance(error, BrokerError):
        return "cannot reach the broker (BROKER_URL): " + redact_text(str(error))
    return None


def command(function: Callable[Params, Result]) -> Callable[Params, Result]:
    """Turn known failures into a clear message and an exit code instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Params.args, **kwargs: Params.kwargs) -> Result:
        try:
            return function(*args, **kwargs)
        except SettingsError as error:
            errors.print(f"[red]coachpipe:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as error:
            message = _failure_message(error)
            if message is None:
                raise
            errors.print(f"[red]coachpipe:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def settings() -> Settings:
    return load_settings()


def _coach(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a coach id (a UUID)") from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# --- schema and data ----------------------------------------------------------------------
@app.command()
@command
def migrate() -> None:
    """Create or upgrade the schema and publications (safe to run any number of times)."""
    from pipeline.db import make_engine, redacted
    from pipeline.migrate import current_revision, upgrade

    config = settings()
    engine = make_engine(config.require_database_url())
    added = upgrade(engine, config.publication_name)
    console.print(
        f"schema at revision [bold]{current_revision(engine)}[/] on "
        f"{redacted(config.require_database_url())}"
    )
    for entry in added:
        console.print(f"  added to publication: {entry}")
    from pipeline.backfill import is_ready

    if not is_ready(engine):
        console.print(
            "  summaries not filled yet: run [bold]coachpipe backfill[/] (until then the"
            " aggregates read whole histories)"
        )
    engine.dispose()


@app.command()
@command
def backfill(
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Coaches a transaction.")
    ] = 100,
) -> None:
    """Fill the summary tables from the rows already there, with a progress bar.

    Safe while writes continue and idempotent; then the aggregates read the summaries.
    """
    from coachpipe.summaries import run_backfill

    run_backfill(settings(), batch_size, console)


@app.command()
@command
def seed(
    coaches: Annotated[int, typer.Option(min=1, max=100_000, help="Number of coaches.")] = 200,
    clients_per_coach: Annotated[int, typer.Option(min=0, max=1000)] = 20,
    sessions_per_client: Annotated[int, typer.Option(min=0, max=1000)] = 5,
    random_seed: Annotated[int, typer.Option("--seed", help="Same seed, same data.")] = 42,
    truncate: Annotated[bool, typer.Option(help="Empty the five tables first.")] = False,
) -> None:
    """Load realistic, deterministic data with COPY (10k coaches ≈ 1M sessions)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from pipeline import seed as seeding
    from pipeline.db import libpq_dsn

    dsn = libpq_dsn(settings().require_database_url())
    if truncate:
        seeding.truncate(dsn)
    elif not seeding.is_empty(dsn):
        raise CommandError("the tables already hold data; pass --truncate to replace it")
    plan = seeding.SeedPlan(
        coaches=coaches,
        clients_per_coach=clients_per_coach,
        sessions_per_client=sessions_per_client,
        seed=random_seed,
    )
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, BarColumn(bar_width=None), console=console, transient=False) as bar:
        task = bar.add_task("seeding rows", total=seeding.expected_rows(plan))
        counts = seeding.load(dsn, plan, lambda n: bar.advance(task, n))
        bar.update(task, total=counts.total(), completed=counts.total())
    console.print(
        f"loaded {counts.users:,} users, {counts.sessions:,} sessions, "
        f"{counts.session_feedback:,} feedback, {counts.session_ratings:,} ratings, "
        f"{counts.goals:,} goals"
    )


# --- processes ------------------------------------------------------------------------------
@app.command()
@command
def listen(
    source: Annotated[
        SourceName | None, typer.Option(help="Change source; default LISTENER_SOURCE.")
    ] = None,
) -> None:
    """Run a listener: changes → deduplicated recompute tasks. Stop with SIGTERM or Ctrl-C."""
    from listeners.main import run

    raise typer.Exit(run(settings(), source))


def _celery(*args: str) -> None:
    settings()  # fail here, with a clear message, if the settings are wrong
    os.execvp(sys.executable, [sys.executable, "-m", "celery", "-A", "tasks", *args])  # noqa: S606


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@command
def worker(
    ctx: typer.Context,
    queues: Annotated[str, typer.Option("-Q", "--queues")] = ",".join(QUEUES),
    concurrency: Annotated[int, typer.Option("-c", "--concurrency", min=1)] = 2,
) -> None:
    """`celery -A tasks worker` with the pipeline's queues; extra options pass through."""
    _celery("worker", "-Q", queues, "-c", str(concurrency), "--loglevel=INFO", *ctx.args)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@command
def beat(ctx: typer.Context) -> None:
    """`celery -A tasks beat` (Redis-locked: extra beats stand by)."""
    _celery("beat", "--loglevel=INFO", *ctx.args)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@command
def flower(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=1, max=65_535)] = 5555,
    address: str = "127.0.0.1",
) -> None:
    """`celery -A tasks flower`, behind FLOWER_BASIC_AUTH (or open with FLOWER_INSECURE=1)."""
    _celery("flower", f"--port={port}", f"--address={address}", *ctx.args)


@app.command()
@command
def api(
    host: Annotated[str | None, typer.Option(help="Default API_HOST.")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65_535, help="Default API_PORT.")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="uvicorn worker processes.")] = 1,
) -> None:
    """Serve the read API and the live dashboard page."""
    from api.server import serve

    serve(settings(), host=host, port=port, workers=workers)


# --- reading and refreshing -----------------------------------------------------------------
@app.command()
@command
def show(
    coach: Annotated[str, typer.Argument(help="Coach id (UUID).")],
    aggregate: Annotated[AggregateName | None, typer.Option(help="Only this aggregate.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a coach's stored aggregates (from Redis, as dashboards read them)."""

    from pipeline.read import read_all

    coach_id = _coach(coach)
    client = connect(settings().require_redis_url())
    names = [aggregate.value] if aggregate else list(NAMES)
    found = read_all(client, coach_id, names)
    if found is None:
        raise CommandError(f"nothing stored for coach {coach_id} (unknown coach, or not computed)")
    if as_json:
        _print_json({name: stored.as_json() for name, stored in found.items()})
        return
    for name, stored in found.items():
        console.rule(f"{name}  v{stored.version}  as of {stored.as_of:%Y-%m-%d %H:%M:%S}")
        console.print_json(data=stored.value)


@app.command()
@command
def refresh(
    all_coaches: Annotated[bool, typer.Option("--all", help="Every active coach.")] = False,
    coach: Annotated[str | None, typer.Option(help="One coach id.")] = None,
    aggregate: Annotated[AggregateName | None, typer.Option(help="Only this aggregate.")] = None,
    enqueue: Annotated[bool, typer.Option(help="Hand the work to the workers instead.")] = False,
    rebuild_summaries: Annotated[
        bool, typer.Option(help="First rebuild the coaches' summary tables from their rows.")
    ] = False,
) -> None:
    """Recompute aggregates now, with a progress bar (or enqueue them with --enqueue)."""
    from coachpipe.refresh import refresh_coaches
    from coachpipe.summaries import rebuild_coach, run_backfill

    if all_coaches == (coach is not None):
        raise typer.BadParameter("give exactly one of --all or --coach ID")
    names = [aggregate.value] if aggregate else list(NAMES)
    if rebuild_summaries and coach is not None:
        rebuild_coach(settings(), _coach(coach))
    elif rebuild_summaries:
        run_backfill(settings(), 100, console)
    refresh_coaches(
        settings(), [_coach(coach)] if coach else None, names, enqueue=enqueue, console=console
    )


@app.command()
@command
def audit(  # noqa: PLR0917 - typer passes options by position
    all_coaches: Annotated[bool, typer.Option("--all", help="Every active coach.")] = False,
    coach: Annotated[str | None, typer.Option(help="One coach id.")] = None,
    sample: Annotated[
        int | None, typer.Option(min=1, help="The next N coaches of beat's sampling order.")
    ] = None,
    aggregate: Annotated[AggregateName | None, typer.Option(help="Only this aggregate.")] = None,
    repair: Annotated[bool, typer.Option(help="Recompute what is wrong.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare stored aggregates with a fresh recompute; repair and report. Exit 1 on a
    mismatch."""
    from coachpipe.audit import render, run_audit

    if sum((all_coaches, coach is not None, sample is not None)) != 1:
        raise typer.BadParameter("give exactly one of --all, --coach ID or --sample N")
    reports = run_audit(
        settings(),
        coach_ids=[_coach(coach)] if coach else None,
        sample=sample,
        names=[aggregate.value] if aggregate else None,
        repair=repair,
    )
    if as_json:
        _print_json([report.as_json() for report in reports])
    else:
        render(reports, console)
    if any(report.mismatches for report in reports):
        raise typer.Exit(1)


@app.command()
@command
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Listeners, realtime status, queue depths, slot lag and the last refreshes."""
    from coachpipe.status import gather, render

    report = gather(settings())
    if as_json:
        _print_json(report)
    else:
        render(report, console)


@app.command()
@command
def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check every prerequisite and say how to fix what is missing. Exit 1 on a failure."""
    from coachpipe.doctor import Severity, run_checks

    checks = run_checks(settings())
    if as_json:
        _print_json([check.as_json() for check in checks])
    else:
        table = Table("", "check", "finding", "fix", show_lines=True)
        icons = {
            Severity.OK: "[green]ok[/]",
            Severity.WARN: "[yellow]warn[/]",
            Severity.FAIL: "[red]FAIL[/]",
        }
        for check in checks:
            table.add_row(icons[check.severity], check.name, check.message, check.fix)
        console.print(table)
    if any(check.severity is Severity.FAIL for check in checks):
        raise typer.Exit(1)


@app.command()
@command
def simulate(
    rate: Annotated[float, typer.Option(min=0.1, max=100_000, help="Changes per second.")] = 20,
    duration: Annotated[
        float,
        typer.Option(min=0.1, max=30 * 86_400, help="Seconds to run."),
    ] = 60,
    coaches: Annotated[
        int, typer.Option(min=1, help="Spread changes over this many coaches.")
    ] = 50,
    random_seed: Annotated[int, typer.Option("--seed")] = 7,
) -> None:
    """Write realistic change traffic (sessions booked, completed, rated...) at a steady rate."""
    from coachpipe.traffic import run_traffic

    stats = run_traffic(settings(), rate=rate, duration=duration, coaches=coaches, seed=random_seed)
    console.print(
        f"{stats.changes:,} changes in {stats.seconds:.1f} s "
        f"({stats.changes / max(stats.seconds, 1e-9):.0f}/s) over {stats.coaches} coaches"
    )


@app.command()
@command
def demo(
    coaches: Annotated[int, typer.Option(min=1, max=20_000, help="Coaches to seed.")] = 200,
    rate: Annotated[float, typer.Option(min=0.1, max=1000, help="Simulated changes/s.")] = 10,
    duration: Annotated[
        float | None,
        typer.Option(min=1, max=30 * 86_400, help="Stop by itself after this many seconds."),
    ] = None,
) -> None:
    """The whole pipeline on this machine: private Postgres and Redis unless URLs are set."""
    from coachpipe.demo import run_demo

    raise typer.Exit(run_demo(coaches=coaches, rate=rate, duration=duration, console=console))


@app.command()
def aggregates() -> None:
    """The aggregates registry and the table → aggregates routing derived from it."""
    from coachpipe.reference import aggregates_markdown, routing_markdown

    sys.stdout.write(aggregates_markdown() + "\n" + routing_markdown())


@slot_app.command("show")
@command
def slot_show(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The slot's state and how much WAL it holds."""
    from coachpipe.slot import describe

    info = describe(settings())
    if info is None:
        raise CommandError("no replication slot yet: it is created by the first `listen`")
    if as_json:
        _print_json(info)
    else:
        for key, value in info.items():
            console.print(f"{key:>16}: {value}")


@slot_app.command("drop")
@command
def slot_drop(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Drop the slot when removing the pipeline, so the database stops keeping WAL for it."""
    from coachpipe.slot import drop

    config = settings()
    if not yes:
        typer.confirm(
            f"Drop replication slot {config.slot_name!r}? Changes until a new slot exists "
            "will not be seen by the postgres source.",
            abort=True,
        )
    console.print("dropped" if drop(config) else "no such slot")


def main() -> None:
    app()
