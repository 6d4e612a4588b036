"""The dashboard through Streamlit's AppTest: the shell and its seven pages, the Overview's numbers, the uploader.

The demo database is built once per session (two simulated days, 30 users, a fixed end) and its summary is
taken with the real command line (`tokentrail summary --json`) before any app opens the file. Every AppTest
gets a clean Streamlit cache, so the store of one test's database never leaks into the next.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.components import PAGES, defuse_cell, fmt_duration, fmt_int, fmt_pct, safe_csv, threshold_level
from ingest.demo import write_demo
from ingest.pipeline import ingest
from ingest.store import Store

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
END = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> dict:
    """A small demo database, its log files, and `tokentrail summary --json` of it."""
    root = tmp_path_factory.mktemp("demo")
    paths = write_demo(root / "logs", days=2, users=30, seed=3, end=END)
    logs = [p for p in paths if p.suffix != ".csv"]
    ids = next(p for p in paths if p.suffix == ".csv")
    db = root / "tokentrail.duckdb"
    store = Store.open(db)
    try:
        ingest(store, logs, identities=ids)
    finally:
        store.close()
    out = subprocess.run(
        [sys.executable, "-m", "tokentrail", "summary", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return {"db": db, "logs": logs, "identities": ids, "summary": json.loads(out.stdout)}


@pytest.fixture
def empty_db(tmp_path) -> Path:
    return tmp_path / "empty.duckdb"


@pytest.fixture
def app(fresh_app, monkeypatch):
    """Like `fresh_app`, but every run is like one on a server that has already served app.py once (the old
    `pages/`-folder mode is off for good), which is what every run but a server's very first one sees."""
    from streamlit.runtime import pages_manager

    original = pages_manager.PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        pages_manager.PagesManager.uses_pages_directory = False

    monkeypatch.setattr(pages_manager.PagesManager, "__init__", init)
    return fresh_app


def open_page(at: AppTest, page: str) -> AppTest:
    at.run()
    if page != "overview":
        at.switch_page(PAGES[page].path).run()
    return at


def tiles(at: AppTest) -> dict:
    return {m.label: m for m in at.metric}


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    # the shell ran: the sidebar holds the range picker, whatever the page
    assert [s.key for s in at.sidebar.selectbox] == ["range", "refresh"]


# -- every page, on demo data and on an empty store ------------------------------------------------------------


@pytest.mark.parametrize("page", list(PAGES))
def test_page_renders_on_demo_data(app, demo, page):
    at = open_page(app(demo["db"]), page)
    assert_clean(at)
    at.run()  # a rerun (widget change, auto-refresh) stays on the page, in the shell
    assert_clean(at)


@pytest.mark.parametrize("page", ["upload", "orphans"])
def test_a_deep_link_on_a_fresh_server_gets_the_shell(fresh_app, demo, page):
    """Streamlit's old pages-folder mode would run pages/<page>.py alone for /<page>; the guard reruns it in app.py."""
    at = open_page(fresh_app(demo["db"]), page)
    assert_clean(at)
    at.run()
    assert_clean(at)
    assert len(at.title) == 1  # the page once, not a half page and then the whole one


@pytest.mark.parametrize("page", list(PAGES))
def test_page_renders_on_an_empty_store(app, empty_db, page):
    at = open_page(app(empty_db), page)
    assert_clean(at)


def test_navigation_declares_the_seven_pages(app, demo):
    at = app(demo["db"]).run()
    assert_clean(at)
    assert [p.title for p in PAGES.values()] == [
        "Overview",
        "Refresh rates",
        "Orphaned tokens",
        "Session lifetimes",
        "Identity drill-down",
        "Upload",
        "Live receiver",
    ]
    assert [p.url_path for p in PAGES.values()] == [
        "overview",
        "refresh-rates",
        "orphans",
        "lifetimes",
        "identity",
        "upload",
        "live",
    ]
    assert at.title[0].value == "Overview"  # the default page


# -- the Overview ----------------------------------------------------------------------------------------------


