"""One transaction of N rows through the slot listener: the listener's peak RSS, and the time
from the commit until every aggregate is stored correct (issue 16).

    python -m devtools.bench.big_transaction 10000 100000 1000000

Each size gets a freshly started listener; its peak RSS is the kernel's high-water mark
(VmHWM, reset just before the transaction), so no sampling can miss the peak.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from devtools.bench.scenarios import verify
from devtools.bench.stack import Stack
from devtools.processes import wait_for

COACHES, CLIENTS_PER_COACH = 1000, 5


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


def _confirmed_past(stack: Stack, lsn: str) -> bool:
    with psycopg.connect(stack.pg.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
            " WHERE slot_name = 'coachpipe'",
            (lsn,),
        ).fetchone()
    return bool(row and row[0])


def one_transaction(stack: Stack, rows: int) -> dict[str, Any]:
    stack.worker()
    listener = stack.listener()
    stack.quiesce()
    pid = listener.pid
    rss_before_mb = _status_kb(pid, "VmRSS") / 1024
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the high-water mark
    per_client = math.ceil(rows / (COACHES * CLIENTS_PER_COACH))
    with psycopg.connect(stack.pg.url) as conn:
        conn.execute(
            "INSERT INTO goals (coach_id, client_id, title, progress)"
            " SELECT u.coach_id, u.id, 'bulk', n %% 101 FROM users u"
            " CROSS JOIN generate_series(1, %s) AS n WHERE u.role = 'client' LIMIT %s",
            (per_client, rows),
        )
        conn.commit()
        committed = time.monotonic()
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    wait_for(lambda: _confirmed_past(stack, row[0]), 1800, interval=0.1, message="slot to pass")
    stack.quiesce(timeout=1800)
    correct_after_s = time.monotonic() - committed
    peak_mb = _status_kb(pid, "VmHWM") / 1024
    rss_after_mb = _status_kb(pid, "VmRSS") / 1024
    stack.stop_processes()
    with psycopg.connect(stack.pg.url) as conn:
        coaches = [r[0] for r in conn.execute("SELECT id FROM users WHERE role = 'coach'")]
    checked = verify(stack, coaches)
    return {
        "rows": rows,
        "listener_rss_before_mb": round(rss_before_mb, 1),
        "listener_rss_peak_mb": round(peak_mb, 1),
        "listener_rss_after_mb": round(rss_after_mb, 1),
        "commit_to_all_correct_s": round(correct_after_s, 2),
        "aggregates_checked": checked["checked"],
        "aggregates_wrong": checked["wrong"],
    }


def main(argv: list[str]) -> int:
    sizes = [int(arg) for arg in argv] or [10_000, 100_000, 1_000_000]
    stack = Stack(coaches=COACHES, clients_per_coach=CLIENTS_PER_COACH, sessions_per_client=2)
    stack.start()
    try:
        for rows in sizes:
            sys.stdout.write(json.dumps(one_transaction(stack, rows)) + "\n")
            sys.stdout.flush()
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
