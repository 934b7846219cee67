"""The dashboard page's states in headless Chromium: who is signed in, what went wrong, and a
layout a coach keeps open. Aggregates are stored by a real recompute; `coachpipe api` serves.

Screenshots of each state land in tests/artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
import redis

from pipeline import seed
from pipeline.aggregates import NAMES
from pipeline.db import make_engine
from pipeline.refresh import refresh_everything
from pipeline.store import AggregateStore
from tests.pipeline_checks import coach_ids
from tests.test_api import claims, hs256
from tests.test_dashboard_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

PLAN = seed.SeedPlan(coaches=2, clients_per_coach=4, sessions_per_client=30)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]


@pytest.fixture
def coaches(database_url: str, redis_client: redis.Redis) -> list[UUID]:
    seed.load(database_url, PLAN)
    engine = make_engine(database_url, snapshots=True)
    chosen = coach_ids(database_url)
    refresh_everything(engine, AggregateStore(redis_client), list(NAMES), [chosen], threads=1)
    engine.dispose()
    return sorted(chosen)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def open_page(browser: Any, api: str, coach: str, token: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{api}/dashboard?coach={coach}#token={token}")
    return page


def test_a_signed_in_coach_sees_names_units_trends_and_freshness(
    browser: Any, api: str, coaches: list[UUID], database_url: str
) -> None:
    from playwright.sync_api import expect

    coach = coaches[0]
    with psycopg.connect(database_url) as conn:
        clients = [
            r[0] for r in conn.execute("SELECT full_name FROM users WHERE coach_id = %s", (coach,))
        ]
    token = hs256(claims(sub=str(coach), user_metadata={"full_name": "Ada Coach"}))
    page = open_page(browser, api, str(coach), token)

    expect(page.get_by_test_id("coach-name")).to_have_text("Ada Coach")
    expect(page.get_by_test_id("revenue")).to_have_text(re.compile(r"^\$[\d,]+$"), timeout=10_000)
    revenue = page.get_by_test_id("revenue").inner_text()
    if int(revenue[1:].replace(",", "")) >= 1000:
        assert "," in revenue  # thousands separator
    expect(page.get_by_test_id("goal-progress")).to_have_text(re.compile(r"^(\d+%|\u2013)$"))
    assert page.locator("#trend-chart rect").count() == 12
    activity = page.get_by_test_id("activity").inner_text()
    assert any(name in activity for name in clients), activity[:300]
    assert "updated" in page.locator("#coach-stats .updated").inner_text()
    assert page.locator(".version").count() == 0
    # The layout at 1280 px: three cards on the first row, two filling the second.
    boxes = {
        name: page.locator(f"#{name}").bounding_box()
        for name in (
            "coach-stats",
            "coach-insights",
            "coach-trends",
            "coach-activity",
            "coach-clients",
        )
    }
    first = [boxes[n] for n in ("coach-stats", "coach-insights", "coach-trends")]
    second = [boxes[n] for n in ("coach-activity", "coach-clients")]
    assert len({round(b["y"]) for b in first}) == 1 and len({round(b["y"]) for b in second}) == 1
    main = page.locator("main").bounding_box()
    for row in (first, second):
        used = sum(b["width"] for b in row)
        assert used > main["width"] * 0.9, (used, main["width"])
    page.screenshot(path=str(ARTIFACTS / "dashboard-signed-in.png"), full_page=True)

    # No listener runs: realtime is red; the toast says so, can be dismissed, covers nothing.
    toast = page.get_by_test_id("toast")
    expect(toast).to_be_visible(timeout=10_000)
    toast_box, table_box = toast.bounding_box(), page.locator("#coach-clients table").bounding_box()
    assert toast_box["y"] + toast_box["height"] <= table_box["y"]
    page.get_by_test_id("dismiss").click()
    expect(toast).to_be_hidden()
    page.close()


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("expired", "expired or is not valid"),
        ("garbage", "expired or is not valid"),
        ("other coach", "another coach"),
        ("bad coach id", "does not name a coach"),
    ],
)
def test_sign_in_and_address_problems_get_their_own_message_never_the_realtime_toast(
    browser: Any, api: str, coaches: list[UUID], case: str, says: str
) -> None:
    from playwright.sync_api import expect

    coach = str(coaches[0])
    token = hs256(claims(sub=coach))
    if case == "expired":
        token = hs256(claims(sub=coach, ttl_s=-3600))
    elif case == "garbage":
        token = "not.a.token"
    elif case == "other coach":
        token = hs256(claims(sub=str(coaches[1])))
    elif case == "bad coach id":
        coach = "not-a-uuid"
    page = open_page(browser, api, coach, token)
    problem = page.get_by_test_id("problem")
    expect(problem).to_be_visible(timeout=10_000)
    expect(problem).to_contain_text(says)
    assert "[object Object]" not in problem.inner_text()
    expect(page.get_by_test_id("toast")).to_be_hidden()
    assert page.get_by_test_id("indicator").get_attribute("data-status") != "red"
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{case.replace(' ', '-')}.png"))
    page.close()