def test_overview_tiles_equal_the_summary_for_all_data(app, demo):
    s = demo["summary"]
    at = app(demo["db"]).run()
    assert_clean(at)
    assert at.sidebar.selectbox(key="range").value == "all"
    t = tiles(at)
    assert t["Active now"].value == fmt_int(s["active_chains"])
    assert t["Refreshes"].value == fmt_int(s["refresh_events"])
    assert t["Refreshes"].delta == f"{fmt_int(s['new_events'])} logins"
    assert t["Orphan rate"].value == fmt_pct(s["orphan_chains"] / s["chains"])
    assert t["Orphan rate"].delta == f"{fmt_int(s['orphan_chains'])} orphan chains"
    assert t["Forks"].value == fmt_int(s["forks"])
    assert t["Retry rate"].value == fmt_pct(s["duplicates"] / s["deliveries"])
    assert t["Retry rate"].delta == f"{fmt_int(s['duplicates'])} retries"
    assert t["Forced re-logins"].value == fmt_int(s["forced_relogins"])
    assert t["Median lifetime"].value == fmt_duration(s["median_session_lifetime_s"])
    # every tile links to the page that explains it, and carries a sparkline
    assert len(at.get("page_link")) >= 7
    assert all(len(m.proto.chart_data) > 1 for m in at.metric)


def test_tile_queries_equal_the_summary_exactly(demo, tmp_path):
    from queries.overview import series, tiles

    db = tmp_path / "copy.duckdb"
    shutil.copy(demo["db"], db)
    shutil.copy(str(demo["db"]) + ".key", str(db) + ".key")
    store = Store.open(db, read_only=True)
    try:
        t = tiles(store)
        s = demo["summary"]
        assert (
            t["active_sessions"],
            t["refreshes"],
            t["new_events"],
            t["orphan_chains"],
            t["chains_started"],
            t["forks"],
            t["deliveries"],
            t["events"],
            t["duplicates"],
            t["forced_relogins"],
            t["median_session_lifetime_s"],
        ) == (
            s["active_chains"],
            s["refresh_events"],
            s["new_events"],
            s["orphan_chains"],
            s["chains"],
            s["forks"],
            s["deliveries"],
            s["events"],
            s["duplicates"],
            s["forced_relogins"],
            s["median_session_lifetime_s"],
        )
        # the buckets add up to the totals (no untimed rows in the demo)
        b = series(store, None, None, "1 hour")
        assert b["refreshes"].sum() == s["refresh_events"]
        assert b["new_events"].sum() == s["new_events"]
        assert b["orphan_chains"].sum() == s["orphan_chains"]
        assert b["duplicates"].sum() == s["duplicates"]
        assert b["forks"].sum() == s["forks"]
        assert (
            b["bucket"].is_monotonic_increasing
            and b["bucket"].diff().dropna().eq(pd.Timedelta(hours=1)).all()
        )
        # a range restricts every figure to [start, end)
        last = datetime.fromisoformat(s["last_seen"].replace("Z", "")) + timedelta(microseconds=1)
        day = tiles(store, last - timedelta(hours=24), last)
        n = (
            store.cursor()
            .execute(
                "SELECT count(*) FROM events WHERE notification_type = 'refresh' AND first_seen >= ? AND first_seen < ?",
                [last - timedelta(hours=24), last],
            )
            .fetchall()[0][0]
        )
        assert day["refreshes"] == n < s["refresh_events"]
        assert day["chains_started"] < s["chains"]
        assert len(series(store, last - timedelta(hours=24), last, "15 minutes")) == 24 * 4 + 1
    finally:
        store.close()


def test_range_follows_the_url_and_narrows_the_tiles(app, demo):
    at = app(demo["db"])
    at.query_params["range"] = "Last 24 hours"  # a bound widget keeps its displayed option in the URL
    at.run()
    assert_clean(at)
    assert at.sidebar.selectbox(key="range").value == "24h"
    day = int(tiles(at)["Refreshes"].value.replace(",", ""))
    assert 0 < day < demo["summary"]["refresh_events"]
    assert "Last 24 hours" in at.markdown[0].value or any("Last 24 hours" in m.value for m in at.markdown)

    at.sidebar.selectbox(key="range").set_value("all").run()
    assert_clean(at)
    assert tiles(at)["Refreshes"].value == fmt_int(demo["summary"]["refresh_events"])


