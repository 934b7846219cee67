"""The beat schedule, derived from the aggregates registry and the settings."""

from __future__ import annotations

from typing import Any

from config import Settings
from pipeline.aggregates import CRITICAL, SECONDARY

SWEEP_S = 10.0


def _entry(task: str, every: float, *args: Any) -> dict[str, Any]:
    # A scheduled task that waited longer than its interval is stale: drop it, do not pile up.
    return {"task": task, "schedule": every, "args": args, "options": {"expires": every * 0.9}}


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule = {
        f"refresh-{aggregate.name}": _entry(
            "tasks.jobs.refresh_all", settings.secondary_refresh_s, aggregate.name, "schedule"
        )
        for aggregate in SECONDARY
    }
    schedule |= {
        f"clock-{aggregate.name}": _entry(
            "tasks.jobs.tick_clock", settings.clock_tick_s, aggregate.name
        )
        for aggregate in CRITICAL
        if aggregate.time_boundaries
    }
    schedule |= {
        "realtime-status": _entry("tasks.jobs.check_realtime", settings.status_check_s),
        "fallback-poll": _entry("tasks.jobs.fallback_poll", settings.fallback_poll_s),
        "sweep-lost-markers": _entry("tasks.jobs.sweep", SWEEP_S),
        "reconcile-all": _entry("tasks.jobs.reconcile", settings.reconcile_s),
    }
    return schedule
