"""Every Prometheus metric of the pipeline, with stable names and units.

Listeners serve them on LISTENER_METRICS_PORT, workers through `tasks.worker_metrics`;
pipeline code only increments.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60)

EVENTS = Counter(
    "coachpipe_events_total", "Change events received, by source, table and type.",
    ["source", "table", "type"],
)  # fmt: skip
BAD_INPUT = Counter(
    "coachpipe_bad_input_total", "Inputs from outside that could not be used, by reason.",
    ["source", "reason"],
)  # fmt: skip
WIDE_REFRESHES = Counter(
    "coachpipe_wide_refresh_requests_total",
    "Changes without a usable coach id answered by a refresh of every coach, by table and reason.",
    ["table", "reason"],
)
VISIBILITY_WAITS = Counter(
    "coachpipe_visibility_waits_total",
    "Batches whose committed transactions a fresh snapshot did not see yet, by outcome "
    "(visible after polling; timeout or error: recomputes requested anyway).",
    ["source", "outcome"],
)
RECONNECTS = Counter(
    "coachpipe_listener_reconnects_total", "Listener reconnect attempts.", ["source"]
)
LISTENER_TEARDOWNS = Counter(
    "coachpipe_listener_teardowns_total",
    "Connections a listener tore down, by reason (what it saw wrong, or `stopping`).",
    ["source", "reason"],
)
STALE_REPORTS = Counter(
    "coachpipe_listener_stale_reports_total",
    "Callbacks and frames from an older connection generation, counted and ignored, by kind.",
    ["source", "kind"],
)
LINK_CHECK_SECONDS = Histogram(
    "coachpipe_listener_link_check_seconds",
    "Round trip of the listener's own liveness checks: `heartbeat` (Phoenix reply) and "
    "`canary` (a committed row back through the subscription).",
    ["source", "check"],
    buckets=LATENCY_BUCKETS,
)
CATCH_UP_FALLBACKS = Counter(
    "coachpipe_catch_up_fallbacks_total",
    "Catch-ups that found no usable last-event marker and refreshed every active coach "
    "instead, by source and reason (missing, unreadable, no_timezone, in_future).",
    ["source", "reason"],
)
ENQUEUE_RETRIES = Counter(
    "coachpipe_listener_enqueue_retries_total",
    "Batches or catch-ups whose requests failed on a transient error and were retried.",
    ["source"],
)
LISTENER_STATE = Gauge(
    "coachpipe_listener_state",
    "1 for the listener's current state, 0 for the others.",
    ["source", "state"],
    multiprocess_mode="livemax",
)
LISTENER_TASKS = Gauge(
    "coachpipe_listener_asyncio_tasks",
    "asyncio tasks alive in the listener process (leak watch).",
    multiprocess_mode="livemax",
)
SLOT_LAG_BYTES = Gauge(
    "coachpipe_slot_lag_bytes",
    "WAL bytes the replication slot still holds.",
    ["slot"],
    multiprocess_mode="livemax",
)
SLOT_RECREATED = Counter(
    "coachpipe_slot_recreated_total",
    "Replication slots the listener replaced because they could not stream any more, by reason "
    "(publication_missing_at_position, slot_lost, slot_dropped); each is followed by a refresh "
    "of every active coach.",
    ["reason"],
)
EVENT_LAG_SECONDS = Histogram(
    "coachpipe_commit_to_listener_seconds", "Commit to the listener's receipt of the event.",
    ["source"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
RECOMPUTE_REQUESTS = Counter(
    "coachpipe_recompute_requests_total",
    "Recompute requests by outcome: enqueued (marked due) or suppressed (already pending).",
    ["outcome"],
)
DRAINS_ENQUEUED = Counter(
    "coachpipe_drain_tasks_enqueued_total",
    "Drain tasks enqueued, by scheduler shard and why (request, follow_up, sweep).",
    ["shard", "reason"],
)
WIDENED_WINDOWS = Counter(
    "coachpipe_scheduler_widened_windows_total",
    "Coaches whose recompute window started (widened) or stopped (restored) being widened by "
    "their measured recompute cost (COACH_SHARE).",
    ["change"],
)
WIDENED_CLAIMS = Counter(
    "coachpipe_scheduler_widened_claims_total",
    "Drain claims that took one coach alone: one recompute of it takes longer than DEBOUNCE_MS.",
)
CLAIMS_REQUEUED = Counter(
    "coachpipe_claims_requeued_total",
    "Due (aggregate, coach) pairs put back by a sweep: their drain's lease expired.",
)
SWEEP_ERRORS = Counter(
    "coachpipe_sweep_errors_total", "A worker's periodic sweep failed (Redis unreachable)."
)
EPOCH_CHECK_ERRORS = Counter(
    "coachpipe_redis_epoch_check_errors_total",
    "A failover epoch check could not read or record a master's epoch (master unreachable).",
)
FENCE_CHECK_ERRORS = Counter(
    "coachpipe_redis_fence_check_errors_total",
    "A check of whether a failover of the data store is fenced failed (store or every "
    "sentinel unreachable); tried again next check.",
)
RECOMPUTE_SECONDS = Histogram(
    "coachpipe_recompute_duration_seconds", "One batch recompute: version, snapshot, store.",
    ["aggregate"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
RECOMPUTED_COACHES = Counter(
    "coachpipe_recomputed_coaches_total", "Coach aggregates recomputed.", ["aggregate"]
)
INCREMENTAL_RECOMPUTES = Counter(
    "coachpipe_incremental_recomputes_total",
    "Values a drain had a stored base for (pipeline.aggregates.delta), by how they were read:"
    " incremental (changed lines only) or full (the roster or the summaries changed wholesale).",
    ["aggregate", "way"],
)
INCREMENTAL_LINES = Histogram(
    "coachpipe_incremental_lines",
    "Lines an incremental recompute read again (changed since its base, or passed by the clock).",
    ["aggregate"], buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500),
)  # fmt: skip
STALE_WRITES = Counter(
    "coachpipe_stale_writes_rejected_total",
    "Writes rejected because a newer version was already stored.", ["aggregate"],
)  # fmt: skip
COMMIT_TO_STORED_SECONDS = Histogram(
    "coachpipe_commit_to_stored_seconds",
    "Commit of a change to the storage of the aggregate it invalidated.",
    ["aggregate"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
FRESHNESS_BUCKETS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60)
"""Finer than LATENCY_BUCKETS around the freshness goals (p50 30 ms, p99 150 / 300 ms)."""
CHANGE_FRESHNESS_SECONDS = Histogram(
    "coachpipe_change_freshness_seconds",
    "Commit of a change to the storage of every aggregate routed from it, per change and coach "
    "(pipeline.freshness).",
    buckets=FRESHNESS_BUCKETS,
)
CLOCK_TICK_COACHES = Counter(
    "coachpipe_clock_tick_coaches_total",
    "Coaches with a time-boundary crossing found by the clock tick, by outcome: recomputed, or "
    "current (their stored value was computed at a clock past the crossing).",
    ["aggregate", "outcome"],
)
AUDIT_CHECKED = Counter(
    "coachpipe_audit_checked_total", "Stored coach aggregates the audit compared.", ["aggregate"]
)
AUDIT_FINDINGS = Counter(
    "coachpipe_audit_findings_total",
    "Audit findings by kind: missing or differs (stale past the grace period: mismatches), "
    "clock (differs only by the clock's move, bounded by the clock tick).",
    ["aggregate", "kind"],
)
AUDIT_REPAIRED = Counter(
    "coachpipe_audit_repaired_total", "Coach aggregates the audit recomputed after a mismatch."
)
AUDIT_CONSISTENCY = Gauge(
    "coachpipe_audit_consistency_ratio",
    "Share of the last audit pass's checked values that were right, per aggregate.",
    ["aggregate"],
    multiprocess_mode="mostrecent",
)
AUDIT_OLDEST_STALE_SECONDS = Gauge(
    "coachpipe_audit_oldest_stale_seconds",
    "How long the stalest mismatch of the last audit pass had been wrong, at least.",
    multiprocess_mode="mostrecent",
)
API_REFUSED = Counter(
    "coachpipe_api_refused_total",
    "Requests the read API refused before reading them whole, by status (414 URL, 431 headers).",
    ["status"],
)
API_AUTH_REJECTED = Counter(
    "coachpipe_api_auth_rejected_total",
    "Tokens the read API refused, by reason (expired, signature, audience, issuer, lifetime…).",
    ["reason"],
)
