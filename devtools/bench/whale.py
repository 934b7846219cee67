"""Whale coaches (issue 18): recompute cost against history size, and fairness under load.

`seed_whale` makes a coach with N sessions in set-based SQL (generate_series; a million rows
take seconds, no Python loop). `history_curve` measures all critical aggregates of one coach
after one change three ways (`WAYS`: as a drain reads, coach-clients incremental; every
aggregate read in full from the summaries; the scan statements, whole histories, as before),
for coaches of 1k, 10k, 100k and 1M sessions, plus the write cost of the summary triggers.
`fairness` (scenario `whale`) runs 100 changes/s to a whale beside 100/s over ordinary
coaches through the real listener and worker, and again without the whale (`--rate` sets
both streams' rate: the same comparison at a lighter or heavier load).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
from sqlalchemy import Engine

from devtools.bench.freshness import per_change
from devtools.bench.measure import percentiles
from devtools.bench.scenarios import FloorProbe, Profile, bench_coaches, write_paced
from devtools.bench.stack import Stack
from pipeline.aggregates import CRITICAL, Aggregate
from pipeline.aggregates.base import compute_all
from pipeline.db import make_engine
from pipeline.recompute import Snapshot, compute_snapshot, database_clock

SEED_CLIENTS = """
INSERT INTO users (id, role, coach_id, full_name, status)
SELECT gen_random_uuid(), 'client', %(coach)s, 'Client ' || lpad(i::text, 7, '0'),
       (ARRAY['active', 'active', 'paused', 'archived'])[1 + i %% 4]
FROM generate_series(1, %(clients)s) AS i
"""
SEED_SESSIONS = """
INSERT INTO sessions (coach_id, client_id, status, scheduled_at, duration_minutes, price_cents,
                      completed_at, created_at, updated_at)
SELECT %(coach)s, c.ids[1 + s.i %% c.n], s.status, s.at, 60, 5000 + (s.i %% 7) * 1000,
       CASE WHEN s.status = 'completed' THEN s.at + interval '1 hour' END,
       s.at - interval '7 days', s.at
FROM (SELECT array_agg(id) AS ids, count(*)::int AS n FROM users
      WHERE coach_id = %(coach)s AND role = 'client') AS c
CROSS JOIN (
    SELECT i, at, CASE WHEN at > now() THEN 'scheduled'
                       ELSE (ARRAY['completed', 'completed', 'completed', 'completed',
                                   'completed', 'completed', 'completed', 'completed',
                                   'cancelled', 'no_show', 'scheduled'])[1 + i %% 11] END AS status
    FROM (SELECT i, now() - interval '1 day' * (%(days)s * random() - 30) AS at
          FROM generate_series(1, %(sessions)s) AS i) AS t
) AS s
"""
SEED_CHILDREN = """
INSERT INTO session_ratings (session_id, coach_id, client_id, rating, created_at)
SELECT id, coach_id, client_id, 1 + floor(random() * 5)::int, completed_at FROM sessions
WHERE coach_id = %(coach)s AND status = 'completed' AND random() < 0.4;
INSERT INTO session_feedback (session_id, coach_id, client_id, comment, created_at)
SELECT id, coach_id, client_id, 'Good session ' || left(id::text, 8), completed_at FROM sessions
WHERE coach_id = %(coach)s AND status = 'completed' AND random() < 0.2;
INSERT INTO goals (coach_id, client_id, title, status, progress)
SELECT %(coach)s, id, 'Goal',
       (ARRAY['active', 'completed', 'abandoned'])[1 + floor(random() * 3)::int],
       floor(random() * 101)::int FROM users WHERE coach_id = %(coach)s AND role = 'client'
