"""The SQL of every aggregate equals the plain-Python oracle on generated datasets."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from pipeline.aggregates import REGISTRY
from pipeline.db import make_engine
from tests import oracle
from tests.conftest import reset_database
from tests.datasets import datasets, insert, mutate, read_back

SESSION_ZONES = st.sampled_from(["UTC", "America/St_Johns", "Asia/Kathmandu", "Pacific/Kiritimati"])


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def load(database_url: str, data: oracle.Dataset, mutations: dict[str, Any]) -> oracle.Dataset:
    reset_database(database_url)
    with psycopg.connect(database_url) as conn:
        insert(conn, data)
        mutate(conn, mutations)
        conn.commit()
        return read_back(conn)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=datasets(), zone=SESSION_ZONES)
def test_every_aggregate_equals_the_oracle(
    database_url: str, engine: Engine, drawn: Any, zone: str
) -> None:
    as_of, data, mutations = drawn
    stored = load(database_url, data, mutations)
    coach_ids = [u["id"] for u in stored.users if u["role"] == "coach"]
    unknown = uuid.uuid4()
    with engine.connect() as conn:
        conn.execute(text("SELECT set_config('TimeZone', :zone, false)"), {"zone": zone})
        for aggregate in REGISTRY:
            values = aggregate.compute(conn, [*coach_ids, unknown], as_of)
            for coach_id in [*coach_ids, unknown]:
                assert values[coach_id] == oracle.expected(
                    stored, aggregate.name, coach_id, as_of
                ), (aggregate.name, coach_id)


def test_a_coach_with_no_rows_gets_a_well_formed_empty_aggregate(engine: Engine) -> None:
    from datetime import UTC, datetime

    as_of = datetime(2026, 3, 4, 12, tzinfo=UTC)
    nobody = uuid.uuid4()
    with engine.connect() as conn:
        for aggregate in REGISTRY:
            value = aggregate.compute(conn, [nobody], as_of)[nobody]
            assert value == oracle.expected(oracle.Dataset(), aggregate.name, nobody, as_of)
            assert value == aggregate.empty(as_of)
