"""The change log kept by statement triggers: what a catch-up after a snapshot finds."""

from __future__ import annotations

import psycopg

from pipeline import seed
from pipeline.changelog import changes_after, prune
from pipeline.db import make_engine

SMALL = seed.SeedPlan(coaches=3, clients_per_coach=2, sessions_per_client=2)


def test_every_kind_of_change_after_the_snapshot_is_found(database_url: str) -> None:
    seed.load(database_url, SMALL)
    engine = make_engine(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        first, second, third = (
            row[0] for row in conn.execute("SELECT id FROM users WHERE role = 'coach' ORDER BY id")
        )
        # A transaction open across the snapshot: it commits after, so it is found too.
        early = psycopg.connect(database_url)
        early.execute("UPDATE goals SET progress = 1 WHERE coach_id = %s", (third,))
        snapshot = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
        assert changes_after(engine, snapshot) == (set(), set())
        conn.execute(
            "DELETE FROM session_ratings WHERE id = (SELECT id FROM session_ratings "
            "WHERE coach_id = %s LIMIT 1)",
            (first,),
        )
        conn.execute(  # a reassignment: both coaches
            "UPDATE sessions SET coach_id = %s WHERE id = (SELECT id FROM sessions "
            "WHERE coach_id = %s LIMIT 1)",
            (second, first),
        )
        early.commit()
        early.close()
        coaches, truncated = changes_after(engine, snapshot)
        assert coaches == {first, second, third}
        assert truncated == set()
        conn.execute("TRUNCATE session_feedback")
        assert changes_after(engine, snapshot)[1] == {"session_feedback"}
        later = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
        assert changes_after(engine, later) == (set(), set())
        # Pruning keeps the last hour.
        assert prune(engine) == 0
        conn.execute("UPDATE coachpipe_change_log SET logged_at = now() - interval '2 hours'")
        assert prune(engine) > 0
        assert conn.execute("SELECT count(*) FROM coachpipe_change_log").fetchone()[0] == 0
    engine.dispose()
