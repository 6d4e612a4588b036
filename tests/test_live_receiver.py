"""The live receiver over real HTTP on loopback: `tokentrail receive` in a subprocess, posted to like Tyk does.

Every test ends by applying the spool to the store (what the dashboard's writer does) and checking that the
store holds exactly the deliveries that were acknowledged, no more, no fewer.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from ingest.store import Store
from live.follower import apply_spool
from live.spool import segments, spool_dir_for
from queries.summary import summary
from tests.helpers import fp
from tests.live_support import ROOT, SECRET, Upstream, notification, receiver


def test_refuses_to_start_without_a_secret(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "tokentrail", "receive", "--db", str(tmp_path / "x.duckdb")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "no shared secret" in r.stderr and "TOKENTRAIL_SHARED_SECRET" in r.stderr
    # and there is no way to pass it on the command line, where `ps` would show it
    r = subprocess.run([sys.executable, "-m", "tokentrail", "receive", "--secret", "x"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def test_answers_like_tyk_expects_and_records_exactly_what_it_acknowledged(tmp_path):
    db = tmp_path / "live.duckdb"
    with receiver(db) as rx:
        statuses = {}
        statuses["new"] = rx.post(notification(0, kind="new"), path="/tyk/notify").status_code
        statuses["refresh"] = rx.post(notification(1)).status_code
        statuses["retry"] = rx.post(notification(1)).status_code  # Tyk retrying the same notification
        statuses["bad secret"] = rx.post(notification(2), secret="guess").status_code
        statuses["no secret"] = rx.post(notification(3), secret=None).status_code
        statuses["malformed"] = rx.post(b'{"notification_type": "refresh", "new_oauth_token": "abcdefghijklmnopqrst"').status_code
        statuses["not tyk"] = rx.post({"hello": "world"}).status_code
        statuses["too large"] = rx.post(b"{" + b" " * 70_000 + b"}").status_code
        statuses["get"] = httpx.get(rx.url + "/", timeout=5).status_code
        statuses["elsewhere"] = rx.post(notification(4), path="/other").status_code
        health = httpx.get(rx.url + "/healthz", timeout=5)
        m = rx.metrics()
    assert statuses == {"new": 200, "refresh": 200, "retry": 200, "bad secret": 401, "no secret": 401,
                        "malformed": 400, "not tyk": 400, "too large": 413, "get": 405, "elsewhere": 404}
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert m['tokentrail_deliveries_total{status="200"}'] == 3
    assert m['tokentrail_deliveries_total{status="401"}'] == 2
    assert m['tokentrail_deliveries_total{status="400"}'] == 2
    assert m['tokentrail_deliveries_total{status="413"}'] == 1
    assert m["tokentrail_duplicate_deliveries_total"] == 1
    assert m["tokentrail_rejected_deliveries_total"] == 2
    assert m["tokentrail_spool_lag_deliveries"] == 5  # 3 notifications + 2 rejected bodies, none applied yet

    store = Store.open(db)
    applied = apply_spool(store)
    assert applied.deliveries == 5
    s = summary(store)
    assert (s["deliveries"], s["events"], s["duplicates"], s["rejected"], s["chains"]) == (3, 2, 1, 2, 1)
    events = {r[0] for r in store.cursor().execute("SELECT access_token_fp FROM events").fetchall()}
    assert events == {fp(store, notification(0, kind="new")["new_oauth_token"]), fp(store, notification(1)["new_oauth_token"])}
    reasons = sorted(r[0] for r in store.cursor().execute("SELECT reason FROM quarantine").fetchall())
    assert reasons[0].startswith("invalid JSON") and reasons[1] == "no Tyk notification found in the record"
    # the event time is the receipt time
    first, last = store.cursor().execute("SELECT min(received_at), max(received_at) FROM deliveries").fetchall()[0]
    assert (last - first).total_seconds() < 60


def test_metrics_follow_the_store_writer(tmp_path):
    """The store's figures and the spool lag reach /metrics once the writer has applied the spool."""
    db = tmp_path / "m.duckdb"
    with receiver(db) as rx:
        rx.post(notification(10, kind="new", tag="m"))
        for i in range(11, 14):
            rx.post(notification(i, tag="m"))
        rx.post(notification(20, tag="orphan"))  # its parent was never delivered
        assert rx.metrics()["tokentrail_spool_lag_deliveries"] == 5
        store = Store.open(db)
        apply_spool(store)
        m = rx.metrics()
        store.close()
    assert m["tokentrail_spool_lag_deliveries"] == 0 and m["tokentrail_spool_lag_seconds"] == 0
    assert (m["tokentrail_store_events"], m["tokentrail_store_chains"], m["tokentrail_store_orphan_chains"]) == (5, 2, 1)
    assert m["tokentrail_store_forks"] == 0
    assert m["tokentrail_writer_last_apply_timestamp_seconds"] > time.time() - 60


