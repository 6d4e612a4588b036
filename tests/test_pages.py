"""The Refresh rates, Orphaned tokens, Session lifetimes and Identity drill-down pages through AppTest.

A small demo database is built once for the module and its figures are taken from the command line
(`tokentrail summary --json`, `tokentrail chains --identity ... --json`) before any app opens the file, so the
numbers on the pages are checked against the CLI, not against the queries that drew them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.components import (
    PAGES,
    buckets,
    fmt_duration,
    fmt_int,
    fmt_pct,
    md_literal,
    plot_label,
    plural,
)
from dashboard.theme import add_rate_line, style
from ingest.demo import write_demo
from ingest.pipeline import ingest
from ingest.store import Store
from queries.summary import short_sql

ROOT = Path(__file__).resolve().parents[1]
END = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
MINE = ("refresh_rates", "orphans", "lifetimes", "identity")


def _cli(*args: str):
    out = subprocess.run(
        [sys.executable, "-m", "tokentrail", *args], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pages-demo")
    paths = write_demo(root / "logs", days=2, users=30, seed=5, end=END)
    db = root / "tokentrail.duckdb"
    store = Store.open(db)
    try:
        ingest(
            store,
            [p for p in paths if p.suffix != ".csv"],
            identities=next(p for p in paths if p.suffix == ".csv"),
        )
        # the busiest identity, and how many chains the store holds per kind (read before the app opens the file)
        cur = store.cursor()
        who = cur.execute(
            "SELECT identity FROM chains WHERE identity IS NOT NULL GROUP BY 1 "
            "ORDER BY count(*) DESC, 1 LIMIT 1"
        ).fetchall()[0][0]
        forked = cur.execute(
            "SELECT identity FROM chains WHERE forks > 0 AND identity IS NOT NULL ORDER BY identity LIMIT 1"
        ).fetchall()
        identified = cur.execute("SELECT count(*) FROM chains WHERE identity IS NOT NULL").fetchall()[0][0]
    finally:
        store.close()
    return {
        "db": db,
        "summary": _cli("summary", "--db", str(db), "--json"),
        "who": who,
        "chains": _cli("chains", "--identity", who, "--db", str(db), "--json"),
        "forked": forked[0][0] if forked else None,
        "identified_chains": identified,
    }


@pytest.fixture
def app(dashboard_app):
    def make(db: Path, page: str | None = None, **params: str) -> AppTest:
        # the demo is two days long: every figure is the whole store
        return dashboard_app(db, page, **{"range": "All data", **params})

    return make


def clean(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def tiles(at: AppTest) -> dict:
    return {m.label: m for m in at.metric}


def text(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption])


# -- every page, both ways ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", MINE)
def test_page_renders_on_demo_data_with_charts_and_downloads(app, demo, page):
    at = clean(app(demo["db"], page, identity=demo["who"]))
    assert at.title[0].value == PAGES[page].title
    assert "No data" not in text(at)
    assert len(at.get("plotly_chart")) >= 2
    assert at.get("download_button"), "every table can be downloaded"
    at.run()  # a rerun (a widget change, auto-refresh) keeps working
    clean(at)


@pytest.mark.parametrize("page", MINE)
def test_page_on_an_empty_store_says_what_to_do(app, tmp_path, page):
    at = clean(app(tmp_path / "empty.duckdb", page))
    assert "No data yet" in text(at)
    assert any("upload" in str(p.proto.page) for p in at.get("page_link"))
    assert not at.get("plotly_chart")


@pytest.mark.parametrize("page", MINE)
def test_empty_range_says_widen_it(app, demo, page):
    at = app(demo["db"], page, identity=demo["who"])
    at.sidebar.selectbox(key="range").set_value("custom").run()
    at.sidebar.text_input(key="from").set_value("2020-01-01 00:00").run()
    at.sidebar.text_input(key="to").set_value("2020-01-02 00:00").run()
    clean(at)
    assert "widen" in text(at)


# -- the numbers match the command line ---------------------------------------------------------------------------


def test_refresh_rate_tiles_match_the_summary(app, demo):
    s = demo["summary"]
    t = tiles(clean(app(demo["db"], "refresh_rates")))
    assert t["Refreshes"].value == fmt_int(s["refresh_events"])
    assert t["Refreshes"].delta == f"{fmt_int(s['new_events'])} logins"
    # every refresh has its parent in the data except the orphan roots
    with_parent = s["refresh_events"] - s["orphan_chains"]
    assert t["Late"].value == fmt_pct(s["late_refreshes"] / with_parent)
    assert t["Late"].delta == f"{fmt_int(s['late_refreshes'])} after expiry"


def test_orphan_tiles_match_the_summary(app, demo):
    s = demo["summary"]
    at = clean(app(demo["db"], "orphans"))
    t = tiles(at)
    assert t["Orphan chains"].value == fmt_int(s["orphan_chains"])
    assert t["Orphan rate"].value == fmt_pct(s["orphan_chains"] / s["chains"])
    causes = sum(
        int(t[k].value.replace(",", "")) for k in ("Receiver lost them", "Start of data", "Unexplained")
    )
    assert causes == s["orphan_chains"]
    table = next(d.value for d in at.dataframe if "cause" in d.value.columns)
    assert len(table) == s["orphan_chains"]
    assert table["unknown_parent"].str.len().le(10).all()  # fingerprints shown short
    at.segmented_control(key="lookback").set_value(15).run()
    clean(at)


def test_lifetime_tiles_match_the_summary(app, demo):
    s = demo["summary"]
    at = clean(app(demo["db"], "lifetimes"))
    t = tiles(at)
    assert t["Sessions"].value == fmt_int(s["chains"])
    assert t["Median lifetime"].value == fmt_duration(s["median_session_lifetime_s"])
    assert t["Forced re-logins"].value == fmt_int(s["forced_relogins"])
    table = next(d.value for d in at.dataframe if "identity" in d.value.columns)
    assert len(table) == s["identities"]
    assert table["drill_down"].str.startswith("./identity?identity=").all()
    at.segmented_control(key="kind").set_value("identified").run()
    assert tiles(clean(at))["Sessions"].value == fmt_int(demo["identified_chains"])


def test_identity_page_matches_the_chains_command(app, demo):
    chains = demo["chains"]
    at = clean(app(demo["db"], "identity", identity=demo["who"]))
    assert at.selectbox(key="identity").value == demo["who"]
    t = tiles(at)
    assert t["Sessions"].value == fmt_int(len(chains))
    assert t["Refreshes"].value == fmt_int(sum(c["refreshes"] for c in chains))
    ends = Counter(c["end_state"] for c in chains)
    assert t["Forced re-logins"].value == fmt_int(ends["forced_relogin"])
    assert t["Late refreshes"].value == fmt_int(sum(c["late_refreshes"] for c in chains))
    body = text(at)
    assert "Why did this user's session drop?" in body
    if ends["forced_relogin"]:
        assert "forced re-login" in body and "lost its tokens" in body
    # the chain picker lists the identity's chains, oldest first, as the CLI does
    assert at.selectbox(key="chain").options == [c["chain_id"] for c in chains]
    events = next(d.value for d in at.dataframe if "access_fp" in d.value.columns)
    assert events["access_fp"].str.len().le(10).all()


def test_identity_page_shows_a_fork_as_a_branch(app, demo):
    if demo["forked"] is None:
        pytest.skip("this demo seed placed no fork on an identified chain")
    at = clean(app(demo["db"], "identity", identity=demo["forked"]))
    assert tiles(at)["Forks"].value != "0"
    assert "same refresh token" in text(at)
    tree = next(
        c for c in at.get("plotly_chart") if "branch 1" in c.proto.spec
    )  # the default chain is the forked one
    assert "fork" in tree.proto.spec


def test_unknown_identity_says_so(app, demo):
    at = clean(app(demo["db"], "identity", identity="nobody@example.invalid"))
    assert "Unknown identity" in text(at) and "nobody@example.invalid" in text(at)


@pytest.mark.parametrize("who", ["[Session expired](https://evil.example/login) :red[**alert**]", "alice@example.com",
                                 "<b>x</b> $x^2$", "a `tick` and ``two``"])
def test_an_identity_from_the_url_or_the_data_is_shown_as_written(app, demo, who):
    # a name is a code span in the page's markdown: no link (not even an email's mailto), colour, maths or markup
    at = clean(app(demo["db"], "identity", identity=who))
    assert md_literal(who) in text(at)
    fence, inner = re.fullmatch(r"(`+)(.*)\1", md_literal(who)).groups()
    assert fence not in who  # (longer than any run of backticks in the name, so the name cannot end the span)
    assert (inner[1:-1] if len(fence) > 1 else inner) == who


def test_plot_labels_are_escaped_and_shortened():
    assert plot_label("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"
    long = "someone." * 20 + "@example.com"
    assert len(plot_label(long)) == 36 and plot_label(long).endswith("example.com") and "…" in plot_label(long)


def test_no_identity_offers_where_to_start(app, demo):
    at = clean(app(demo["db"], "identity"))
    assert at.selectbox(key="identity").value is None
    assert "Where to start" in text(at)
    start = next(d for d in at.dataframe if d.key == "id-start-table")
    worst = start.value
    assert len(worst) > 0 and worst["forced_relogins"].is_monotonic_decreasing
    # a row click runs a callback that sets the identity (AppTest cannot click a table row: the browser
    # test clicks it); typing an identity into the box does the same
    at.selectbox(key="identity").set_value(worst["identity"].iloc[0]).run()
    clean(at)
    assert tiles(at)["Sessions"].value != "0"


def test_a_row_on_lifetimes_opens_the_drill_down(app, demo):
    at = clean(app(demo["db"], "lifetimes"))
    table = next(d for d in at.dataframe if "identity" in d.value.columns)
    first = table.value["identity"].iloc[0]
    at.session_state["lt-identity-table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    clean(at)
    assert at.title[0].value == PAGES["identity"].title
    assert at.selectbox(key="identity").value == first


def test_refresh_rates_when_most_refreshes_come_past_the_histogram(app, tmp_path):
    # sessions refreshed every 4 hours: the median interval lies in the histogram's open last bar (3 x the access
    # token's lifetime or more), so the tile says "≥ 3h" rather than a number it cannot know (it crashed)
    lines = []
    for user in ("ann", "bob", "cy"):
        prev = None
        for i in range(4):
            t = f"2026-12-03T{i * 4:02d}:00:00Z"
            tok = f"{user}-refresh-token-{i:02d}-xxxxxxxxxxxx"
            b = {"auth_code": f"{user}-code-xxxxxxxxxxxxxxxxx" if prev is None else "",
                 "new_oauth_token": f"{user}-access-token-{i:02d}-xxxxxxxxxxxx", "refresh_token": tok,
                 "old_refresh_token": prev or "", "notification_type": "refresh" if prev else "new"}
            lines.append(json.dumps({"received_at": t, "user_id": user, "body": b}))
            prev = tok
    log = tmp_path / "slow.jsonl"
    log.write_text("\n".join(lines) + "\n")
    store = Store.open(tmp_path / "slow.duckdb")
    ingest(store, [log])
    store.close()
    at = clean(app(tmp_path / "slow.duckdb", "refresh_rates"))
    assert tiles(at)["Median interval"].value == f"≥ {fmt_duration(3 * 3600)}"


def test_a_chart_of_nothing_but_zeros_counts_from_zero():
    fig = go.Figure()
    fig.add_bar(x=[1, 2, 3], y=[0, 0, 0])
    add_rate_line(fig, [1, 2, 3], [0.0, 0.0, float("nan")], "% of refreshes")
    style(fig)
    assert list(fig.layout.yaxis.range) == [0, 1] and list(fig.layout.yaxis2.range) == [0, 100]
    bars = style(go.Figure(go.Bar(x=[0, 0], y=["gap", "retry burst"], orientation="h")))
    assert list(bars.layout.xaxis.range) == [0, 1]
    busy = go.Figure()
    busy.add_bar(x=[1, 2], y=[0, 4])
    assert style(busy).layout.yaxis.range is None  # plotly's own range once anything happened


@pytest.fixture(scope="module")
def untimed(tmp_path_factory) -> Path:
    # bare Tyk bodies (`jq -c .body`): chains, no times; the login's auth code mapped to a user
    root = tmp_path_factory.mktemp("untimed")
    bodies = [{"auth_code": "code-untimed-xxxxxxxxxxxxxxxx", "new_oauth_token": "access-0-xxxxxxxxxxxxxxxxxxxx",
               "refresh_token": "refresh-0-xxxxxxxxxxxxxxxxxxx", "old_refresh_token": "", "notification_type": "new"}]
    for i in range(1, 4):
        bodies.append({"auth_code": "", "new_oauth_token": f"access-{i}-xxxxxxxxxxxxxxxxxxxx",
                       "refresh_token": f"refresh-{i}-xxxxxxxxxxxxxxxxxxx",
                       "old_refresh_token": f"refresh-{i - 1}-xxxxxxxxxxxxxxxxxxx", "notification_type": "refresh"})
    (root / "bodies.jsonl").write_text("".join(json.dumps(b) + "\n" for b in bodies))
    (root / "ids.csv").write_text("auth_code,user\ncode-untimed-xxxxxxxxxxxxxxxx,una@example.com\n")
    store = Store.open(root / "untimed.duckdb")
    ingest(store, [root / "bodies.jsonl"], identities=root / "ids.csv")
    store.close()
    return root / "untimed.duckdb"


@pytest.mark.parametrize("page", (None, "refresh_rates", "orphans", "lifetimes"))
def test_pages_that_need_times_say_the_data_has_none(app, untimed, page):
    at = clean(app(untimed, page))
    assert "No times in the data" in text(at) and "No data yet" not in text(at)
    assert "4 deliveries" in text(at)


def test_an_untimed_chain_opens_in_the_drill_down(app, untimed):
    at = clean(app(untimed, "identity", identity="una@example.com"))
    assert "none with a time" in text(at)
    assert "nothing to place on a timeline" in text(at)
    events = next(d for d in at.dataframe if len(d.value) == 4)
    assert sorted(events.value["type"]) == ["new", "refresh", "refresh", "refresh"]


def test_when_every_record_was_rejected_the_pages_say_so(app, tmp_path):
    log = tmp_path / "other.log"
    log.write_text("server started\nGET /healthz 200\n")
    store = Store.open(tmp_path / "rejected.duckdb")
    ingest(store, [log])
    store.close()
    for page in (None, "refresh_rates"):
        at = clean(app(tmp_path / "rejected.duckdb", page))
        assert "Every record was rejected" in text(at) and "2 records rejected" in text(at)


def test_words_for_counts_and_buckets():
    assert (plural(1, "login"), plural(2, "login"), plural(1, "delivery", "deliveries")) == (
        "1 login", "2 logins", "1 delivery")
    assert plural(1234, "delivery", "deliveries") == "1,234 deliveries"
    assert [buckets(b) for b in ("15 minutes", "1 hour", "1 day", "6 hours")] == [
        "15-minute buckets", "hourly buckets", "daily buckets", "6-hour buckets"]


def test_a_chain_in_the_url_opens_alone_when_an_orphan_and_with_its_identity_otherwise(app, demo):
    store = Store.open(demo["db"], read_only=True)  # (read before the app opens the file)
    try:
        orphan = store.cursor().execute(
            f"SELECT {short_sql('chain_id')} FROM chains WHERE orphan ORDER BY chain_id LIMIT 1").fetchall()[0][0]
        known, who = store.cursor().execute(
            f"SELECT {short_sql('chain_id')}, identity FROM chains WHERE identity IS NOT NULL "
            "ORDER BY chain_id LIMIT 1").fetchall()[0]
    finally:
        store.close()
    at = clean(app(demo["db"], "identity", chain=orphan))
    assert f"Orphan chain {orphan}" in text(at) and f"Events of chain {orphan}" in text(at)
    at = clean(app(demo["db"], "identity", chain=known))
    assert at.selectbox(key="identity").value == who and at.selectbox(key="chain").value == known


def test_a_chart_of_one_moment_spans_an_hour_around_it():
    one = go.Figure()
    one.add_scatter(x=pd.Series(pd.to_datetime(["2026-12-03 09:00"])), y=[1], mode="lines")
    styled = style(one)
    assert [str(t) for t in styled.layout.xaxis.range] == ["2026-12-03 08:30:00", "2026-12-03 09:30:00"]
    assert styled.data[0].mode == "lines+markers"  # a line of one point draws nothing
    two = go.Figure()
    two.add_scatter(x=pd.Series(pd.to_datetime(["2026-12-03 09:00", "2026-12-03 10:00"])), y=[1, 2])
    assert style(two).layout.xaxis.range is None
