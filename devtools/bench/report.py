"""Benchmark results as JSON (everything), a Markdown table (the goals) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = round(value, 2)
    return f"{value:,}{unit}" if isinstance(value, int | float) else f"{value}{unit}"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def _ratio(naive: Any, ours: Any) -> float | None:
    if not naive or not ours:
        return None
    return round(float(naive) / float(ours), 1)


def _le(value: Any, goal: float) -> bool | None:
    return None if value is None else value <= goal


def _ge(value: Any, goal: float) -> bool | None:
    return None if value is None else value >= goal


def _quartet(latency: dict[str, Any]) -> str:
    return " / ".join(_fmt(latency.get(q)) for q in ("p50", "p95", "p99", "max"))


def _noise(meta: dict[str, Any]) -> str:
    """How the latency rows are labelled: quiet, or with the noisy neighbour's share; with beat
    beside the worker or not."""
    noisy = meta.get("noisy_neighbour")
    beat = ", beat running" if meta.get("beat") else ""
    return (f", noisy neighbour {noisy['share']:g} core" if noisy else "") + beat


def _link_fault_rows(run: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """The `supabase` listener's dead-link detection and reconnect (issue 14 goals)."""
    if not run:
        return []
    trials = f"{run['trials']} trials"
    half_open, stall = run["half_open_detection_s"], run["silent_stall_detection_s"]
    resubscribed, connected = run["drop_resubscribed_ms"], run["drop_connected_ms"]
    return [
        (
            f"link faults, supabase: half-open link found, p50/max (s, {trials})",
            f"{_fmt(half_open['p50'])} / {_fmt(half_open['max'])}",
            "max ≤ 10",
            _met(_le(half_open["max"], 10)),
        ),
        (
            f"link faults, supabase: silent stall found, p50/max (s, {trials})",
            f"{_fmt(stall['p50'])} / {_fmt(stall['max'])}",
            "max ≤ 30",
            _met(_le(stall["max"], 30)),
        ),
        (
            f"link faults, supabase: drop → subscribed again, p50/max (ms, "
            f"{resubscribed['count']} drops)",
            f"{_fmt(resubscribed['p50'])} / {_fmt(resubscribed['max'])}",
            "max ≤ 1,000",
            _met(_le(resubscribed["max"], 1000)),
        ),
        *(
            (
                f"link faults, supabase: drop {phase.replace('_', ' ')} → subscribed, p50/max (ms)",
                f"{_fmt(ms['p50'])} / {_fmt(ms['max'])}",
                "max ≤ 1,000",
                _met(_le(ms["max"], 1000)),
            )
            for phase, ms in run.get("drop_resubscribed_ms_by_phase", {}).items()
        ),
        (
            "link faults, supabase: drop → listener connected (caught up), p50/max (ms)",
            f"{_fmt(connected['p50'])} / {_fmt(connected['max'])}",
            "",
            "-",
        ),
    ]


