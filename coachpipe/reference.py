"""Reference tables generated from the code: the aggregates registry and the settings.

The README carries these tables verbatim; a test regenerates them and compares, so the docs
cannot drift from what the code declares.
"""

from __future__ import annotations

from pydantic import SecretStr

from config import Settings
from pipeline.aggregates import REGISTRY, Kind
from pipeline.routing import TABLE_AGGREGATES


def aggregates_markdown() -> str:
    lines = [
        "| aggregate | kind | reads | kept fresh by | value |",
        "|---|---|---|---|---|",
    ]
    for aggregate in REGISTRY:
        fresh = (
            "change events; the clock tick for time-dependent fields"
            if aggregate.time_boundaries
            else "change events"
        )
        if aggregate.kind is Kind.SECONDARY:
            fresh = "beat, every SECONDARY_REFRESH_S"
        tables = ", ".join(sorted(aggregate.tables))
        lines.append(
            f"| `{aggregate.name}` | {aggregate.kind.value} | {tables} | {fresh} | "
            f"{aggregate.description} |"
        )
    return "\n".join(lines) + "\n"


def routing_markdown() -> str:
    lines = ["| table | invalidates |", "|---|---|"]
    for table, names in TABLE_AGGREGATES.items():
        lines.append(f"| `{table}` | {', '.join(f'`{n}`' for n in names)} |")
    return "\n".join(lines) + "\n"


def settings_markdown() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is None or isinstance(default, SecretStr):
            shown = "—"
        elif hasattr(default, "value"):
            shown = f"`{default.value}`"
        else:
            shown = f"`{default}`"
        lines.append(f"| `{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(lines) + "\n"
