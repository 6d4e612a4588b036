"""`tokentrail replay`: a platform export sent to a live receiver, as Tyk would, gives the store the same
events and chains as ingesting that export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from ingest.pipeline import ingest
from ingest.store import Store, key_path
from live.follower import apply_spool
from queries.summary import summary
from tests.live_support import ROOT, SECRET, Upstream, receiver

EXPORTS = ROOT / "tests" / "data" / "exports"


def replay(path, url: str, *args: str) -> tuple[int, dict]:
    env = dict(os.environ, TOKENTRAIL_SHARED_SECRET=SECRET)
    r = subprocess.run([sys.executable, "-m", "tokentrail", "replay", str(path), "--to", url, "--json", *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def test_replay_gives_the_same_lineage_as_ingesting_the_export(tmp_path):
    export = EXPORTS / "loki_query_range.json"  # Loki lists newest first: replay sends in time order
    direct = Store.open(tmp_path / "direct.duckdb")
    ingest(direct, [export])
    live_db = tmp_path / "live.duckdb"
    shutil.copy(key_path(str(direct.path)), key_path(str(live_db)))  # same key: comparable fingerprints

    with receiver(live_db) as rx:
        rc, report = replay(export, rx.url + "/tyk/notify", "--rate", "0")
    assert rc == 0
    assert (report["notifications"], report["delivered"], report["lost"], report["retried"]) == (5, 5, 0, 0)

    live = Store.open(live_db)
    apply_spool(live)
    d, s = summary(direct), summary(live)
    assert (s["events"], s["chains"], s["orphan_chains"], s["forks"]) == (d["events"], d["chains"], d["orphan_chains"], d["forks"])
    q = "SELECT event_id, notification_type, access_token_fp, refresh_token_fp, old_refresh_token_fp FROM events ORDER BY 1"
    assert live.cursor().execute(q).fetchall() == direct.cursor().execute(q).fetchall()
    q = "SELECT count(*) FROM lineage GROUP BY chain_id ORDER BY 1"
    assert live.cursor().execute(q).fetchall() == direct.cursor().execute(q).fetchall()


def test_replay_retries_like_tyk(tmp_path):
    """A non-200 is retried after the wait; the receiver records both deliveries, one event."""
    up = Upstream(script=[500]).start()
    try:
        with receiver(tmp_path / "r.duckdb", "--forward", up.url) as rx:
            rc, report = replay(EXPORTS / "bare_bodies.jsonl", rx.url + "/", "--retry-wait", "0.2", "--rate", "20")
    finally:
        up.stop()
    assert rc == 0
    assert report["retried"] == 1 and report["lost"] == 0
    assert report["statuses"]["500"] == 1 and report["delivered"] == report["notifications"]
    store = Store.open(tmp_path / "r.duckdb")
    apply_spool(store)
    s = summary(store)
    assert s["deliveries"] == report["notifications"] + 1 and s["events"] == report["notifications"]
    assert s["duplicates"] == 1


def test_replay_reports_lost_notifications(tmp_path):
    up = Upstream(default=503).start()
    try:
        with receiver(tmp_path / "l.duckdb", "--forward", up.url) as rx:
            rc, report = replay(EXPORTS / "receiver_plain.jsonl", rx.url + "/", "--retry-wait", "0.05", "--rate", "0")
    finally:
        up.stop()
    assert rc == 1  # something was lost: the exit status says so
    assert report["lost"] == report["notifications"] == 5 and report["delivered"] == 0
    assert report["statuses"] == {"503": 15}  # 3 attempts each