def test_auto_refresh_runs_the_page_body_in_a_fragment(app, demo):
    at = app(demo["db"])
    at.query_params["refresh"] = "10s"
    at.run()
    assert_clean(at)
    assert at.sidebar.selectbox(key="refresh").value == "10s"
    assert tiles(at)["Forks"].value == fmt_int(demo["summary"]["forks"])


def test_overview_on_an_empty_store_says_what_to_do(app, empty_db):
    at = app(empty_db).run()
    assert_clean(at)
    text = " ".join(m.value for m in at.markdown)
    assert "No data yet" in text
    assert any("tokentrail demo" in c.value for c in at.code)
    links = [p.proto.page for p in at.get("page_link")]
    assert any("upload" in str(p) for p in links)
    assert not at.metric  # no tiles full of zeros


def test_empty_range_says_widen_it(app, demo):
    at = app(demo["db"])
    at.run()
    at.sidebar.selectbox(key="range").set_value("custom").run()
    at.sidebar.text_input(key="from").set_value("2020-01-01 00:00").run()
    at.sidebar.text_input(key="to").set_value("2020-01-02 00:00").run()
    assert_clean(at)
    assert any("No data in this range" in m.value for m in at.markdown)


# -- the Upload page ------------------------------------------------------------------------------------------


def _deliveries(at: AppTest) -> int:
    return int(tiles(at)["Deliveries stored"].value.replace(",", ""))


def _ingest_button(at: AppTest):
    return next(b for b in at.button if b.label == "Ingest")


def test_upload_ingests_files_and_every_page_sees_them(app, demo, empty_db):
    at = open_page(app(empty_db), "upload")
    assert_clean(at)
    assert _deliveries(at) == 0
    assert _ingest_button(at).disabled

    first = demo["logs"][0]
    logs = at.file_uploader[0]
    assert logs.accept_multiple_files
    logs.set_value([(first.name, first.read_bytes(), "application/gzip")])
    at.file_uploader[1].set_value(("identities.csv", demo["identities"].read_bytes(), "text/csv"))
    at.run()
    _ingest_button(at).click().run()
    assert_clean(at)
    added = _deliveries(at)
    assert added > 0
    assert not at.error
    assert any("new deliveries" in s.value for s in at.success)
    assert any("auth codes mapped" in s.value for s in at.success)
    report = at.dataframe[0].value
    assert list(report.columns) == [
        "file",
        "detected format",
        "records",
        "new deliveries",
        "already stored",
        "rejected",
        "untimed",
        "error",
    ]
    assert report["new deliveries"].sum() == added
    assert report["detected format"].notna().all()
    assert not at.file_uploader[0].value  # emptied for the next upload

    # the same file again adds nothing
    at.file_uploader[0].set_value([(first.name, first.read_bytes(), "application/gzip")])
    at.run()
    _ingest_button(at).click().run()
    assert_clean(at)
    assert _deliveries(at) == added
    assert at.dataframe[0].value["already stored"].sum() == added

    # the other pages show the new data without a restart
    at.switch_page(PAGES["overview"].path).run()
    assert_clean(at)
    assert int(tiles(at)["Refreshes"].value.replace(",", "")) > 0


def test_upload_reads_times_without_a_zone_in_the_zone_picked(app, empty_db):
    kibana = DATA / "exports" / "kibana_discover.csv"  # the browser's local time, no zone
    at = open_page(app(empty_db), "upload")
    zone = next(s for s in at.selectbox if s.label == "Times without a zone are in")
    assert zone.value == "UTC"
    zone.set_value("Asia/Tokyo")
    at.file_uploader[0].set_value([("discover.csv", kibana.read_bytes(), "text/csv")])
    at.run()
    _ingest_button(at).click().run()
    assert_clean(at)
    assert any("6 times were written without a zone and were read as Asia/Tokyo" in i.value for i in at.info)
    from dashboard.context import get_store  # the app's own connection: the file admits one configuration

    first = get_store().cursor().execute("SELECT min(first_seen) FROM events").fetchall()[0][0]
    assert first == datetime(2026, 12, 3, 0, 0, 0, 123000)  # 09:00:00.123 in Tokyo is midnight UTC


