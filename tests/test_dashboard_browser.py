"""The dashboard page in headless Chromium, fed by the whole pipeline.

Real processes only: the private Postgres and Redis, a Celery worker, a `postgres` listener and
`coachpipe api`. A row committed in Postgres shows on the open page; stopping the listener turns
the indicator red and shows the "using polling" toast; restarting it turns it green again.
Screenshots of the states land in tests/artifacts/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
import redis

from devtools.processes import (
    listener_connected,
    running,
    start_listener,
    start_worker,
    wait_for,
)
from pipeline import seed
from pipeline.read import read_aggregate
from tests.test_api import claims, hs256

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
PLAN = seed.SeedPlan(coaches=3, clients_per_coach=3, sessions_per_client=3)
SESSIONS_COMPLETED = "[data-testid=sessions-completed]"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium "
        "(apt-get install --no-install-recommends chromium; CI's .ci/run installs it)",
    ),
]


def completed_in_redis(client: redis.Redis, coach: UUID) -> int | None:
    stored = read_aggregate(client, coach, "coach-stats")
    if stored is None:
        return None
    value: Any = stored.value
    return int(value["sessions"]["completed"])


def complete_one_session(database_url: str, coach: UUID) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        changed = conn.execute(
            "UPDATE sessions SET status = 'completed', completed_at = now(), updated_at = now()"
            " WHERE id = (SELECT id FROM sessions WHERE coach_id = %s AND status = 'scheduled'"
            " ORDER BY scheduled_at LIMIT 1)",
            (coach,),
        ).rowcount
    assert changed == 1


def coach_with_a_scheduled_session(database_url: str) -> UUID:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT coach_id FROM sessions WHERE status = 'scheduled' GROUP BY coach_id"
            " ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def test_the_dashboard_follows_commits_and_shows_when_realtime_is_lost(
    database_url: str,
    redis_client: redis.Redis,
    service_env: dict[str, str],
    broker_url: str,
    tmp_path: Path,
    api: str,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    seed.load(database_url, PLAN)
    redis.Redis.from_url(broker_url).flushdb()
    worker = start_worker(service_env, tmp_path, broker_url=broker_url)
    listener = start_listener(service_env, tmp_path, "listener-1")
    coach = coach_with_a_scheduled_session(database_url)
    ARTIFACTS.mkdir(exist_ok=True)
    with running(worker, listener), sync_playwright() as playwright:
        wait_for(
            lambda: listener_connected(redis_client, listener), 30, message="listener to connect"
        )
        wait_for(lambda: completed_in_redis(redis_client, coach) is not None, 60, message="stats")
        before = completed_in_redis(redis_client, coach)
        assert before is not None

        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(f"{api}/dashboard?coach={coach}#token={hs256(claims(sub=str(coach)))}")

        indicator = page.get_by_test_id("indicator")
        toast = page.get_by_test_id("toast")
        expect(page.locator(SESSIONS_COMPLETED)).to_have_text(str(before), timeout=10_000)
        expect(indicator).to_have_attribute("data-status", "green", timeout=10_000)
        expect(toast).to_be_hidden()
        expect(page.locator("#problem")).to_be_empty()
        assert "#token=" not in page.url  # the token does not stay in the address bar

        # A commit in Postgres → listener → worker → Redis → SSE → the page. How fast is the
        # benchmark's question; the wait here only bounds a hang.
        complete_one_session(database_url, coach)
        expect(page.locator(SESSIONS_COMPLETED)).to_have_text(str(before + 1), timeout=30_000)
        assert completed_in_redis(redis_client, coach) == before + 1
        live = ARTIFACTS / "dashboard-live.png"
        page.screenshot(path=str(live), full_page=True)

        # The listener stops: realtime is lost, the page says so and falls back to polling.
        assert listener.terminate(timeout=20) == 0
        expect(indicator).to_have_attribute("data-status", "red", timeout=30_000)
        expect(toast).to_be_visible()
        expect(toast).to_contain_text("Realtime connection lost. Using polling.")
        degraded = ARTIFACTS / "dashboard-degraded.png"
        page.screenshot(path=str(degraded), full_page=True)

        # A new listener connects: green again, the toast goes.
        restarted = start_listener(service_env, tmp_path, "listener-2")
        with running(restarted):
            expect(indicator).to_have_attribute("data-status", "green", timeout=30_000)
            expect(toast).to_be_hidden()
            recovered = ARTIFACTS / "dashboard-recovered.png"
            page.screenshot(path=str(recovered), full_page=True)
        browser.close()
    assert not problems, problems
    for path in (live, degraded, recovered):
        print(f"screenshot: {path}")
