"""`coachpipe status`: everything on-call looks at first, gathered in one report."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from config import Settings
from pipeline import keys, scheduler
from pipeline.aggregates import NAMES
from pipeline.audit import below_slo, last_audit
from pipeline.freshness import summary as freshness_summary
from pipeline.health import HealthBoard
from pipeline.redis_client import RedisClient, connect
from pipeline.redis_values import as_text
from tasks.names import QUEUES


def _queue_depths(settings: Settings) -> dict[str, int | None]:
    from tasks.celery import create_app

    depths: dict[str, int | None] = {}
    app = create_app(settings)
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        for queue in QUEUES:
            try:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except Exception as error:  # kombu/py-amqp ChannelError, by transport
                # NOT_FOUND: on Redis an empty queue has no list at all; elsewhere the queue was
                # never declared. Either way nothing waits in it.
                depths[queue] = 0 if "NOT_FOUND" in str(error) else None
    app.close()
    return depths


def _slot(settings: Settings) -> dict[str, Any] | None:
    from coachpipe.slot import describe

    try:
        slot = describe(settings)
    except Exception as error:
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    if slot is not None:
        slot["warn"] = (slot["lag_bytes"] or 0) > settings.slot_lag_warn_bytes
    return slot


def _audit(client: RedisClient, settings: Settings) -> dict[str, Any] | None:
    summary = last_audit(client)
    if summary is None:
        return None
    return {
        "snapshot_at": summary["snapshot_at"],
        "checked": summary["checked"],
        "consistency": summary["consistency"],
        "mismatches": len(summary["mismatches"]),
        "oldest_stale_s": summary["oldest_stale_s"],
        "below_slo": below_slo(summary, settings.audit_consistency_slo),
    }


def _widened(client: RedisClient, settings: Settings) -> dict[str, dict[str, float | int]]:
    """Coaches whose measured recompute cost widens their window (COACH_SHARE), costliest
    first: coach id → cost and window, ms."""
    costs = scheduler.widened_costs(client, settings.scheduler_shards)
    return {
        str(coach): {
            "cost_ms": cost / 1000,
            "window_ms": scheduler.coach_window_ms(
                cost,
                settings.debounce_ms,
                int(settings.pending_stale_s * 1000),
                settings.coach_share,
            ),
        }
        for coach, cost in sorted(costs.items(), key=lambda item: -item[1])
    }


def gather(settings: Settings) -> dict[str, Any]:
    client = connect(settings.require_redis_url())
    board = HealthBoard.from_settings(client, settings)
    status = board.status()
    recomputes = scheduler.backlog(client, settings.scheduler_shards)
    last = {as_text(k): float(v) for k, v in client.hgetall(keys.LAST_REFRESH).items()}
    audited = _audit(client, settings)
    overall = status.color.value
    if overall == "green" and audited is not None and audited["below_slo"]:
        overall = "yellow"  # realtime is up, but the audit found values wrong past the SLO
    return {
        "status": overall,
        "realtime": status.as_json(),
        "queues": _queue_depths(settings),
        "pending_recomputes": {name: recomputes.pending.get(name, 0) for name in NAMES},
        "claimed_recomputes": {name: recomputes.claimed.get(name, 0) for name in NAMES},
        "widened_windows": _widened(client, settings),
        "slot": _slot(settings),
        "freshness": freshness_summary(client),
        "audit": audited,
        "slot_recreations": {
            as_text(k): as_text(v)
            for k, v in client.hgetall(keys.slot_recreations(settings.slot_name)).items()
        },
        "last_refresh": {
            name: datetime.fromtimestamp(stamp, UTC).isoformat() for name, stamp in last.items()
        },
    }


def render(report: dict[str, Any], console: Console) -> None:
    realtime = report["realtime"]
    colours = {"green": "green", "yellow": "yellow", "red": "red"}
    console.print(f"pipeline: [bold {colours[report['status']]}]{report['status']}[/]")
    colour = colours[realtime["status"]]
    console.print(f"realtime: [bold {colour}]{realtime['status']}[/] ({realtime['reason']})")
    listeners = Table(
        "listener", "source", "state", "heartbeat", "last event", "attempts", "detail"
    )
    now = datetime.now(UTC).timestamp()
    for listener in realtime["listeners"]:
        last_event = listener["last_event_at"]
        listeners.add_row(
            listener["listener_id"],
            listener["source"],
            listener["state"],
            f"{now - listener['heartbeat_at']:.0f} s ago",
            f"{now - last_event:.0f} s ago" if last_event else "-",
            str(listener["reconnect_attempts"]),
            listener["detail"],
        )
    console.print(listeners)
    queues = Table("queue", "waiting")
    for queue, depth in report["queues"].items():
        queues.add_row(queue, "-" if depth is None else str(depth))
    console.print(queues)
    pending = Table("aggregate", "pending", "claimed", "last bulk refresh")
    for name, count in report["pending_recomputes"].items():
        pending.add_row(
            name,
            str(count),
            str(report["claimed_recomputes"][name]),
            report["last_refresh"].get(name, "-"),
        )
    console.print(pending)
    widened = report["widened_windows"]
    if widened:
        costliest = ", ".join(
            f"{coach} ({entry['cost_ms']:.1f} ms a recompute: every {entry['window_ms']:.0f} ms)"
            for coach, entry in list(widened.items())[:3]
        )
        console.print(f"windows widened by cost (COACH_SHARE): {len(widened)} coaches; {costliest}")
    fresh = report["freshness"]
    console.print(
        f"freshness, commit → every aggregate stored, last {fresh['minutes']} min: "
        f"p50 {fresh['p50_ms'] or '-'} ms, p99 {fresh['p99_ms'] or '-'} ms "
        f"({fresh['changes']} changes)"
    )
    audited = report.get("audit")
    if audited is None:
        console.print("audit: none yet (beat audits a slice every AUDIT_INTERVAL_S)")
    else:
        worst = min(audited["consistency"].values(), default=1.0)
        flag = (
            f" [bold yellow]below the SLO: {', '.join(audited['below_slo'])}[/]"
            if audited["below_slo"]
            else ""
        )
        console.print(
            f"audit at {audited['snapshot_at']}: {sum(audited['checked'].values())} checked, "
            f"{audited['mismatches']} mismatched (repaired), lowest consistency {worst:.4%}, "
            f"oldest stale {audited['oldest_stale_s']} s{flag}"
        )
    slot = report["slot"]
    if slot is None:
        console.print("slot: none yet (created by the first `coachpipe listen --source postgres`)")
    elif "error" in slot:
        console.print(f"slot: unknown ({slot['error']})")
    else:
        flag = " [red]above SLOT_LAG_WARN_BYTES[/]" if slot["warn"] else ""
        console.print(
            f"slot {slot['slot_name']}: active={slot['active']} lag={slot['lag_bytes']} bytes "
            f"(WAL held {slot['wal_held']}, wal_status {slot['wal_status']}){flag}"
        )
    render_recreations(report.get("slot_recreations") or {}, console)


def render_recreations(recreations: dict[str, str], console: Console) -> None:
    if "count" in recreations:
        at = datetime.fromtimestamp(float(recreations["last_at"]), UTC).isoformat()
        console.print(
            f"slot recreated {recreations['count']} time(s), last at {at} "
            f"({recreations['last_reason']}, new position {recreations['position']})"
        )
    if "pending" in recreations:
        console.print(
            f"[bold red]changes may have been missed[/]: {recreations['pending']}; "
            "the refresh of every coach is not enqueued yet"
        )
