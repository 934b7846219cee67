"""`python -m devtools.bench [SCENARIO[,SCENARIO…]|all] [--quick|--smoke] [--output DIR]
[--noisy-neighbour SHARE] [--broker redis|rabbitmq] [--stacks BROKER+STORE,…] [--duration S]
[--rate N]` (`make bench`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console

from devtools.bench.runner import Services, run_bench


class Broker(StrEnum):
    REDIS = "redis"
    RABBITMQ = "rabbitmq"


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def bench(
    scenario: Annotated[str, typer.Argument(help="A scenario name, or `all`.")] = "all",
    *,
    quick: Annotated[bool, typer.Option(help="Short runs (a few minutes in all).")] = False,
    smoke: Annotated[
        bool, typer.Option(help="Tiny runs that only prove the harness works.")
    ] = False,
    output: Annotated[str, typer.Option(help="Results directory.")] = "devtools/bench/results",
    noisy_neighbour: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Burn this share of one core in another process all run long."
        ),
    ] = 0.0,
    broker: Annotated[
        Broker,
        typer.Option(help="Celery broker: the shared Redis, or a private RabbitMQ node (amqp)."),
    ] = Broker.REDIS,
    duration: Annotated[
        float | None,
        typer.Option(min=1.0, help="Load seconds of `chaos` and `soak-audit` (profile's else)."),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="Changes/s of `chaos` and `soak-audit` (200 else), and of each stream of "
            "`whale` and `whale-fairness` (100 else).",
        ),
    ] = None,
    stacks: Annotated[
        str,
        typer.Option(
            help="Run on each of these broker+store combinations in turn, into one results "
            "file (overrides --broker): e.g. redis+redis,rabbitmq+cluster. Broker: redis or "
            "rabbitmq; store: redis or cluster (a private 3+3 Redis Cluster)."
        ),
    ] = "",
    beat: Annotated[
        bool,
        typer.Option(
            help="Run celery beat beside the worker, as deployed: its clock ticks, refreshes "
            "and audits share the worker with the realtime drains."
        ),
    ] = False,
) -> None:
    """Measure the pipeline on private services; write JSON, Markdown and plots."""
    try:
        combinations = [Services.parse(text) for text in stacks.split(",") if text.strip()]
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--stacks") from None
    raise typer.Exit(
        run_bench(
            scenario,
            quick=quick,
            smoke=smoke,
            output=output,
            console=Console(),
            noisy_neighbour=noisy_neighbour,
            broker=broker.value,
            duration=duration,
            rate=rate,
            stacks=combinations,
            beat=beat,
        )
    )


if __name__ == "__main__":
    app()
