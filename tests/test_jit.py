"""No recompute pays for JIT compilation.

A whale skews the planner's row estimates: on a database whose only big coach had a million
sessions, every aggregate statement's estimated cost passed `jit_above_cost` (100,000), and
each recompute spent 25-30 ms compiling (coach-stats 26 ms p50 against 1.6 ms without; JIT
helps long analytic scans, never index-bounded reads). Here `jit_above_cost = 0` stands in for
those estimates: every plan of the database would be compiled.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from sqlalchemy import text

from pipeline.db import make_engine

PLAN = "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM pg_class"


def compiled(plan: Any) -> bool:
    return "JIT" in json.loads(plan)[0] if isinstance(plan, str) else "JIT" in plan[0]


def test_the_pipelines_sessions_never_jit_compile(fresh_database: str) -> None:
    database = fresh_database.rsplit("/", 1)[1]
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" SET jit_above_cost = 0')
        conn.execute(f'ALTER DATABASE "{database}" SET jit = on')
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        available = conn.execute("SELECT pg_jit_available()").fetchone()
        assert available is not None
        if available[0]:  # the control: a session of its own would compile this plan
            row = conn.execute(PLAN).fetchone()
            assert row is not None and compiled(row[0])
    for snapshots in (True, False):
        engine = make_engine(fresh_database, snapshots=snapshots)
        try:
            with engine.begin() as connection:
                assert connection.execute(text("SHOW jit")).scalar_one() == "off"
                assert not compiled(connection.execute(text(PLAN)).scalar_one())
        finally:
            engine.dispose()