def rows(
    results: dict[str, Any], meta: dict[str, Any] | None = None
) -> list[tuple[str, str, str, str]]:
    """(scenario and measure, measured, goal, met)."""
    out: list[tuple[str, str, str, str]] = []
    noise = _noise(meta or {})
    noisy = bool((meta or {}).get("noisy_neighbour"))  # the goals: beat alone is no foreign load
    steady = results.get("steady", {})
    for source in ("postgres", "supabase"):
        run = steady.get(source)
        if not run:
            continue
        change = run.get("commit_to_all_stored_ms", {})
        if source == "postgres":
            goal_p50, goal_p99 = (None, 300) if noisy else (30, 150)
            goal = (f"p50 ≤ {goal_p50}, " if goal_p50 else "") + f"p99 ≤ {goal_p99}, 0 missing"
            met = _met(
                _le(change.get("p99"), goal_p99)
                and (goal_p50 is None or _le(change.get("p50"), goal_p50))
                and change.get("missing") == 0
            )
        elif not noisy:  # issue 14: through Realtime, on a quiet machine
            goal = "p99 ≤ 600, 0 missing"
            met = _met(_le(change.get("p99"), 600) and change.get("missing") == 0)
        else:
            goal, met = "", "-"
        out.append(
            (
                f"**steady 200/s, {source}{noise}: commit → every routed aggregate stored, "
                "per change p50/p95/p99/max (ms)**",
                f"{_quartet(change)} ({_fmt(change.get('count'))} changes, "
                f"missing {_fmt(change.get('missing'))})",
                goal,
                met,
            )
        )
        out.append(
            (
                f"  steady 200/s, {source}{noise}: commit → first write of an aggregate, "
                "per stored write p50/p95/p99/max (ms)",
                _quartet(run["commit_to_stored_ms"]),
                "",
                "-",
            )
        )
        floor = run.get("commit_to_listener_ms", {})
        out.append(
            (
                f"  steady 200/s, {source}{noise}: floor, commit → listener p50/p99 (ms)",
                f"{_fmt(floor.get('p50'))} / {_fmt(floor.get('p99'))}",
                "",
                "-",
            )
        )
    burst = results.get("burst", {})
    if burst.get("pipeline"):
        run = burst["pipeline"]
        out.append(
            (
                f"burst {run['changes']:,} in 1 s / {run['coaches']} coaches{noise}: every "
                "affected aggregate stored, after the last commit (s)",
                f"{_fmt(run['visible_after_last_commit_s'])} (wrong: {run['correct']['wrong']})",
                "≤ 0.3, 0 wrong",
                _met(_le(run["visible_after_last_commit_s"], 0.3) and run["correct"]["wrong"] == 0),
            )
        )
        change = run.get("commit_to_all_stored_ms", {})
        out.append(
            (
                f"  burst{noise}: commit → every routed aggregate stored, per change "
                "p50/p95/p99/max (ms)",
                f"{_quartet(change)} (missing {_fmt(change.get('missing'))})",
                "",
                "-",
            )
        )
        out.append(
            (
                "burst: worker tree memory max, PSS (RSS) (MB)",
                f"{_fmt(run.get('worker_pss_mb_max'))} ({_fmt(run['worker_rss_mb_max'])})",
                "≤ 256",
                _met(_le(run.get("worker_pss_mb_max"), 256)),
            )
        )
    hot = results.get("hot", {})
    if hot.get("pipeline"):
        run = hot["pipeline"]
        out.append(
            (
                f"hot coach {run['changes']:,} in 1 s: changes per recompute",
                _fmt(run["changes_per_recompute_of_hot_coach"]),
                "≥ 50",
                _met(_ge(run["changes_per_recompute_of_hot_coach"], 50)),
            )
        )
        out.append(
            (
                f"hot coach{noise}: every affected aggregate stored, after the last commit (s)",
                f"{_fmt(run['visible_after_last_commit_s'])} "
                f"(wrong: {run.get('correct', {}).get('wrong', '-')})",
                "≤ 1",
                _met(_le(run["visible_after_last_commit_s"], 1.0)),
            )
        )
        change = run.get("commit_to_all_stored_ms", {})
        out.append(
            (
                f"  hot coach{noise}: commit → every routed aggregate stored, per change "
                "p50/p95/p99/max (ms)",
                f"{_quartet(change)} (missing {_fmt(change.get('missing'))})",
                "",
                "-",
            )
        )
    out += _link_fault_rows(results.get("link-faults"))
    intake = results.get("intake", {})
    for source in ("postgres", "supabase"):
        run = intake.get(source)
        if run:
            has_goal = source == "postgres"
            out.append(
                (
                    f"intake, {source}: listener changes/s (writers {_fmt(run['writer_rate'])}/s)",
                    f"{_fmt(run['listener_rate'])} "
                    f"(2nd half {_fmt(run['listener_rate_second_half'])})",
                    "≥ 5,000" if has_goal else "",
                    _met(_ge(run["listener_rate"], 5000)) if has_goal else "-",
                )
            )
    full = results.get("full-refresh")
    if full:
        out.append(
            (
                f"full refresh, {full['coaches']:,} coaches x {full['aggregates']} aggregates, "
                "workers (s)",
                _fmt(full["pipeline_workers_s"]),
                "≤ 30",
                _met(_le(full["pipeline_workers_s"], 30)),
            )
        )
    seeded = results.get("seed")
    if seeded:
        out.append(
            (
                f"seed {seeded['coaches']:,} coaches (x20 clients, x100 sessions), COPY (s)",
                _fmt(seeded["seconds"]),
                "≤ 120",
                _met(_le(seeded["seconds"], 120)),
            )
        )
    micro = results.get("aggregates")
    if micro:
        one = micro["one_coach_all_critical_ms"]
        out.append(
            (
                "recompute all critical aggregates, 1 coach p50/p99 (ms)",
                f"{_fmt(one['p50'])} / {_fmt(one['p99'])}",
                "≤ 5 / ≤ 20",
                _met(_le(one["p50"], 5) and _le(one["p99"], 20)),
            )
        )
        separate = micro.get("one_coach_all_critical_separate_snapshots_ms", {})
        out.append(
            (
                "  same, one snapshot per aggregate (as four drains would) p50/p99 (ms)",
                f"{_fmt(separate.get('p50'))} / {_fmt(separate.get('p99'))}",
                "",
                "-",
            )
        )
        batch = micro["hundred_coaches_ms"].get("all critical, one snapshot", {})
        out.append(
            (
                "recompute all critical aggregates, 100 coaches p50/p99 (ms)",
                f"{_fmt(batch.get('p50'))} / {_fmt(batch.get('p99'))}",
                "",
                "-",
            )
        )
    soak = results.get("soak", {}).get("pipeline")
    if soak:
        memory = (("worker PSS MB", "worker_pss_mb"), ("worker RSS MB", "worker_rss_mb"),
                  ("listener RSS MB", "listener_rss_mb"))  # fmt: skip
        for process, key in memory:
            trend = soak.get(key)
            if trend is None:
                continue
            bounded = key == "worker_rss_mb" or trend["max"] <= 256
            flat = trend["last_third_avg"] <= trend["first_third_avg"] * 1.1 + 5
            out.append(
                (
                    f"soak 100/s {soak['seconds']:.0f} s: {process} first→last third avg / max",
                    f"{trend['first_third_avg']} → {trend['last_third_avg']} / {trend['max']}",
                    "flat" if key == "worker_rss_mb" else "flat, ≤ 256",
                    _met(bounded and flat),
                )
            )
        queued = soak["queued"]
        out.append(
            (
                "soak: queued tasks first→last third avg / max",
                f"{queued['first_third_avg']} → {queued['last_third_avg']} / {queued['max']}",
                "no growth",
                _met(queued["last_third_avg"] <= queued["first_third_avg"] + 5),
            )
        )
    pools = results.get("workers")
    if pools:
        for label in ("batched", "batch_of_20"):
            runs = pools.get(label, [])
            out.append(
                (
                    f"workers, {label.replace('_', ' ')}: recomputes/s with "
                    + " / ".join(str(run["processes"]) for run in runs)
                    + " pool processes",
                    " / ".join(_fmt(run["per_second"]) for run in runs),
                    "",
                    "-",
                )
            )
    if results.get("whale"):
        from devtools.bench.whale import rows as whale_rows

        out += whale_rows(results["whale"])
    if results.get("whale_fairness"):
        from devtools.bench.whale import fairness_rows

        out += fairness_rows(results["whale_fairness"]["load"])
    dedup = results.get("dedup")
    if dedup:
        latency = dedup["enqueue_to_stored_ms"]
        out.append(
            (
                "enqueue → stored, idle key, loopback p50/p99 (ms)",
                f"{_fmt(latency['p50'])} / {_fmt(latency['p99'])}",
                "",
                "-",
            )
        )
        out.append(
            (
                "one worker process, coach recomputes/s batched | batch of 1",
                f"{_fmt(dedup['one_worker_recomputes_per_s_batched']['per_second'])} | "
                f"{_fmt(dedup['one_worker_recomputes_per_s_batch_of_1']['per_second'])}",
                "",
                "-",
            )
        )
    return out + fault_rows(results)


