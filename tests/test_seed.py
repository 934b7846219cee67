"""Seed data: deterministic, consistent, loaded with COPY."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from pipeline import seed
from tests.conftest import reset_database

PLAN = seed.SeedPlan(coaches=12, anchor=datetime(2026, 6, 1, tzinfo=UTC))
FINGERPRINT = """
SELECT md5(string_agg(t, ',' ORDER BY t)) FROM (
  SELECT id::text || status || scheduled_at::text AS t FROM sessions
  UNION ALL SELECT id::text || coalesce(coach_id::text, '') || full_name FROM users
  UNION ALL SELECT id::text || rating FROM session_ratings
  UNION ALL SELECT id::text || comment FROM session_feedback
  UNION ALL SELECT id::text || progress FROM goals) rows
"""


def test_the_same_plan_loads_the_same_rows(database_url: str) -> None:
    counts = seed.load(database_url, PLAN)
    assert counts.users == 12 + 12 * 20
    assert counts.sessions == 12 * 20 * 5
    assert counts.session_ratings > 0 and counts.session_feedback > 0 and counts.goals > 0
    with psycopg.connect(database_url) as conn:
        (first,) = conn.execute(FINGERPRINT).fetchone()
    reset_database(database_url)
    assert seed.load(database_url, PLAN) == counts
    with psycopg.connect(database_url) as conn:
        (second,) = conn.execute(FINGERPRINT).fetchone()
    assert first == second


def test_seeded_data_is_realistic(database_url: str) -> None:
    seed.load(database_url, PLAN)
    with psycopg.connect(database_url) as conn:
        past_scheduled, future_completed, rated_uncompleted = conn.execute(
            """
            SELECT
              count(*) FILTER (WHERE status = 'scheduled' AND scheduled_at < %(anchor)s),
              count(*) FILTER (WHERE status = 'completed' AND scheduled_at > %(anchor)s),
              (SELECT count(*) FROM session_ratings r JOIN sessions s ON s.id = r.session_id
               WHERE s.status <> 'completed')
            FROM sessions
            """,
            {"anchor": PLAN.anchor},
        ).fetchone()
    assert (past_scheduled, future_completed, rated_uncompleted) == (0, 0, 0)
    progress: list[int] = []
    seed.truncate(database_url)
    counts = seed.load(database_url, PLAN, progress.append)
    assert sum(progress) == counts.total()
