"""The beat schedule, derived from the aggregates registry and the settings."""

from __future__ import annotations

from typing import Any

from config import Settings
from pipeline.aggregates import CRITICAL, SECONDARY
from tasks import names

SWEEP_S = 10.0
"""Beat's sweep: a backstop of every worker's own sweep (`tasks.sweeper`, about every second)."""


def _entry(task: str, every: float, *args: Any) -> dict[str, Any]:
    # A scheduled task that waited longer than its interval is stale: drop it, do not pile up.
    return {"task": task, "schedule": every, "args": args, "options": {"expires": every * 0.9}}


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule = {
        f"refresh-{aggregate.name}": _entry(
            names.REFRESH_ALL, settings.secondary_refresh_s, aggregate.name, "schedule"
        )
        for aggregate in SECONDARY
    }
    schedule |= {
        f"clock-{aggregate.name}": _entry(names.TICK_CLOCK, settings.clock_tick_s, aggregate.name)
        for aggregate in CRITICAL
        if aggregate.time_boundaries
    }
    schedule |= {
        "realtime-status": _entry(names.CHECK_REALTIME, settings.status_check_s),
        "fallback-poll": _entry(names.FALLBACK_POLL, settings.fallback_poll_s),
        "sweep-lost-markers": _entry(names.SWEEP, SWEEP_S),
        "reconcile-all": _entry(names.RECONCILE, settings.reconcile_s),
        "audit-sample": _entry(names.AUDIT_SAMPLE, settings.audit_interval_s),
        "advance-summaries": _entry(names.ADVANCE_SUMMARIES, settings.clock_tick_s),
    }
    return schedule