"""
SIZES = {
    "full": (1_000, 10_000, 100_000, 1_000_000),
    "quick": (1_000, 10_000, 100_000),
    "smoke": (1_000,),
}
"""History sizes of the curve by profile; the largest coach is the whale of the load runs."""
LOAD_SECONDS = {"full": 120.0, "quick": 10.0, "smoke": 2.0}
SAMPLES = {"full": (200, 5), "quick": (100, 3), "smoke": (10, 2)}
"""Per-change recomputes measured the new way and the old way, by profile."""


def seed_whale(url: str, sessions: int, *, days: int = 730) -> UUID:
    """A coach with `sessions` sessions over `days` days (a month of them ahead), a client per
    500 sessions (at least 20), ratings for 40% and feedback for 20% of completed sessions."""
    coach = uuid4()
    params = {
        "coach": coach,
        "sessions": sessions,
        "days": days,
        "clients": max(20, sessions // 500),
    }
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT setseed(0.42)")
        conn.execute(
            "INSERT INTO users (id, role, full_name) VALUES (%(coach)s, 'coach', 'Whale')", params
        )
        for sql in (SEED_CLIENTS, SEED_SESSIONS, *SEED_CHILDREN.split(";")):
            conn.execute(sql, params)
        conn.execute("VACUUM ANALYZE")
    return coach


def one_change(conn: psycopg.Connection[Any], coach: UUID, i: int) -> None:
    """A change to the coach as the traffic makes them: a session booked, completed, moved."""
    if i % 3 == 0:
        conn.execute(
            "INSERT INTO sessions (coach_id, client_id, status, scheduled_at, price_cents)"
            " SELECT coach_id, client_id, 'scheduled', now() + interval '3 days', 9000"
            " FROM sessions WHERE coach_id = %s LIMIT 1",
            (coach,),
        )
    else:
        conn.execute(
            "UPDATE sessions SET status = %s, completed_at = now() WHERE id = ("
            " SELECT id FROM sessions WHERE coach_id = %s AND status = 'scheduled'"
            " ORDER BY scheduled_at DESC LIMIT 1)",
            ("completed" if i % 3 == 1 else "scheduled", coach),
        )


def timed_recompute(
    engine: Engine, coach: UUID, *, summaries: bool, aggregates: Sequence[Aggregate] = CRITICAL
) -> float:
    """Milliseconds for `aggregates` (all critical ones) of `coach` in one snapshot, as a
    worker runs."""
    started = time.perf_counter()
    with engine.connect() as connection, connection.begin():
        clock = database_clock(connection)
        compute_all(
            connection, aggregates, [coach], clock, end_transaction=True, summaries_ready=summaries
        )
    return (time.perf_counter() - started) * 1000


def drain_read(
    engine: Engine, coach: UUID, previous: Snapshot | None, aggregates: Sequence[Aggregate]
) -> tuple[float, Snapshot]:
    """(ms, values) for `aggregates` of `coach` as a drain reads them after a change: one
    snapshot, coach-clients from the value `previous` computed (`pipeline.aggregates.delta`)."""
    bases = previous.as_bases() if previous is not None else None
    started = time.perf_counter()
    snapshot = compute_snapshot(engine, aggregates, [coach], bases)
    return (time.perf_counter() - started) * 1000, snapshot


def per_aggregate_ms(url: str, engine: Engine, coach: UUID, samples: int) -> dict[str, Any]:
    """After each of `samples` changes to `coach`, each critical aggregate alone, as a drain
    reads it (`drain_read`), in alternating order; p50/p99 by aggregate name."""
    times: dict[str, list[float]] = {aggregate.name: [] for aggregate in CRITICAL}
    previous: dict[str, Snapshot | None] = dict.fromkeys(times)
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(samples + 3):
            one_change(conn, coach, i)
            for aggregate in CRITICAL if i % 2 else CRITICAL[::-1]:
                took, previous[aggregate.name] = drain_read(
                    engine, coach, previous[aggregate.name], [aggregate]
                )
                if i >= 3:
                    times[aggregate.name].append(took)
    return {name: percentiles(values) for name, values in times.items()}


WAYS = ("incremental", "summaries", "history")
"""How a change's recompute reads: as a drain does (`drain_read`: summaries, coach-clients from
its stored value), every aggregate in full from the summaries, or from the whole history (the
scan statements, before issue 18)."""


def per_change_ms(url: str, engine: Engine, coach: UUID, samples: int, way: str) -> list[float]:
    """After each of `samples` changes to `coach`, all critical aggregates' recompute time, read
    `way` (one of `WAYS`; warm: 3 discarded)."""
    times = []
    previous = None
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(samples + 3):
            one_change(conn, coach, i)
            if way == "incremental":
                took, previous = drain_read(engine, coach, previous, CRITICAL)
            else:
                took = timed_recompute(engine, coach, summaries=way == "summaries")
            times.append(took)
    return times[3:]


def trigger_cost_ms(url: str, coach: UUID, samples: int) -> dict[str, Any]:
    """A single-row INSERT into sessions with the summary triggers and without them."""
    result = {}
    with psycopg.connect(url, autocommit=True) as conn:
        client = conn.execute(
            "SELECT id FROM users WHERE coach_id = %s AND role = 'client' LIMIT 1", (coach,)
        ).fetchone()
        for label, action in (("with_triggers", "ENABLE"), ("without_triggers", "DISABLE")):
            for op in ("insert", "update", "delete", "truncate"):
                conn.execute(f"ALTER TABLE sessions {action} TRIGGER coachpipe_summarize_{op}")
            times = []
            for _ in range(samples):
                started = time.perf_counter()
                conn.execute(
                    "INSERT INTO sessions (coach_id, client_id, status, scheduled_at, completed_at)"
                    " VALUES (%s, %s, 'completed', now(), now())",
                    (coach, client[0] if client else None),
                )
                times.append((time.perf_counter() - started) * 1000)
            result[label] = percentiles(times)
        for op in ("insert", "update", "delete", "truncate"):
            conn.execute(f"ALTER TABLE sessions ENABLE TRIGGER coachpipe_summarize_{op}")
    result.update(delete_cost_ms(url, coach, samples))
    return result


def delete_cost_ms(url: str, coach: UUID, samples: int) -> dict[str, Any]:
    """Deleting one of `coach`'s completed sessions (its rating and feedback cascade), and one
    of its clients (their sessions, goals, ratings and feedback cascade; a fifth as many
    samples), each in a transaction rolled back: the cost of the foreign keys' lookups on the
    referencing tables, beside the summary triggers'."""
    with psycopg.connect(url) as conn:
        sessions = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM sessions WHERE coach_id = %s AND status = 'completed' LIMIT %s",
                (coach, samples),
            )
        ]
        clients = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM users WHERE coach_id = %s AND role = 'client' LIMIT %s",
                (coach, max(samples // 5, 2)),
            )
        ]
        conn.rollback()
        result = {}
        for label, table, ids in (
            ("delete_session", "sessions", sessions),
            ("delete_client", "users", clients),
        ):
            times = []
            for row_id in ids:
                started = time.perf_counter()
                conn.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))
                times.append((time.perf_counter() - started) * 1000)
                conn.rollback()
            result[label] = percentiles(times)
    return result


