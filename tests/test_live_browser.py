"""Live mode end to end, in headless Chromium: Tyk posts to `tokentrail receive` while the dashboard is open
on the same database; the dashboard (the database's single writer) applies the spool, and the open Overview,
with auto-refresh on, shows the new refreshes within seconds, without a reload."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from ingest.demo import write_demo
from ingest.pipeline import ingest
from ingest.store import Store
from tests.browser_support import VIEWPORT, dashboard, exceptions, full_page_screenshot, metric_values, settle
from tests.live_support import ROOT, notification, receiver

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "test-artifacts"


def _refreshes(page) -> int:
    return int(metric_values(page)["Refreshes"].replace(",", ""))


def test_open_dashboard_follows_live_deliveries(tmp_path, browser):
    db = tmp_path / "tokentrail.duckdb"
    paths = write_demo(tmp_path / "logs", days=1, users=8, seed=3, end=datetime.now(UTC))
    store = Store.open(db)
    ingest(store, [p for p in paths if p.suffix != ".csv"])
    store.close()

    ARTIFACTS.mkdir(exist_ok=True)
    with dashboard(db, ARTIFACTS / "live-dashboard.log") as url, receiver(db) as rx:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{url}/?refresh=5s")
        page.locator("h1").filter(has_text="Overview").first.wait_for(timeout=30_000)
        settle(page)
        before = _refreshes(page)

        sent = [notification(0, kind="new", tag="live")] + [notification(i, tag="live") for i in range(1, 21)]
        for body in sent:
            assert rx.post(body).status_code == 200
        posted = time.monotonic()
        seen = before
        while time.monotonic() - posted < 30 and seen != before + 20:
            time.sleep(0.5)
            try:
                seen = _refreshes(page)
            except ValueError:  # the tile is being redrawn
                continue
        took = time.monotonic() - posted
        full_page_screenshot(page, ARTIFACTS / "live-overview.png")
        assert seen == before + 20, f"the open page shows {seen} refreshes, expected {before + 20}"
        assert took < 15, f"new refreshes took {took:.1f}s to appear (auto-refresh 5 s + ~1 s apply)"
        badge = page.locator('[data-testid="stSidebar"]').inner_text()
        assert "Live" in badge and "last delivery" in badge
        assert not exceptions(page)
        m = rx.metrics()
        assert m["tokentrail_spool_lag_deliveries"] == 0  # the dashboard applied everything
        assert m["tokentrail_store_events"] >= len(sent)
        page.close()
