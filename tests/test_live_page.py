"""The Live receiver page: `queries.live` against a store whose every number is known, and the page through
AppTest on it (tiles, table, empty state).

The store is built the way live mode builds it: bodies recorded by `live.recorder.Recorder` with an explicit
receipt time and what the user's service answered (`upstream_status`), then applied by
`live.follower.apply_spool`. An uploaded receiver log sits next to the live data, so every figure also checks
that uploads are not counted as live.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.components import PAGES, fmt_int, fmt_pct
from ingest import fingerprint
from ingest.store import Store
from live.follower import apply_spool
from live.recorder import Recorder
from live.spool import spool_dir_for
from queries import live
from tests.helpers import body, fp, load, record

ROOT = Path(__file__).resolve().parents[1]
BUCKET = timedelta(minutes=5)


def _floor(t: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1)
    return epoch + (t - epoch) // step * step


# Recent enough that the receiver counts as receiving; on a 5-minute boundary so buckets are known exactly.
T0 = _floor(datetime.now(UTC).replace(tzinfo=None), BUCKET) - 2 * BUCKET


def ns(seconds: float) -> int:
    return int((T0.replace(tzinfo=UTC) + timedelta(seconds=seconds)).timestamp() * 1e9)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


NEW = body("new", "live-access-0-abcdefghijklmnop", "live-refresh-0-abcdefghij", code="live-code-0-abcdefgh")
R1 = body(
    "refresh", "live-access-1-abcdefghijklmnop", "live-refresh-1-abcdefghij", "live-refresh-0-abcdefghij"
)
R2 = body(
    "refresh", "live-access-2-abcdefghijklmnop", "live-refresh-2-abcdefghij", "live-refresh-1-abcdefghij"
)
R3 = body(
    "refresh", "live-access-3-abcdefghijklmnop", "live-refresh-3-abcdefghij", "live-refresh-2-abcdefghij"
)
MACHINE = body("new", "live-machine-abcdefghijklmnopqrstu")
BAD = {"notification_type": "revoke", "new_oauth_token": "live-secret-token-abcdefghijkl"}

# (seconds after T0, body, what the user's service answered: 200, another status, 0 = no answer, None = no relay)
DELIVERIES = [
    (0, NEW, 200),
    (60, R1, 200),
    (120, R2, 503),  # refused: Tyk retries 10 s later ...
    (130, R2, 503),  # ... refused again ...
    (140, R2, 200),  # ... and accepted on the third attempt
    (330, R3, 0),  # the service did not answer (timeout)
    (400, MACHINE, None),  # a receiver without --forward
]
EXPECTED = {
    "deliveries": 7,
    "retries": 2,
    "relayed": 6,
    "accepted": 3,
    "refused": 2,
    "no_answer": 1,
    "not_relayed": 1,
    "rejected": 1,
}


def run_async(coro):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def build_live_store(db: Path) -> dict:
    """Upload an old receiver log, then record and apply the live deliveries; returns what the test knows."""
    store = Store.open(db)
    try:
        old = T0 - timedelta(days=2)
        load(store, [record(f"{old:%Y-%m-%dT%H:%M:%S}Z", body("new", "uploaded-access-abcdefghijklmnopqr"))])
        rec = Recorder(spool_dir_for(store.path), store.key)

        async def go():
            for s, b, status in DELIVERIES:
                await rec.record(json.dumps(b).encode(), ns(s), status)
            await rec.record(json.dumps(BAD).encode(), ns(450), None)

        run_async(go())
        rec.close()
        applied = apply_spool(store)
        assert applied is not None and applied.new_deliveries == 7 and applied.rejected == 1
        return {
            "db": db,
            "access_fp": {
                k: fingerprint.text(fp(store, b["new_oauth_token"]))
                for k, b in (("new", NEW), ("r1", R1), ("r2", R2), ("r3", R3), ("machine", MACHINE))
            },
        }
    finally:
        store.close()


@pytest.fixture(scope="module")
def live_db(tmp_path_factory) -> dict:
    return build_live_store(tmp_path_factory.mktemp("live") / "live.duckdb")


@pytest.fixture
def ro_store(live_db):
    s = Store.open(live_db["db"], read_only=True)
    yield s
    s.close()


# -- queries ---------------------------------------------------------------------------------------------------


def test_tiles_count_live_deliveries_by_outcome(ro_store):
    t = live.tiles(ro_store)
    assert {k: t[k] for k in EXPECTED} == EXPECTED
    assert t["live_total"] == 7  # the uploaded delivery is not live
    assert t["rejected_total"] == 1
    assert (t["first_live_at"], t["last_live_at"]) == (at(0), at(400))
    assert t["accepted_rate"] == pytest.approx(3 / 6)
    assert t["failed_rate"] == pytest.approx(3 / 6)


def test_tiles_follow_the_range(ro_store):
    t = live.tiles(ro_store, at(100), at(200))  # R2's three attempts
    assert (t["deliveries"], t["retries"], t["accepted"], t["refused"], t["no_answer"], t["not_relayed"]) == (
        3, 2, 1, 2, 0, 0,
    )  # fmt: skip
    t = live.tiles(ro_store, at(400), at(401))  # the one unrelayed delivery
    assert (t["deliveries"], t["relayed"], t["accepted_rate"]) == (1, 0, None)
    old = live.tiles(ro_store, T0 - timedelta(days=3), T0 - timedelta(days=1))  # the upload only
    assert old["deliveries"] == 0 and old["rejected"] == 0
    assert old["live_total"] == 7  # the extent is all time


def test_series_buckets_add_up(ro_store):
    s = live.series(ro_store, at(0), at(600), "5 minutes")
    assert list(s["bucket"]) == [at(0), at(300)]
    assert list(s["accepted"]) == [3, 0]
    assert list(s["refused"]) == [2, 0]
    assert list(s["no_answer"]) == [0, 1]
    assert list(s["not_relayed"]) == [0, 1]
    assert list(s["deliveries"]) == [5, 2]
    assert s["rejected"].sum() == 0  # applied "now", after this range
    # open range: from the first live delivery to the apply of the rejected body (now), every bucket present
    s = live.series(ro_store, None, None, "5 minutes")
    assert s["bucket"].iloc[0] == at(0)
    assert s["bucket"].diff().dropna().eq(pd.Timedelta(minutes=5)).all()
    assert s[["accepted", "refused", "no_answer", "not_relayed", "rejected"]].sum().to_dict() == {
        "accepted": 3, "refused": 2, "no_answer": 1, "not_relayed": 1, "rejected": 1,
    }  # fmt: skip
    assert s["deliveries"].sum() == 7


def test_recent_is_newest_first_with_short_fingerprints_only(ro_store, live_db):
    r = live.recent(ro_store)
    assert list(r["received_at"]) == [at(s) for s, _, _ in reversed(DELIVERIES)]
    assert list(r["upstream"]) == ["not relayed", "no answer", "200", "503", "503", "200", "200"]
    assert list(r["retry"]) == [False, False, True, True, False, False, False]
    assert list(r["notification_type"]) == [
        "new",
        "refresh",
        "refresh",
        "refresh",
        "refresh",
        "refresh",
        "new",
    ]
    fps = live_db["access_fp"]
    assert list(r["access_fp"]) == [fps[k][:10] for k in ("machine", "r3", "r2", "r2", "r2", "r1", "new")]
    assert (r["event"].str.len() == 10).all()
    assert not r["orphan_chain"].any()  # the live chain starts with its login
    text = r.to_csv()
    for b in (NEW, R1, R2, R3, MACHINE):
        for v in b.values():
            if len(v) > 8:
                assert v not in text
    assert len(live.recent(ro_store, limit=2)) == 2
    assert len(live.recent(ro_store, limit=10_000)) == 7  # capped at MAX_RECENT, never more than asked


def test_rejected_bodies_are_listed_masked(ro_store):
    r = live.recent_rejected(ro_store)
    assert len(r) == 1
    assert "notification_type" in r["reason"][0]
    assert BAD["new_oauth_token"] not in r.to_csv()


def test_spool_snapshot_counts_what_is_not_applied(tmp_path):
    store = Store.open(tmp_path / "s.duckdb")
    try:
        assert not live.spool_snapshot(store).exists
        rec = Recorder(spool_dir_for(store.path), store.key)

        async def go(bodies):
            for b in bodies:
                await rec.record(json.dumps(b).encode(), time.time_ns() - 5_000_000_000, 200)

        run_async(go([NEW, R1, R2]))
        snap = live.spool_snapshot(store)
        assert snap.exists and snap.pending == 3 and snap.applied_at is None
        assert snap.oldest_pending_s is not None and 4 < snap.oldest_pending_s < 60
        assert snap.receiving()
        apply_spool(store)
        snap = live.spool_snapshot(store)
        assert snap.pending == 0 and snap.oldest_pending_s is None and snap.applied_at is not None
        run_async(go([R3]))
        assert live.spool_snapshot(store).pending == 1
        rec.close()
        assert not live.spool_snapshot(store).receiving(time.time() + live.RECEIVING_S + 1)
    finally:
        store.close()


# -- the page through AppTest ------------------------------------------------------------------------------------


@pytest.fixture
def app(dashboard_app):
    def make(db: Path, **params: str) -> AppTest:
        return dashboard_app(db, "live", **params)

    return make


def _clean(page: AppTest) -> None:
    assert not page.exception, [e.value for e in page.exception]
    assert page.title[0].value == "Live receiver"


def test_page_tiles_show_the_numbers(app, live_db):
    page = app(live_db["db"])
    _clean(page)
    t = {m.label: m for m in page.metric}
    assert t["Receiver"].value == "receiving"  # recorded moments ago
    assert t["Live deliveries"].value == fmt_int(EXPECTED["deliveries"])
    assert t["Live deliveries"].delta == "2 Tyk retries · 1 rejected"
    assert t["Accepted by your service"].value == fmt_pct(3 / 6)
    assert t["Accepted by your service"].delta == "2 refused · 1 no answer"
    assert t["Spool lag"].value == "0"  # everything applied
    assert t["Last live delivery"].delta == f"{at(400):%Y-%m-%d %H:%M:%S} UTC"
    assert t["Last live delivery"].value.endswith(" ago")
    recent = next(d.value for d in page.dataframe if "received_at" in d.value.columns)
    assert len(recent) == 7
    assert recent["upstream"].iloc[0] == "not relayed"
    assert "upstream_status" not in recent.columns
    assert any("Rejected live bodies" in e.label for e in page.expander)
    assert len(page.get("plotly_chart")) == 1
    page.run()  # a rerun (auto-refresh tick, widget) stays clean
    _clean(page)


def test_page_with_auto_refresh_renders_in_a_fragment(app, live_db):
    page = app(live_db["db"], refresh="5s")
    _clean(page)
    assert {m.label: m.value for m in page.metric}["Live deliveries"] == "7"


def test_page_range_without_live_data_says_so(app, live_db):
    page = app(
        live_db["db"], range="Absolute range", **{"from": "2020-01-01 00:00", "to": "2020-01-02 00:00"}
    )
    _clean(page)
    assert {m.label: m.value for m in page.metric}["Live deliveries"] == "0"
    assert any("No live deliveries in" in i.value for i in page.info)


def test_page_on_a_store_without_live_data_explains_how_to_start(app, tmp_path):
    db = tmp_path / "plain.duckdb"
    s = Store.open(db)
    load(s, [record("2026-12-01T10:00:00Z", body("new", "uploaded-access-abcdefghijklmnopqr"))])
    s.close()
    page = app(db)
    _clean(page)
    assert not page.metric  # no tiles full of zeros
    text = " ".join(m.value for m in page.markdown)
    assert "Live mode is not running" in text
    code = "\n".join(c.value for c in page.code)
    assert "TOKENTRAIL_SHARED_SECRET=" in code and "tokentrail receive" in code and "--forward" in code
    assert f"TOKENTRAIL_DB={db}" in code
    assert '"oauth_on_keychange_url": "http://<host>:8080/tyk/notify"' in code
    assert "/metrics" in text


def test_page_with_a_spool_but_nothing_received_waits(app, tmp_path):
    db = tmp_path / "waiting.duckdb"
    s = Store.open(db)
    rec = Recorder(spool_dir_for(s.path), s.key)  # a receiver started, Tyk not pointed page it yet
    rec.close()
    s.close()
    page = app(db)
    _clean(page)
    t = {m.label: m.value for m in page.metric}
    assert t["Receiver"] == "idle"  # the receiver opened an empty segment: nothing received
    assert t["Live deliveries"] == "0" and t["Spool lag"] == "0"
    assert any("Waiting for the first delivery" in m.value for m in page.markdown)


# -- in a real browser, with a real receiver relaying to a stand-in service ------------------------------------


@pytest.mark.browser
def test_live_page_follows_a_relaying_receiver(tmp_path, browser):
    """Tyk posts to `tokentrail receive --forward` while the Live page is open with auto-refresh: the tiles reach
    the numbers the stand-in service's answers imply, without a reload; the page is captured."""
    from ingest.demo import write_demo
    from ingest.pipeline import ingest
    from tests.browser_support import (
        VIEWPORT,
        dashboard,
        exceptions,
        full_page_screenshot,
        metric_values,
        settle,
    )
    from tests.live_support import Upstream, notification, receiver

    db = tmp_path / "tokentrail.duckdb"
    paths = write_demo(tmp_path / "logs", days=1, users=8, seed=3, end=datetime.now(UTC))
    s = Store.open(db)
    ingest(s, [p for p in paths if p.suffix != ".csv"])
    s.close()

    # the service accepts all but the 4th delivery (500, which "Tyk" re-sends: then 200) and the 10th (too slow)
    upstream = Upstream(script=[200, 200, 200, 500, 200, 200, 200, 200, 200, -1], hold=2.0).start()
    artifacts = ROOT / "test-artifacts"
    try:
        with (
            dashboard(db, artifacts / "live-page-dashboard.log") as url,
            receiver(db, "--forward", upstream.url, "--forward-timeout", "1") as rx,
        ):
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"{url}/{PAGES['live'].url_path}?refresh=5s")
            page.locator("h1").filter(has_text="Live receiver").first.wait_for(timeout=30_000)
            settle(page)

            bodies = [notification(0, kind="new", tag="pg")] + [
                notification(i, tag="pg") for i in range(1, 21)
            ]
            answers = []
            for i, b in enumerate(bodies):
                answers.append(rx.post(b).status_code)
                if i == 3:  # Tyk retries a non-200 (10 s later in reality)
                    answers.append(rx.post(b).status_code)
            answers.append(rx.post(b'{"notification_type": "revoke"}').status_code)  # relayed, then rejected
            assert answers.count(500) == 1 and answers.count(504) == 1 and len(answers) == 23

            deadline = time.monotonic() + 30
            tiles: dict = {}
            # everything applied: 22 deliveries, and the rejected body (the last line) too
            while time.monotonic() < deadline and (tiles.get("Live deliveries"), tiles.get("Spool lag")) != (
                "22",
                "0",
            ):
                time.sleep(0.5)
                try:
                    tiles = metric_values(page)
                except Exception:  # the tiles are being redrawn
                    continue
            settle(page)
            tiles = metric_values(page)
            assert tiles["Live deliveries"] == "22", tiles
            assert tiles["Accepted by your service"] == fmt_pct(20 / 22), tiles
            assert tiles["Receiver"] == "receiving", tiles
            assert tiles["Spool lag"] == "0", tiles
            deltas = page.locator('[data-testid="stMetricDelta"]').all_inner_texts()
            assert any("1 refused · 1 no answer" in d for d in deltas), deltas
            assert any("1 Tyk retry · 1 rejected" in d for d in deltas), deltas
            assert page.locator('[data-testid="stPlotlyChart"]').count() == 1
            assert not exceptions(page)
            full_page_screenshot(page, artifacts / "screenshots" / "live-receiving.png")
            page.close()
    finally:
        upstream.stop()