def history_curve(
    url: str, sizes: tuple[int, ...], samples: int, scan_samples: int
) -> dict[str, Any]:
    """Per-change recompute p50/p99 (ms) by history size, the old way and the new."""
    engine = make_engine(url, pool_size=1, snapshots=True)
    points = []
    coaches = []
    try:
        for size in sizes:
            started = time.monotonic()
            coach = seed_whale(url, size)
            coaches.append(coach)
            seeded = time.monotonic() - started
            new = per_change_ms(url, engine, coach, samples, "incremental")
            full = per_change_ms(url, engine, coach, samples, "summaries")
            old = per_change_ms(url, engine, coach, scan_samples, "history")
            points.append(
                {
                    "sessions": size,
                    "seed_seconds": round(seeded, 1),
                    "new_ms": percentiles(new),
                    "full_read_ms": percentiles(full),
                    "old_ms": percentiles(old),
                    "new_by_aggregate_ms": per_aggregate_ms(url, engine, coach, samples),
                }
            )
        triggers = trigger_cost_ms(url, coach, samples)
    finally:
        engine.dispose()
    return {
        "points": points,
        "insert_ms": triggers,
        "coaches": coaches,
        "coach_ids": [str(c) for c in coaches],
    }


CURVES = (
    ("old_ms", "whole history (before)"),
    ("full_read_ms", "summaries, read in full"),
    ("new_ms", "summaries, coach-clients incremental"),
)


