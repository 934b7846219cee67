"""`link-faults`: how fast the `supabase` listener finds a dead link and comes back (issue 14).

Against the Realtime stand-in, with the shipped defaults (heartbeat every `HEARTBEAT_S`, reply
deadline `HEARTBEAT_REPLY_S`, canary every `CANARY_S`, deadline `CANARY_DEADLINE_S`), faster
ones in the smoke profile:

- **half-open**: the server stops reading and writing without closing (`blackhole`); time from
  then until the listener tears the link down for `heartbeat_timeout` (goal ≤ 10 s);
- **silent stall**: the socket answers heartbeats but no change is sent (`stall_changes`); time
  until the teardown for `canary_timeout` (goal ≤ 30 s);
- **drop**: the server closes the socket (1011); time until the subscription is live again on
  the server ("Subscribed to PostgreSQL" sent) and until the listener reports itself connected
  (goal ≤ 1 s). Drops land in two phases (`DROP_PHASES`): at once after the listener reports
  connected, while the new link's first canary write and catch-up are in flight (where a lost
  cancellation once held the teardown for a whole `CANARY_S`), and mid-way between two
  heartbeats, with every link task idle.
"""

from __future__ import annotations

import time
from typing import Any

from config import Settings
from devtools.bench.measure import percentiles
from devtools.bench.scenarios import Profile
from devtools.bench.stack import Stack
from devtools.processes import Proc, wait_for
from devtools.scrape import scrape

TRIALS = {"smoke": 1, "quick": 3}
"""Trials of each fault per profile; the full profile runs FULL_TRIALS."""
FULL_TRIALS = 10
DROP_PHASES = {"at_subscribed": 0.0, "mid_interval": 0.5}
"""Drop phase -> delay after the listener reports connected, as a fraction of `heartbeat_s`."""


LINK_SETTINGS = (
    "heartbeat_s",
    "heartbeat_reply_s",
    "heartbeat_stale_s",
    "canary_s",
    "canary_deadline_s",
)
SHIPPED = {name: float(Settings.model_fields[name].default) for name in LINK_SETTINGS}
"""The defaults a deployment runs with (the bench's stack otherwise beats every second)."""
SMOKE = {
    "heartbeat_s": 1.0,
    "heartbeat_reply_s": 1.0,
    "heartbeat_stale_s": 5.0,
    "canary_s": 1.0,
    "canary_deadline_s": 4.0,
}
"""The smoke profile only proves the harness: faster, with the heartbeat still first."""


def link_faults(stack: Stack, profile: Profile) -> dict[str, Any]:
    trials = TRIALS.get(profile.name, FULL_TRIALS)
    used = SMOKE if profile.name == "smoke" else SHIPPED
    env = {name.upper(): str(value) for name, value in used.items()}
    listener = stack.listener("supabase", naive=False, **env)
    half_open = [_half_open(stack, listener) for _ in range(trials)]
    stalls = [_silent_stall(stack, listener) for _ in range(trials)]
    by_phase = {
        phase: [_drop(stack, listener, share * used["heartbeat_s"]) for _ in range(trials)]
        for phase, share in DROP_PHASES.items()
    }
    drops = [drop for phase in by_phase.values() for drop in phase]
    stack.stop_processes()
    return {
        "source": "supabase",
        "trials": trials,
        **used,
        "half_open_detection_s": _seconds(half_open),
        "silent_stall_detection_s": _seconds(stalls),
        "drop_resubscribed_ms": percentiles([ms for ms, _ in drops]),
        "drop_connected_ms": percentiles([ms for _, ms in drops]),
        "drop_resubscribed_ms_by_phase": {
            phase: percentiles([ms for ms, _ in phase_drops])
            for phase, phase_drops in by_phase.items()
        },
    }


def _seconds(values: list[float]) -> dict[str, float | int | None]:
    return {
        k: v if k == "count" or v is None else round(v, 2) for k, v in percentiles(values).items()
    }


def _teardowns(listener: Proc, reason: str) -> float:
    port: int = listener.metrics_port  # type: ignore[attr-defined]
    return scrape(port, "coachpipe_listener_teardowns_total", reason=reason)


def _back(stack: Stack, listener: Proc) -> None:
    stale_after_s = float(listener.env["HEARTBEAT_STALE_S"])
    wait_for(
        lambda: stack.listener_connected(listener, stale_after_s),
        60,
        interval=0.05,
        message="listener back",
    )


def _detect(stack: Stack, listener: Proc, reason: str, fault: Any, end: Any) -> float:
    """Seconds from `fault()` until a teardown for `reason`; then `end()` and wait for the
    listener to be back."""
    before = _teardowns(listener, reason)
    fault()
    started = time.monotonic()
    wait_for(
        lambda: _teardowns(listener, reason) > before,
        120,
        interval=0.05,
        message=f"a {reason} teardown",
    )
    detected = time.monotonic() - started
    end()
    _back(stack, listener)
    return detected


def _half_open(stack: Stack, listener: Proc) -> float:
    standin = stack.realtime()
    return _detect(stack, listener, "heartbeat_timeout", standin.blackhole, lambda: None)


def _silent_stall(stack: Stack, listener: Proc) -> float:
    standin = stack.realtime()
    return _detect(
        stack,
        listener,
        "canary_timeout",
        lambda: standin.stall_changes(True),
        lambda: standin.stall_changes(False),
    )


def _drop(stack: Stack, listener: Proc, after_s: float) -> tuple[float, float]:
    """(ms until the server sent "Subscribed to PostgreSQL" again, ms until the listener
    reports connected) after the server closed the socket, `after_s` after the listener was
    last seen connected."""
    standin = stack.realtime()
    time.sleep(after_s)
    joins = standin.joins
    standin.drop_connections(1011)
    started = time.monotonic()
    wait_for(
        lambda: standin.joins > joins and standin.ready_topics(),
        60,
        interval=0.01,
        message="the channel to be joined and ready again",
    )
    resubscribed = (time.monotonic() - started) * 1000
    _back(stack, listener)
    return resubscribed, (time.monotonic() - started) * 1000
