"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against `streamlit run app.py`.

A session fixture builds a small demo database (fixed end, 40 users, 3 days) and starts the dashboard on it on a
free loopback port. Then, as a user would:

* every page opens without an exception box and is captured (full page) under test-artifacts/screenshots/;
  the Overview is also written, viewport-sized, to docs/overview.png (the README's picture);
* the user reads the Refreshes tile, uploads a receiver log with notifications the demo does not hold through
  the Upload page's file input, ingests it, sees the new deliveries reported, follows the link back to the
  Overview and sees the tile move; then clicks the worst identity on Session lifetimes and sees that person's
  chains in the drill-down, and finds the uploaded user through the drill-down's search box.

Expected figures come from the same data loaded with the engine into a copy of the database (fingerprint key
included), never from the page itself. These tests never skip: without /usr/bin/chromium they fail and say how
to install it. The Streamlit server's log is at test-artifacts/browser-server.log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest

from dashboard.components import PAGES, fmt_int
from ingest.demo import receiver_record, write_demo
from ingest.pipeline import ingest
from ingest.store import Store, key_path
from queries.lifetimes import identity_lifetimes
from queries.summary import summary
from tests.browser_support import (
    CHROMIUM,
    MISSING_CHROMIUM,
    VIEWPORT,
    dashboard,
    exceptions,
    full_page_screenshot,
    log_tail,
    metric_values,
    settle,
)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SHOTS = ARTIFACTS / "screenshots"
README_SHOT = ROOT / "docs" / "overview.png"
END = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
UPLOADED_USER = "robin.upload@browser-test.example"
TIMEOUT_MS = 30_000
DEFAULT_PAGE = "overview"  # app.py: st.Page(..., default=True) is served at "/", not at its url_path


def _upload_records() -> list[dict]:
    """A receiver log of one new user: a login and five hourly refreshes, one of them retried once by Tyk."""

    def body(kind: str, i: int, old: str = "", code: str = "") -> dict:
        return {
            "auth_code": code,
            "new_oauth_token": f"bt-access-{i}",
            "refresh_token": f"bt-refresh-{i}",
            "old_refresh_token": old,
            "notification_type": kind,
        }

    t0 = END - timedelta(hours=20)
    rows = [receiver_record(t0, body("new", 0, code="bt-code-0"), extra={"username": UPLOADED_USER})]
    for i in range(1, 6):
        at = t0 + timedelta(minutes=55 * i)
        b = body("refresh", i, old=f"bt-refresh-{i - 1}")
        if i == 3:  # the receiver answered 503: Tyk sent the same body again 10 s later
            rows.append(receiver_record(at, b, status=503))
            at += timedelta(seconds=10)
        rows.append(receiver_record(at, b))
    return rows


def _build(db: Path, logs: list[Path], ids: Path | None = None) -> dict:
    store = Store.open(db)
    try:
        ingest(store, logs, identities=ids)
        return summary(store)
    finally:
        store.close()


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    """The dashboard on a demo database; what the numbers must be before and after the upload."""
    if not Path(CHROMIUM).exists():
        pytest.fail(MISSING_CHROMIUM, pytrace=False)
    root = tmp_path_factory.mktemp("browser")
    paths = write_demo(root / "logs", days=3, users=40, seed=7, end=END)
    logs = [p for p in paths if p.suffix != ".csv"]
    ids = next(p for p in paths if p.suffix == ".csv")
    db = root / "tokentrail.duckdb"
    before = _build(db, logs, ids)

    upload = root / "receiver-upload.jsonl"
    upload.write_text("".join(json.dumps(r) + "\n" for r in _upload_records()), encoding="utf-8")
    expected_db = root / "expected.duckdb"  # the same database after the same upload, through the engine
    shutil.copyfile(db, expected_db)
    shutil.copyfile(key_path(str(db)), key_path(str(expected_db)))
    after = _build(expected_db, [upload])
    store = Store.open(expected_db, read_only=True)
    try:
        worst = identity_lifetimes(store, None, None, 50)
    finally:
        store.close()
    assert after["deliveries"] > before["deliveries"] and after["refresh_events"] > before["refresh_events"]

    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "browser-server.log"
    with dashboard(db, log, timeout=60) as url:
        yield {
            "url": url,
            "before": before,
            "after": after,
            "upload": upload,
            "log": log,
            "worst_identity": str(worst.iloc[0]["identity"]),
        }


@pytest.fixture
def page(browser, app, request):
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(TIMEOUT_MS)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.js_errors = errors  # type: ignore[attr-defined]
    yield pg
    try:  # what the page looked like at the end (or where it failed)
        pg.screenshot(path=str(ARTIFACTS / f"last-{request.node.name}.png"))
    finally:
        ctx.close()


# -- helpers -------------------------------------------------------------------------------------------------


def _path(name: str) -> str:
    """The page's URL path: the default page (the Overview) is the app's root."""
    return "" if name == DEFAULT_PAGE else PAGES[name].url_path


def _open(page, app, name: str, **params) -> None:
    query = f"?{urlencode(params)}" if params else ""
    page.goto(f"{app['url']}/{_path(name)}{query}")
    _arrived(page, name)


def _arrived(page, name: str) -> None:
    """The page's own header is shown, Streamlit has finished drawing it, and nothing went wrong."""
    page.locator("h1").filter(has_text=PAGES[name].title).first.wait_for()
    settle(page)
    _no_exception(page, name)


def _no_exception(page, name: str) -> None:
    boxes = exceptions(page)
    assert not boxes, f"{name}: Streamlit exception on the page: {boxes}"
    dialogs = page.locator('[role="dialog"]').all_inner_texts()  # e.g. Streamlit's "Page not found"
    assert not dialogs, f"{name}: unexpected dialog: {dialogs}"


def _wait_url(page, name: str) -> None:
    page.wait_for_url(re.compile(rf"^[^?]*/{re.escape(_path(name))}(\?.*)?$"), timeout=15_000)


def _sidebar(page, name: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=PAGES[name].title).first.click()
    _wait_url(page, name)
    _arrived(page, name)


def _shot(page, name: str) -> None:
    full_page_screenshot(page, SHOTS / f"{name}.png")


def _refreshes_tile(page) -> str:
    return metric_values(page)["Refreshes"]


# -- tests ---------------------------------------------------------------------------------------------------


def test_every_page_renders_and_is_captured(page, app):
    """Each page opened by its URL (a deep link, like a copied address) shows its header, its panels and no
    exception; all seven are captured, and the Overview becomes the README's screenshot."""
    _open(page, app, "overview")
    tiles = metric_values(page)
    assert tiles["Refreshes"] == fmt_int(app["before"]["refresh_events"]), tiles
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 4
    # viewport-sized: the README shows what a user first sees. Refreshed on demand (make screenshot), so a
    # test run leaves the working tree clean.
    page.screenshot(path=str(SHOTS / "overview-viewport.png"))
    if os.environ.get("TOKENTRAIL_README_SHOT"):
        page.screenshot(path=str(README_SHOT))
    _shot(page, "overview")

    for name in ("refresh_rates", "orphans", "lifetimes"):
        _sidebar(page, name)
        assert page.locator('[data-testid="stPlotlyChart"]').count() >= 1, f"{name}: no chart"
        _shot(page, PAGES[name].url_path)

    _open(page, app, "identity", identity=app["worst_identity"])
    assert page.get_by_role("combobox", name="Identity").input_value() == app["worst_identity"]
    _shot(page, "identity")

    _sidebar(page, "upload")
    assert page.locator('[data-testid="stFileUploader"]').count() >= 1
    _shot(page, "upload")

    _sidebar(page, "live")  # no receiver ever wrote to the demo database: how to start one
    assert page.get_by_text("Live mode is not running").count() == 1
    assert page.get_by_text("oauth_on_keychange_url").count() >= 1
    _shot(page, "live")
    assert not page.js_errors, page.js_errors


def test_the_overview_path_typed_by_hand_opens_the_overview(browser, app):
    """`/overview` (typed, bookmarked, or copied from the nav's own name) lands on the Overview at the root with
    the URL's range kept, and no "Page not found" dialog. Streamlit serves its default page at the root only and
    used to answer this path with that dialog on most visits, so it is opened in three fresh tabs."""
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        for _ in range(3):
            tab = ctx.new_page()
            tab.goto(f"{app['url']}/{PAGES['overview'].url_path}?range=Last+24+hours")
            tab.wait_for_url(re.compile(r"^http://[^/]+/\?range=Last\+24\+hours$"), timeout=15_000)
            _arrived(tab, "overview")
            time.sleep(1.0)  # the dialog, when it came, came after the page had drawn
            _no_exception(tab, "overview")
            assert tab.get_by_role("combobox", name="Range").input_value() == "Last 24 hours"
            tab.close()
    finally:
        ctx.close()


def test_upload_then_drill_down(page, app):
    """The user's path: a number, an upload, the number moves; then one person's chain, found by a click."""
    before, after = app["before"], app["after"]
    _open(page, app, "overview")
    assert _refreshes_tile(page) == fmt_int(before["refresh_events"])

    # Upload the receiver log through the log uploader's file input, then Ingest.
    _sidebar(page, "upload")
    assert metric_values(page)["Deliveries stored"] == fmt_int(before["deliveries"])
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Log exports")
    uploader.locator('input[type="file"]').set_input_files(str(app["upload"]))
    ingest_button = page.get_by_role("button", name="Ingest")
    page.wait_for_function(  # the upload reached the server and the script reran with the file
        "() => [...document.querySelectorAll('button')].some(b => b.innerText.trim().endsWith('Ingest') && !b.disabled)"
    )
    settle(page)
    ingest_button.click()
    new = after["deliveries"] - before["deliveries"]
    report = page.locator('[data-testid="stAlert"]').filter(has_text="new deliveries")
    report.wait_for(timeout=60_000)
    settle(page)
    _no_exception(page, "upload")
    text = report.inner_text()
    assert f"{fmt_int(new)} new deliveries" in text, text
    assert "0 rejected" in text, text
    assert metric_values(page)["Deliveries stored"] == fmt_int(after["deliveries"])
    _shot(page, "upload-after-ingest")

    # Back to the Overview by the report's link: the tile moved, without a restart.
    page.locator('[data-testid="stPageLink"] a').filter(has_text="See the overview").click()
    _wait_url(page, "overview")
    _arrived(page, "overview")
    assert _refreshes_tile(page) == fmt_int(after["refresh_events"]) != fmt_int(before["refresh_events"])

    # Session lifetimes: select the first row of the per-identity table (the worst identity) -> its drill-down.
    _sidebar(page, "lifetimes")
    grid = page.locator('[data-testid="stDataFrame"]').filter(has_text="@").first  # the per-identity table
    first_row = grid.locator('[role="row"]').nth(1)  # the grid's accessible table; row 0 is the header
    first_row.wait_for(state="attached")
    who = next(c for c in first_row.locator('[role="gridcell"]').all_inner_texts() if "@" in c).strip()
    grid.scroll_into_view_if_needed()
    grid.click(position={"x": 16, "y": 35 + 17})  # the row's selection box: header and rows are 35 px high
    page.wait_for_url(re.compile(r"/identity\?(.*&)?identity="), timeout=15_000)
    _arrived(page, "identity")
    _assert_chain_shown(page, who)
    _shot(page, "identity-after-click")

    # The uploaded user, found with the drill-down's search box.
    search = page.get_by_role("combobox", name="Identity")
    search.click()
    search.fill("robin.upload")
    page.get_by_role("option", name=UPLOADED_USER).click()
    page.wait_for_url(re.compile(r"identity=robin\.upload"), timeout=15_000)
    deadline = time.monotonic() + 15
    while metric_values(page).get("Refreshes") != "5" and time.monotonic() < deadline:
        time.sleep(0.1)
    settle(page)
    _assert_chain_shown(page, UPLOADED_USER)
    tiles = metric_values(page)
    assert tiles["Sessions"] == "1" and tiles["Refreshes"] == "5", tiles
    _shot(page, "identity-uploaded-user")
    assert not page.js_errors, page.js_errors
    server_log = app["log"].read_text(errors="replace")
    assert "Traceback" not in server_log, log_tail(app["log"])
    # Streamlit called from another thread (e.g. an ingest progress callback on a reader thread) fails the upload
    assert "missing ScriptRunContext" not in server_log, log_tail(app["log"])


def _assert_chain_shown(page, who: str) -> None:
    assert page.get_by_role("combobox", name="Identity").input_value() == who
    panels = page.locator('[class*="st-key-tt-panel-"]')
    timeline = panels.filter(has_text=re.compile("timeline", re.I)).first
    assert timeline.locator('[data-testid="stPlotlyChart"] .main-svg').count() >= 1, "no timeline chart"
    assert timeline.locator(".js-plotly-plot .bars, .js-plotly-plot .scatterlayer .trace").count() >= 1
    events = panels.filter(has_text=re.compile(r"events of chain", re.I)).first
    rows = events.locator('[data-testid="stDataFrame"] [role="row"]')
    deadline = time.monotonic() + 10
    while rows.count() < 2 and time.monotonic() < deadline:  # the grid's accessible rows follow its paint
        time.sleep(0.1)
    assert rows.count() >= 2, "the event table is empty"
