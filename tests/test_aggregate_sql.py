"""How the aggregates' statements reach Postgres: two parameters, pipelined, planned once."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql

from pipeline import seed
from pipeline.aggregates import CRITICAL, REGISTRY
from pipeline.db import make_engine, psycopg_connection
from pipeline.recompute import SNAPSHOT_START, compute_snapshot


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, pool_size=1, snapshots=True)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("aggregate", REGISTRY, ids=lambda a: a.name)
def test_only_the_batch_and_the_clock_are_parameters(aggregate: object) -> None:
    dialect = postgresql.psycopg.dialect()  # type: ignore[attr-defined]
    for sql in aggregate.compiled(dialect).values():  # type: ignore[attr-defined]
        assert set(re.findall(r"%\((\w+)\)s", sql)) <= {"coach_ids", "as_of"}
        assert "coach_ids" in re.findall(r"%\((\w+)\)s", sql)


def test_repeated_recomputes_reuse_one_generic_plan_per_statement(
    engine: Engine, database_url: str
) -> None:
    seed.load(database_url, seed.SeedPlan(coaches=3))
    with psycopg.connect(database_url) as conn:
        coaches = [r[0] for r in conn.execute("SELECT id FROM users WHERE role = 'coach'")]
    results = [compute_snapshot(engine, CRITICAL, coaches).values for _ in range(8)]
    assert all(values == results[0] for values in results[1:])  # same as the custom plans
    assert all(results[0]["coach-stats"][c]["sessions"]["total"] > 0 for c in coaches)
    statements = sum(len(a.statements) for a in CRITICAL)
    with engine.connect() as connection:  # the pool's only connection: the one that ran them
        rows = (
            psycopg_connection(connection)
            .execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement NOT LIKE 'SET %%' AND statement <> %s",
                (SNAPSHOT_START,),
            )
            .fetchall()
        )
    assert len(rows) == statements
    assert all(generic >= 1 and custom == 0 for generic, custom in rows)


def test_a_failing_statement_leaves_the_connection_usable(engine: Engine) -> None:
    with pytest.raises(psycopg.Error), engine.connect() as connection, connection.begin():
        driver = psycopg_connection(connection)
        with driver.pipeline():
            driver.execute("SELECT 1/0")
    assert compute_snapshot(engine, CRITICAL, [uuid.uuid4()]).values
