"""The clock tick finds every coach whose aggregate changes with time alone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from pipeline.aggregates import CRITICAL
from pipeline.coaches import coaches_crossing
from pipeline.db import make_engine
from tests.datasets import datasets
from tests.test_aggregates_oracle import load

# Sparse datasets on the window edges and mostly short steps, as between two ticks, so that
# unrelated crossings rarely hide a missed one.
STEPS = st.one_of(
    st.integers(1, 600_000_000).map(lambda us: timedelta(microseconds=us)),
    st.integers(1, 45).map(lambda d: timedelta(days=d)),
)


@pytest.fixture
def engine(database_url: str) -> Any:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=datasets(max_rows=4, edge_bias=0.9), step=STEPS)
def test_coaches_outside_the_crossing_set_keep_their_value(
    database_url: str, engine: Engine, drawn: Any, step: timedelta
) -> None:
    as_of, data, mutations = drawn
    stored = load(database_url, data, mutations)
    coach_ids = [u["id"] for u in stored.users if u["role"] == "coach"]
    later = as_of + step
    with engine.connect() as conn:
        for aggregate in CRITICAL:
            before = aggregate.compute(conn, coach_ids, as_of)
            after = aggregate.compute(conn, coach_ids, later)
            crossing = coaches_crossing(conn, aggregate, as_of, later)
            changed = {c for c in coach_ids if before[c] != after[c]}
            assert changed <= crossing, aggregate.name