def test_relay_passes_deliveries_on_and_returns_the_services_answer(tmp_path):
    up = Upstream(script=[200, 500, -1], hold=3.0).start()
    db = tmp_path / "relay.duckdb"
    try:
        with receiver(db, "--forward", up.url, "--forward-timeout", "1") as rx:
            ok = rx.post(notification(0, kind="new", tag="r"))
            failed = rx.post(notification(1, tag="r"))
            slow = rx.post(notification(2, tag="r"))
            m = rx.metrics()
        bad = receiver(db, "--forward", "http://127.0.0.1:9/nothing-listens-here")
        with bad as rx:
            unreachable = rx.post(notification(3, tag="r"))
    finally:
        up.stop()
    assert (ok.status_code, failed.status_code, slow.status_code, unreachable.status_code) == (200, 500, 504, 502)
    assert ok.text == "upstream says 200"
    # the user's service got the same body and Tyk's headers
    headers, body = up.received[0]
    assert json.loads(body) == notification(0, kind="new", tag="r")
    assert headers["X-Tyk-Shared-Secret"] == SECRET and headers["User-Agent"] == "Tyk-Gatewy-Notifications"
    assert m['tokentrail_relay_failures_total{reason="status"}'] == 1
    assert m['tokentrail_relay_failures_total{reason="timeout"}'] == 1

    store = Store.open(db)
    apply_spool(store)
    got = dict(store.cursor().execute(
        "SELECT e.access_token_fp, d.upstream_status FROM deliveries d JOIN events e USING (event_id)"
    ).fetchall())
    assert got == {
        fp(store, notification(0, kind="new", tag="r")["new_oauth_token"]): 200,
        fp(store, notification(1, tag="r")["new_oauth_token"]): 500,
        fp(store, notification(2, tag="r")["new_oauth_token"]): 0,  # no answer in time
        fp(store, notification(3, tag="r")["new_oauth_token"]): 0,  # unreachable
    }


def test_a_killed_receiver_loses_nothing_it_acknowledged(tmp_path):
    """SIGKILL while it is being loaded: after a restart, every delivery that got a 200 is in the store."""
    db = tmp_path / "crash.duckdb"
    acked: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    with receiver(db) as rx:
        def load(worker: int) -> None:
            with httpx.Client(timeout=5) as client:
                i = worker
                while not stop.is_set():
                    try:
                        r = client.post(rx.url + "/", content=json.dumps(notification(i, tag="crash")).encode(),
                                        headers={"X-Tyk-Shared-Secret": SECRET})
                    except httpx.HTTPError:
                        return  # the receiver is gone
                    if r.status_code == 200:
                        with lock:
                            acked.append(i)
                    i += 8

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(load, w) for w in range(8)]
            time.sleep(2.0)
            rx.kill()
            stop.set()
            for f in futures:
                f.result()
    assert len(acked) > 100, "the load did not get going before the kill"
    with receiver(db):  # a restart opens a new segment; the old one may end in a torn, unacknowledged line
        pass
    store = Store.open(db)
    apply_spool(store)
    stored = {r[0] for r in store.cursor().execute("SELECT access_token_fp FROM events").fetchall()}
    missing = [i for i in acked if fp(store, notification(i, tag="crash")["new_oauth_token"]) not in stored]
    assert not missing, f"{len(missing)} acknowledged deliveries lost, e.g. {missing[:5]}"
    # nothing was invented either: every stored event is one that was sent
    assert len(stored) >= len(acked)
    assert store.cursor().execute("SELECT count(*) FROM quarantine").fetchall()[0][0] == 0
    assert len(segments(spool_dir_for(db))) >= 1


@pytest.mark.parametrize("path", ["/", "/tyk/notify"])
def test_both_notification_paths(tmp_path, path):
    with receiver(tmp_path / "p.duckdb") as rx:
        assert rx.post(notification(0, kind="new"), path=path).status_code == 200


def test_a_second_receiver_on_the_same_database_is_refused_clearly(tmp_path):
    db = tmp_path / "one.duckdb"
    with receiver(db):
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TOKENTRAIL_SHARED_SECRET": SECRET}
        r = subprocess.run([sys.executable, "-m", "tokentrail", "receive", "--db", str(db), "--port", "0"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "another tokentrail receiver is already writing" in r.stderr and "Traceback" not in r.stderr


def test_the_receiver_logs_a_line_of_activity(tmp_path, caplog):
    """Instead of an access log (too costly at 1,000/s), one line per period with what was answered."""
    import logging
    import secrets

    import uvicorn

    from live.server import ReceiverSettings, create_app
    from tests.browser_support import free_port

    app = create_app(ReceiverSettings(spool=tmp_path / "a.spool", key=secrets.token_hex(16), secret=SECRET,
                                      report_every=0.2))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    with caplog.at_level(logging.INFO, logger="tokentrail.receiver"):
        thread.start()
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(3):
            assert httpx.post(url, json=notification(i, kind="new"), headers={"X-Tyk-Shared-Secret": SECRET}).status_code == 200
        assert httpx.post(url, json={}, headers={"X-Tyk-Shared-Secret": "no"}).status_code == 401
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _answered(caplog) != {"200": 3, "401": 1}:
            time.sleep(0.05)
        server.should_exit = True
        thread.join(20)
    # the four answers may fall into one period's line or spread over two (a slow machine)
    assert _answered(caplog) == {"200": 3, "401": 1}
    lines = [r.message for r in caplog.records if "answered" in r.message]
    assert all(line.startswith("last 0.2s: answered ") for line in lines), lines
    assert lines[-1].endswith("; spool lag 3 deliveries"), lines


def _answered(caplog) -> dict[str, int]:
    """Status -> count, summed over the receiver's activity lines ("last 0.2s: answered 200: 3, 401: 1; ...")."""
    total: dict[str, int] = {}
    for r in caplog.records:
        if "answered" in r.message:
            for status, n in re.findall(r"(\d{3}): (\d+)", r.message.split("answered", 1)[1].split(";")[0]):
                total[status] = total.get(status, 0) + int(n)
    return total