def _wrong(found: dict[str, Any] | None) -> str:
    if found is None:
        return "-"
    return f"{found['fields']} fields, {found['keys']} keys, {found['coaches']} coaches"


def _within(measure: str, seconds: float | None, goal_s: float) -> tuple[str, str, str, str]:
    """A row "measure: seconds", met when at most `goal_s`."""
    return (measure, _fmt(seconds), f"≤ {goal_s:g}", _met(_le(seconds, goal_s)))


def fault_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows of the fault scenarios (devtools.bench.chaos)."""
    out: list[tuple[str, str, str, str]] = []
    chaos = results.get("chaos")
    if chaos:
        kills = chaos["kills"]
        load = (
            f"chaos {chaos['rate']:.0f}/s over {chaos['coaches']:,} coaches, "
            f"{chaos['seconds']:.0f} s, {kills.get('listener', 0)} listener + "
            f"{kills.get('worker', 0)} worker kills"
        )
        out.append(_within(f"{load}: all correct after the last kill (s)", chaos["converged_s"], 5))
        wrong = chaos.get("wrong_at_plus_5s")
        out.append(("chaos: wrong 5 s after the last kill", _wrong(wrong), "0",
                    _met(None if wrong is None else wrong["fields"] == 0)))  # fmt: skip
        tx = chaos["transactions"]
        out.append(("chaos: pg xact_rollback / of them decoding / writer conflicts / errors",
                    f"{tx['xact_rollback']:,} / {tx['decoded_for_slots']:,} / "
                    f"{chaos['writer_conflicts']:,} / {tx['server_errors']}", "", "-"))  # fmt: skip
    restart = results.get("redis-restart")
    if restart:
        down = f"Redis restarted ({restart['redis_down_s']} s down) during load"
        out.append(_within(f"{down}: all correct after it answers (s)", restart["converged_s"], 10))
        out.append(_within("redis-restart: `coachpipe status` green again after (s)",
                           restart["status_green_after_s"], 10))  # fmt: skip
        out.append(("redis-restart: beat exits / first beat task run after (s)",
                    f"{restart['beat_exits']} / {_fmt(restart['first_beat_task_after_s'])}",
                    "0 exits", _met(restart["beat_exits"] == 0)))  # fmt: skip
    out += _soak_audit_rows(results.get("soak-audit"))
    kill = results.get("worker-kill")
    if kill:
        held = f"worker SIGKILLed mid-drain ({kill['claims_held_at_kill']} claims held)"
        out.append(_within(f"{held}: all correct after the kill (s)", kill["converged_s"], 5))
    return out


def naive_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(scenario, measure, pipeline, naive, naive/pipeline)."""
    out = []
    pairs = [
        (
            "steady",
            results.get("steady", {}).get("postgres"),
            results.get("steady", {}).get("naive"),
        ),
        ("burst", results.get("burst", {}).get("pipeline"), results.get("burst", {}).get("naive")),
        ("hot coach", results.get("hot", {}).get("pipeline"), results.get("hot", {}).get("naive")),
        ("soak", results.get("soak", {}).get("pipeline"), results.get("soak", {}).get("naive")),
    ]
    for name, ours, naive in pairs:
        if not ours or not naive:
            continue
        for measure, key in (
            ("recomputes per change", "recomputes"),
            ("DB queries per change", "db_queries"),
        ):
            if key in ours and key in naive and ours.get("changes") and naive.get("changes"):
                mine, theirs = ours[key] / ours["changes"], naive[key] / naive["changes"]
                out.append((name, measure, _fmt(round(mine, 3)), _fmt(round(theirs, 3)),
                            _fmt(_ratio(theirs, mine), "x")))  # fmt: skip
        if "commit_to_all_stored_ms" in ours and "commit_to_all_stored_ms" in naive:
            mine, theirs = (ours["commit_to_all_stored_ms"], naive["commit_to_all_stored_ms"])
            out.append(
                (
                    name,
                    "p99 commit → every routed aggregate stored, per change (ms; missing)",
                    f"{_fmt(mine['p99'])} ({_fmt(mine['missing'])})",
                    f"{_fmt(theirs['p99'])} ({_fmt(theirs['missing'])})",
                    _fmt(_ratio(theirs["p99"], mine["p99"]), "x"),
                )
            )
        p99 = (ours["commit_to_stored_ms"]["p99"], naive["commit_to_stored_ms"]["p99"])
        out.append(
            (
                name,
                "p99 commit → first write, per stored write (ms)",
                _fmt(p99[0]),
                _fmt(p99[1]),
                _fmt(_ratio(p99[1], p99[0]), "x"),
            )
        )
    full = results.get("full-refresh")
    if full:
        out.append(
            (
                "full refresh",
                f"seconds, {full.get('compared_coaches', full['coaches']):,} coaches, in one"
                " process with 2 threads",
                _fmt(full["pipeline_in_process_s"]),
                _fmt(full["naive_one_coach_per_query_s"]),
                _fmt(
                    _ratio(full["naive_one_coach_per_query_s"], full["pipeline_in_process_s"]), "x"
                ),
            )
        )
        out.append(
            (
                "full refresh",
                "DB queries, same",
                _fmt(full["pipeline_in_process_db_queries"]),
                _fmt(full["naive_db_queries"]),
                _fmt(_ratio(full["naive_db_queries"], full["pipeline_in_process_db_queries"]), "x"),
            )
        )
    intake = results.get("intake", {})
    if intake.get("postgres") and intake.get("naive"):
        out.append(
            (
                "intake",
                "listener changes/s",
                _fmt(intake["postgres"]["listener_rate"]),
                _fmt(intake["naive"]["listener_rate"]),
                _fmt(
                    _ratio(intake["postgres"]["listener_rate"], intake["naive"]["listener_rate"]),
                    "x fewer",
                ),
            )
        )
    return out