def plot_curve(curve: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key, label in CURVES:
        points = [p for p in curve["points"] if key in p]  # results before full_read_ms
        for quantile, style in (("p50", "-o"), ("p99", "--x")):
            axes.plot(
                [p["sessions"] for p in points],
                [p[key][quantile] for p in points],
                style,
                label=f"{label} {quantile}",
            )
    axes.axhline(10, color="grey", linewidth=0.8, linestyle=":", label="goal: 10 ms")
    axes.set(xscale="log", yscale="log", xlabel="sessions of the coach", ylabel="ms per change")
    axes.set_title("All critical aggregates of one coach after one change")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


RUNS = ("without_whale", "with_hot_coach", "with_whale")
"""The load runs: the others alone (`rate` changes/s, `ISSUE_RATE` by default); beside as many
changes/s to one ordinary coach (the control: the whale's event rate without its cost); beside
as many to the whale."""
ISSUE_RATE = 100.0
"""Changes/s of each stream in issue 18's fairness goal (+20 % at most); the goal is judged at
this rate only, other rates (`--rate`) are diagnostics."""


def fairness(
    stack: Stack,
    whale: UUID,
    hot: UUID,
    others: list[UUID],
    seconds: float,
    *,
    rate: float = ISSUE_RATE,
) -> dict[str, Any]:
    """Commit → every routed aggregate stored, for the others' changes (`rate` changes/s over
    `others`) alone, beside `rate`/s to the ordinary coach `hot`, and beside `rate`/s to
    `whale` (`RUNS`), and for the hot coach's and the whale's own changes."""
    results: dict[str, Any] = {}
    for label in RUNS:
        stack.reset_pipeline()
        stack.worker()
        stack.listener("postgres")
        # A new slot starts with a catch-up refresh of every coach (the whale's included): the
        # runs compare steady loads, so it is done before either starts.
        stack.quiesce()
        floor = FloorProbe(stack, "postgres").start()  # commit → received: the database's part
        collector = stack.notices()
        start = time.time()
        loads: dict[str, dict[str, Any]] = {"others": {"coaches": others, "seed": 11}}
        if label == "with_whale":
            loads["whale"] = {"coaches": [whale], "hot": whale, "seed": 13}
        elif label == "with_hot_coach":
            loads["hot"] = {"coaches": [hot], "hot": hot, "seed": 13}
        ready = threading.Barrier(len(loads))  # every writer's book loaded before any paces
        with ThreadPoolExecutor(len(loads)) as pool:
            paced = {
                name: pool.submit(
                    write_paced, stack, rate=rate, duration=seconds, ready=ready, **load
                )
                for name, load in loads.items()
            }
        runs = {name: future.result() for name, future in paced.items()}  # re-raises a failure
        time.sleep(3)  # the last changes' recomputes; a bench figure, not a test wait
        notices = collector.since(start)
        collector.stop()
        paced_from = min(written.started for written in runs.values())
        results[label] = {
            name: {
                "changes": len(written.changes),
                "behind_s": round(written.behind_s, 3),
                "commit_to_all_stored_ms": per_change(written.changes, notices, paced_from * 1000),
            }
            for name, written in runs.items()
        }
        results[label]["floor_commit_to_listener_ms"] = floor.figures(paced_from)
        results[label]["rate"] = rate
        floor.stop()
        stack.stop_processes()
    return results


def whale_scenario(stack: Stack, profile: Profile) -> dict[str, Any]:
    """`python -m devtools.bench whale`: the curve (old and new way), then the load runs."""
    new_samples, old_samples = SAMPLES[profile.name]
    curve = history_curve(stack.pg.url, SIZES[profile.name], new_samples, old_samples)
    seeded = curve.pop("coaches")
    whale = seeded[-1]
    everyone = bench_coaches(stack, stack.coaches + len(seeded))
    hot, *others = [coach for coach in everyone if coach not in seeded][: stack.coaches]
    return {
        "curve": curve,
        "load": fairness(
            stack, whale, hot, others, LOAD_SECONDS[profile.name], rate=profile.whale_rate
        ),
        "whale_sessions": SIZES[profile.name][-1],
        "other_coaches": len(others),
    }


def fairness_scenario(stack: Stack, profile: Profile) -> dict[str, Any]:
    """`python -m devtools.bench whale-fairness`: the load runs only, beside a whale of the
    profile's largest size (seeded alone: no curve, about a minute at 1M sessions)."""
    size = SIZES[profile.name][-1]
    started = time.monotonic()
    whale = seed_whale(stack.pg.url, size)
    seeded = time.monotonic() - started
    everyone = [coach for coach in bench_coaches(stack, stack.coaches + 1) if coach != whale]
    hot, *others = everyone[: stack.coaches]
    return {
        "load": fairness(
            stack, whale, hot, others, LOAD_SECONDS[profile.name], rate=profile.whale_rate
        ),
        "whale_sessions": size,
        "seed_seconds": round(seeded, 1),
        "other_coaches": len(others),
    }


def fairness_rows(load: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Report lines of the load runs: the whale's latency, the others' alone and beside it,
    and the floor (commit → a second consumer of the slot received it) in both runs. The +20 %
    goal is judged at `ISSUE_RATE` only; results written before `--rate` (no "rate") ran at it."""
    alone = load["without_whale"]["others"]["commit_to_all_stored_ms"]
    beside = load["with_whale"]["others"]["commit_to_all_stored_ms"]
    control = load.get("with_hot_coach", {}).get("others", {}).get("commit_to_all_stored_ms", {})
    whale = load["with_whale"].get("whale", {}).get("commit_to_all_stored_ms", {})
    ratio = beside["p99"] / alone["p99"] if alone.get("p99") and beside.get("p99") else None
    floors = [load[run].get("floor_commit_to_listener_ms", {}) for run in RUNS if run in load]
    changes_per_s = float(load["with_whale"].get("rate", ISSUE_RATE))
    rate = f"{changes_per_s:g}/s"
    judged = changes_per_s == ISSUE_RATE
    met = "-" if ratio is None else ("yes" if ratio <= 1.2 else "no")
    return [
        (
            "floor, commit → received by a second slot consumer p50/p99, each run (ms)",
            " | ".join(f"{floor.get('p50')} / {floor.get('p99')}" for floor in floors),
            "",
            "-",
        ),
        (
            f"others {rate}: p50/p99 beside {rate} to one ordinary coach (control, ms)",
            f"{control.get('p50')} / {control.get('p99')}",
            "",
            "-",
        ),
        (
            f"whale {rate}: its commit → every routed aggregate p50/p99 (ms)",
            f"{whale.get('p50')} / {whale.get('p99')}",
            "",
            "-",
        ),
        (
            f"others {rate}: commit → every routed aggregate p99 alone | beside the whale (ms)",
            f"{alone.get('p99')} | {beside.get('p99')}",
            "≤ +20%" if judged else "(goal at 100/s)",
            met if judged else "-",
        ),
    ]


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Report lines: per-change cost of the largest coach, fairness, trigger cost."""
    largest = result["curve"]["points"][-1]
    new, old = largest["new_ms"], largest["old_ms"]
    size = f"{largest['sessions']:,}"
    inserts = result["curve"]["insert_ms"]
    by_aggregate = [
        (f"  {name} alone p50/p99 (ms)", f"{ms['p50']} / {ms['p99']}", "", "-")
        for name, ms in largest.get("new_by_aggregate_ms", {}).items()
    ]
    return [
        (
            f"whale ({size} sessions): all critical aggregates after one change p50/p99 (ms)",
            f"{new['p50']} / {new['p99']}",
            "p99 ≤ 10",
            "yes" if new["p99"] <= 10 else "no",
        ),
        *by_aggregate,
        *(
            (
                "  same, every aggregate read in full from the summaries p50/p99 (ms)",
                f"{full['p50']} / {full['p99']}",
                "",
                "-",
            )
            for full in [largest[key] for key in ("full_read_ms",) if key in largest]
        ),
        (
            "  same, the old way (whole history) p50/p99 (ms)",
            f"{old['p50']} / {old['p99']}",
            "",
            "-",
        ),
        *fairness_rows(result["load"]),
        (
            "single-row INSERT into sessions p50 with | without the summary triggers (ms)",
            f"{inserts['with_triggers']['p50']} | {inserts['without_triggers']['p50']}",
            "",
            "-",
        ),
        *(
            (
                f"DELETE of one {what} of the whale p50/p99 (ms), cascades and triggers included",
                f"{inserts[key]['p50']} / {inserts[key]['p99']}",
                "",
                "-",
            )
            for key, what in (("delete_session", "session"), ("delete_client", "client"))
            if key in inserts
        ),
    ]