def test_upload_names_a_file_that_is_not_a_log_export(app, empty_db):
    at = open_page(app(empty_db), "upload")
    at.file_uploader[0].set_value(
        [("not_a_log.png", (DATA / "bad" / "not_a_log.png").read_bytes(), "image/png")]
    )
    at.run()
    _ingest_button(at).click().run()
    assert_clean(at)
    assert at.error, "a file that is not a log export must be reported"
    assert all("not_a_log.png" in e.value for e in at.error)
    assert all("Traceback" not in e.value for e in at.error)


def test_upload_says_why_records_were_rejected_and_members_skipped(app, empty_db, tmp_path):
    log = (DATA / "exports" / "receiver_plain.jsonl").read_bytes()
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("README.txt", b"Receiver logs of tyk-hook, exported by ops.\n")
        archive.writestr("hook.log", b"2026-12-03T08:59:00Z INFO listening on :8080\n" + log)
    at = open_page(app(empty_db), "upload")
    at.file_uploader[0].set_value([("logs.zip", packed.getvalue(), "application/zip")])
    at.run()
    _ingest_button(at).click().run()
    assert_clean(at)
    warned = [w.value for w in at.warning if "rejected" in w.value]
    assert warned == ["logs.zip!hook.log: 1 record rejected. 1: no Tyk notification found in the record "
                      "(other log lines?). They are kept in the quarantine below."], warned
    report = at.dataframe[0].value.set_index("file")
    assert report.loc["logs.zip!README.txt", "detected format"] == "skipped"
    assert report.loc["logs.zip!README.txt", "note"].startswith("skipped: not a log export"), report
    assert report.loc["logs.zip!hook.log", "note"] == ""


def test_quarantine_is_viewable_and_holds_no_raw_tokens(app, empty_db):
    expected = json.loads((DATA / "bad" / "expected.json").read_text())
    name = "truncated_json.jsonl"
    at = open_page(app(empty_db), "upload")
    at.file_uploader[0].set_value([(name, (DATA / "bad" / name).read_bytes(), "application/x-ndjson")])
    at.run()
    _ingest_button(at).click().run()
    assert_clean(at)
    frames = [d.value for d in at.dataframe]
    quarantine = next(f for f in frames if "reason" in f.columns)
    assert (quarantine["file"] == name).all()
    assert any(expected[name]["reason"][0] in r.lower() for r in quarantine["reason"])
    text = "\n".join(f.to_csv() for f in frames)
    for token in expected[name]["tokens"]:
        assert token not in text


# -- components -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("x")'])
def test_csv_defuses_formula_cells(cell):
    df = pd.DataFrame({"reason": [cell], "n": [-5]})
    text = safe_csv(df).decode()
    assert f"'{cell}" in text if '"' not in cell else "'=HYPERLINK" in text
    assert ",-5" in text  # numbers stay numbers
    assert defuse_cell("plain") == "plain"


@pytest.mark.parametrize("column", ["refresh_token", "new_oauth_token", "auth_code", "old_refresh_token"])
def test_csv_refuses_raw_token_columns(column):
    with pytest.raises(ValueError, match=column):
        safe_csv(pd.DataFrame({column: ["x"], "refresh_token_fp": ["ab12"]}))


def test_thresholds_and_formats():
    assert [threshold_level(v, 0.02, 0.10) for v in (0.0, 0.02, 0.05, 0.10, 0.5)] == [
        "ok",
        "warn",
        "warn",
        "bad",
        "bad",
    ]
    assert [threshold_level(v, 2.0, 1.25, higher_is_worse=False) for v in (3, 2, 1.5, 1.25, 1)] == [
        "ok",
        "warn",
        "warn",
        "bad",
        "bad",
    ]
    assert threshold_level(None, 1, 2) == "neutral"
    assert [fmt_duration(s) for s in (None, 5, 600, 3600, 10070.79, 90000)] == [
        "–",
        "5s",
        "10m",
        "1h",
        "2h 48m",
        "1d 1h",
    ]
    assert fmt_pct(0.1064) == "10.6%" and fmt_int(26620) == "26,620"


def test_queries_and_ingest_never_import_streamlit():
    code = (
        "import sys, queries.overview, queries.summary, ingest.pipeline; "
        "sys.exit(1 if 'streamlit' in sys.modules or 'plotly' in sys.modules else 0)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TOKENTRAIL_DB"}
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env).returncode == 0