def _soak_audit_rows(soak: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """Rows of `soak-audit`: the audit during the run, the final audit, convergence."""
    if not soak:
        return []
    kills = soak["kills"]
    load = (
        f"soak-audit {soak['rate']:.0f}/s over {soak['coaches']:,} coaches, "
        f"{soak['seconds'] / 60:.0f} min, {kills.get('listener', 0)} listener + "
        f"{kills.get('worker', 0)} worker + {kills.get('beat', 0)} beat kills, "
        f"{soak['redis_restarts']} Redis restarts"
    )
    during = soak["audit_during_run"]
    final = soak["final_audit"]
    found = ", ".join(f"{k}: {v}" for k, v in during["mismatches_by_aggregate"].items())
    final_mismatches = len(final.get("mismatches", [])) if "checked" in final else None
    return [
        _within(f"{load}: all correct after the last fault (s)", soak["converged_s"], 5),
        (f"soak-audit: audit passes / values checked during the run "
         f"(cycle {soak['audit_settings']['audit_cycle_s']:g} s)",
         f"{during['passes']:,} / {sum(during['checked'].values()):,}", "", "-"),
        ("soak-audit: mismatches stale beyond the SLO during the run (oldest, s)",
         f"{during['stale_beyond_slo']} ({found or 'none'}; {_fmt(during['oldest_stale_s'])})",
         "0", _met(during["stale_beyond_slo"] == 0)),
        ("soak-audit: final `coachpipe audit --all` after convergence: checked / mismatches",
         f"{final.get('checked', '-')} / {_fmt(final_mismatches)}", "0 mismatches",
         _met(None if final_mismatches is None else final_mismatches == 0)),
    ]  # fmt: skip


def _load_line(meta: dict[str, Any]) -> str:
    noisy = meta.get("noisy_neighbour")
    beat = (
        " Celery beat ran beside the worker (`--beat`), as deployed."
        if meta.get("beat")
        else " No celery beat (without `--beat`): no clock ticks, refreshes or audits."
    )
    if not noisy:
        return "Foreign load: none started by the bench (no `--noisy-neighbour`)." + beat
    return (
        f"Foreign load: a noisy neighbour burning {noisy['share']:g} of one core all run long "
        f"(it got {noisy['achieved_share']:g})." + beat
    )


def table_row(*cells: str) -> str:
    """One Markdown table row; a `|` inside a cell (`alone | beside`) is escaped, so it stays
    in its cell instead of starting a column of its own."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _heading(meta: dict[str, Any]) -> list[str]:
    return [
        f"# coachpipe benchmark — {meta['date']} ({meta['profile']})",
        "",
        f"commit `{meta['commit']}` · {meta['machine']['cpus']} CPUs "
        f"({meta['machine']['cpu_model']}), "
        f"{meta['machine']['memory_gb']} GB · DEBOUNCE_MS={meta['settings']['debounce_ms']} · "
        f"SCHEDULER_SHARDS={meta['settings'].get('scheduler_shards', 8)} · "
        f"run took {meta['seconds']:.0f} s",
        "",
        _load_line(meta),
        "",
    ]


def stacks_markdown(meta: dict[str, Any], results: dict[str, Any]) -> str:
    """The run of `--stacks`: `results` keyed by combination (`redis+redis`, …), one column
    each, a row per measure of `rows` (measured, and `(goal not met)` where it was not)."""
    ids: list[str] = meta["stacks"]
    measured: dict[str, dict[str, str]] = {}
    goals: dict[str, str] = {}
    for stack in ids:
        for measure, value, goal, met in rows(results.get(stack, {}), meta):
            measured.setdefault(measure, {})[stack] = value + (
                " (goal not met)" if met == "**no**" else ""
            )
            goals.setdefault(measure, goal)
    lines = [
        *_heading(meta),
        "Stacks, broker+store: redis = the private Redis (broker: database 1); rabbitmq = a "
        "private RabbitMQ node (quorum queues); cluster = a private Redis Cluster, 3 masters "
        "and 3 replicas (sharded notices). Same machine, same run, one after the other.",
        "",
        table_row("scenario / measure", "goal", *ids),
        "|---|---|" + "---|" * len(ids),
    ]
    lines += [
        table_row(measure, goals[measure], *(values.get(stack, "-") for stack in ids))
        for measure, values in measured.items()
    ]
    return "\n".join(lines) + "\n"


def markdown(meta: dict[str, Any], results: dict[str, Any]) -> str:
    if meta.get("stacks"):
        return stacks_markdown(meta, results)
    lines = [
        *_heading(meta),
        "| scenario / measure | measured | goal | met |",
        "|---|---|---|---|",
    ]
    lines += [table_row(*row) for row in rows(results, meta)]
    naive = naive_rows(results)
    if naive:
        lines += [
            "",
            "Pipeline against the naive baseline (no dedup, one recompute per event, "
            "one coach per query), same load:",
            "",
            "| scenario | measure | pipeline | naive | naive / pipeline |",
            "|---|---|---|---|---|",
        ]
        lines += [table_row(*row) for row in naive]
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], directory: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    if results.get("whale"):
        from devtools.bench.whale import plot_curve

        written.append(plot_curve(results["whale"]["curve"], directory / f"{stem}-whale.png"))
    steady = results.get("steady", {})
    runs = [(name, run) for name, run in steady.items() if run and run.get("timeline")]
    if not runs:
        return written
    figure, (over_time, distribution) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, run in runs:
        times = [t for t, _ in run["timeline"]]
        latencies = [lat for _, lat in run["timeline"]]
        over_time.scatter(times, latencies, s=2, alpha=0.4, label=name)
        ordered = sorted(latencies)
        distribution.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=name)
    over_time.set(
        xlabel="seconds into the run",
        ylabel="commit → stored (ms)",
        yscale="log",
        title="steady 200 changes/s: latency over time",
    )
    distribution.set(
        xlabel="commit → stored (ms)",
        ylabel="fraction of stored writes",
        xscale="log",
        title="latency distribution (CDF)",
    )
    for axis in (over_time, distribution):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path = directory / f"{stem}-steady-latency.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)
    return written


def write(directory: Path, stem: str, meta: dict[str, Any], results: dict[str, Any]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{stem}.json"
    json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    md_path = directory / f"{stem}.md"
    md_path.write_text(markdown(meta, results))
    if not meta.get("stacks"):
        return [json_path, md_path, *plots(results, directory, stem)]
    drawn = [plots(results[stack], directory, f"{stem}-{stack}") for stack in meta["stacks"]]
    return [json_path, md_path, *(path for paths in drawn for path in paths)]
