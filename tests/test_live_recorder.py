"""The live receiver's recorder, spool and follower, without HTTP.

* the recorder's fast path (plain Python) must give exactly the stage row the ingest's SQL gives;
* a body the fast path does not take still gets the SQL's verdict (reason, masked excerpt);
* the spool survives a torn last line; the follower applies each line exactly once, whatever happens between.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import fingerprint
from ingest.store import Store
from live.follower import CURSOR_KEY, apply_spool
from live.recorder import Recorder, fast_row
from live.spool import SpoolError, SpoolWriter, segments, spool_dir_for
from queries.summary import summary
from tests.helpers import fp


def run_async(coro):
    """asyncio.run on a thread of its own: the session's Playwright browser keeps an event loop running on the
    main thread, where asyncio.run refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


FIELDS = ("auth_code", "new_oauth_token", "refresh_token", "old_refresh_token", "notification_type")


@pytest.fixture
def recorder(tmp_path):
    rec = Recorder(tmp_path / "r.spool", secrets.token_hex(16))
    yield rec
    rec.close()


def test_the_recorder_never_writes_to_a_temporary_directory(recorder):
    """Its DuckDB parses raw bodies: it must fail rather than offload memory (tokens included) to disk."""
    assert recorder._con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0] == ""


def sql_row(rec: Recorder, body: bytes, received_ns: int) -> dict:
    """The stage row the ingest's SQL makes of this body (the recorder's slow path is that SQL)."""

    class Item:
        pass

    item = Item()
    item.body, item.received_ns, item.upstream_status = body, received_ns, None
    return rec._slow_rows([(1, item)])[0]


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


real_token = st.from_regex(r"[A-Za-z0-9_\-]{20,60}", fullmatch=True)
token = st.one_of(
    real_token,
    real_token,
    real_token,  # mostly real-looking tokens, so that most bodies reach the comparison
    st.none(),
    st.sampled_from(["", " ", "-", "null", "NULL", "None", "N/A", "undefined", "\\N", "  abc  ", "x" * 13 + " ",
                     "é" * 7, " \t x", "ab\u00a0", "\u3000n/a\u2009", "\u2007-", "x\ty"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30),
)
ntype = st.sampled_from(["new", "refresh", "new", "refresh", "REFRESH", "New", " new", "revoke", ""])


@settings(max_examples=300, deadline=None)
@given(values=st.fixed_dictionaries({f: token for f in FIELDS[:4]}), kind=ntype, drop=st.sets(st.sampled_from(FIELDS[:4]), max_size=1))
def test_fast_path_equals_the_ingest_sql(values, kind, drop):
    """For every body the fast path accepts, its row is the SQL's row, field for field."""
    rec = _shared_recorder()
    d = {k: v for k, v in values.items() if k not in drop}
    d["notification_type"] = kind
    raw = json.dumps(d).encode()
    now = time.time_ns()
    fast = fast_row(rec.key, 1, raw, now)
    slow = sql_row(rec, raw, now)
    if fast is None:
        return  # the SQL decides alone; nothing to compare
    assert slow["reason"] is None, f"the fast path accepted what the SQL rejects: {d} ({slow['reason']})"
    for k, v in fast.items():
        assert slow[k] == v, f"{k}: fast {v!r} != sql {slow[k]!r} for {d}"


_REC: list[Recorder] = []


def _shared_recorder() -> Recorder:
    if not _REC:
        import tempfile
        from pathlib import Path

        _REC.append(Recorder(Path(tempfile.mkdtemp()) / "p.spool", secrets.token_hex(16)))
    return _REC[0]


def test_fast_path_takes_the_real_bodies(recorder):
    """Tyk's real bodies (all five keys, empty strings for what is absent) never need the SQL."""
    new = body(auth_code="c" * 43, new_oauth_token="a" * 60, refresh_token="r" * 43, old_refresh_token="",
               notification_type="new")
    refresh = body(auth_code="", new_oauth_token="b" * 60, refresh_token="s" * 43, old_refresh_token="r" * 43,
                   notification_type="refresh")
    creds = body(auth_code="", new_oauth_token="c" * 60, refresh_token="", old_refresh_token="",
                 notification_type="new")
    for raw in (new, refresh, creds):
        assert fast_row(recorder.key, 1, raw, time.time_ns()) is not None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"notification_type": "refresh", "new_oauth_token": "aaaaaaaaaaaaaaaaaaaa"', "invalid JSON"),
        (b'{"notification_type": "revoke", "new_oauth_token": "aaaaaaaaaaaaaaaaaaaa"}', "unknown notification_type"),
        (b'{"notification_type": "refresh", "new_oauth_token": "aaaaaaaaaaaaaaaaaaaaaa"}', "missing token field old_refresh_token"),
        (b'{"notification_type": "new", "new_oauth_token": 42}', "wrong type: new_oauth_token"),
        (b"\xff\xfe{}", "invalid UTF-8"),
        (b"", "empty"),
        (b"[1, 2]", "no Tyk notification"),
    ],
)
def test_bad_bodies_get_the_ingest_reason(recorder, raw, reason):
    receipt = run_async(recorder.record(raw, time.time_ns()))
    assert receipt.reason is not None and reason in receipt.reason


def test_spool_holds_fingerprints_only(tmp_path):
    store = Store.open(tmp_path / "s.duckdb")
    rec = Recorder(spool_dir_for(store.path), store.key)
    secrets_sent = ["A" * 20 + secrets.token_urlsafe(30) for _ in range(3)]
    raw = body(auth_code=secrets_sent[0], new_oauth_token=secrets_sent[1], refresh_token=secrets_sent[2],
               old_refresh_token="", notification_type="new")
    bad = json.dumps({"notification_type": "bogus", "new_oauth_token": secrets_sent[1]}).encode()

    async def go():
        await rec.record(raw, time.time_ns())
        await rec.record(bad, time.time_ns())

    run_async(go())
    rec.close()
    data = b"".join(p.read_bytes() for p in spool_dir_for(store.path).iterdir() if p.is_file())
    for s in secrets_sent:
        assert s.encode() not in data
        assert s[:16].encode() not in data
    line = json.loads(segments(spool_dir_for(store.path))[0].read_text().splitlines()[0])
    assert line["access_token_fp"] == fingerprint.text(fp(store, secrets_sent[1]))


def test_one_receiver_per_spool(tmp_path):
    w = SpoolWriter(tmp_path / "x.spool")
    with pytest.raises(SpoolError, match="already writing"):
        SpoolWriter(tmp_path / "x.spool")
    w.close()
    SpoolWriter(tmp_path / "x.spool").close()  # free again once the first one is gone


def _record_all(rec: Recorder, bodies: list[bytes]) -> None:
    async def go():
        await asyncio.gather(*(rec.record(b, time.time_ns()) for b in bodies))

    run_async(go())


def _chain_bodies(n: int, tag: str) -> list[bytes]:
    out = [body(auth_code=f"code-{tag}-xxxxxxxx", new_oauth_token=f"at-{tag}-0-xxxxxxxxxx",
                refresh_token=f"rt-{tag}-0-xxxxxxxxxx", old_refresh_token="", notification_type="new")]
    for i in range(1, n):
        out.append(body(auth_code="", new_oauth_token=f"at-{tag}-{i}-xxxxxxxxxx", refresh_token=f"rt-{tag}-{i}-xxxxxxxxxx",
                        old_refresh_token=f"rt-{tag}-{i - 1}-xxxxxxxxxx", notification_type="refresh"))
    return out


def test_follower_applies_each_line_once_and_links_chains(tmp_path):
    store = Store.open(tmp_path / "f.duckdb")
    spool = spool_dir_for(store.path)
    rec = Recorder(spool, store.key)
    _record_all(rec, _chain_bodies(10, "a"))
    first = apply_spool(store)
    assert first is not None and first.new_deliveries == 10
    assert apply_spool(store) is None  # nothing new: nothing done
    _record_all(rec, _chain_bodies(10, "a")[3:5])  # Tyk retries of two notifications
    _record_all(rec, _chain_bodies(5, "b"))
    second = apply_spool(store)
    assert second.new_deliveries == 7
    rec.close()
    s = summary(store)
    assert (s["deliveries"], s["events"], s["duplicates"], s["chains"], s["orphan_chains"]) == (17, 15, 2, 2, 0)

    # the cursor commits with the data: forgetting it re-reads the spool, and still nothing doubles
    with store.transaction() as cur:
        cur.execute("DELETE FROM meta WHERE key = ?", [CURSOR_KEY])
    again = apply_spool(store)
    assert again.new_deliveries == 0
    assert summary(store)["deliveries"] == 17


def test_torn_tail_of_a_crashed_receiver_is_skipped(tmp_path):
    store = Store.open(tmp_path / "t.duckdb")
    spool = spool_dir_for(store.path)
    rec = Recorder(spool, store.key)
    _record_all(rec, _chain_bodies(3, "t"))
    rec.close()
    seg = segments(spool)[0]
    with open(seg, "ab") as f:  # a crash in the middle of a write: half a line, never acknowledged
        f.write(b'{"record_no":4,"reason":null,"excerpt":nu')
    assert apply_spool(store).new_deliveries == 3  # the newest segment: wait for the rest of the line
    rec = Recorder(spool, store.key)  # the restarted receiver opens a new segment: the torn line is history
    _record_all(rec, _chain_bodies(2, "u"))
    rec.close()
    assert apply_spool(store).new_deliveries == 2
    assert summary(store)["deliveries"] == 5
    assert len(segments(spool)) == 1  # the applied, closed segment was removed


def test_damaged_line_is_quarantined_and_the_rest_loads(tmp_path):
    store = Store.open(tmp_path / "d.duckdb")
    spool = spool_dir_for(store.path)
    rec = Recorder(spool, store.key)
    _record_all(rec, _chain_bodies(2, "d"))
    seg = rec.writer.segment
    rec.writer.append(b"\x00\x01 not json\n", 1)  # a disk fault in the middle of the spool
    _record_all(rec, _chain_bodies(2, "e"))
    rec.close()
    applied = apply_spool(store)
    assert applied.new_deliveries == 4 and applied.rejected == 1
    reason = store.cursor().execute("SELECT reason FROM quarantine").fetchall()[0][0]
    assert "damaged spool line" in reason and seg.name in reason


def test_uploads_and_live_applies_share_the_one_writer(tmp_path):
    """The dashboard applies the spool on a thread while a user uploads on another: no lock or transaction
    errors, and every delivery of both lands exactly once."""
    import io
    import threading

    from ingest.pipeline import ingest
    from live.follower import Follower
    from tests.helpers import jsonl, record

    store = Store.open(tmp_path / "w.duckdb")
    rec = Recorder(spool_dir_for(store.path), store.key)
    follower = Follower(store, interval=0.05).start()
    errors: list[BaseException] = []

    def upload(k: int) -> None:
        try:
            rows = [record(f"2026-12-03T0{k}:{i:02d}:00Z", json.loads(b)) for i, b in enumerate(_chain_bodies(30, f"up{k}"))]
            ingest(store, [(f"upload{k}.jsonl", io.BytesIO(jsonl(rows)))])
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    uploads = [threading.Thread(target=upload, args=(k,)) for k in range(4)]
    for t in uploads:
        t.start()
    for k in range(10):
        _record_all(rec, _chain_bodies(25, f"live{k}"))
    for t in uploads:
        t.join()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and summary(store)["deliveries"] < 4 * 30 + 10 * 25:
        time.sleep(0.1)
    follower.stop()
    rec.close()
    assert not errors and follower.last_error is None
    s = summary(store)
    assert (s["deliveries"], s["events"], s["chains"], s["orphan_chains"]) == (370, 370, 14, 0)


def test_summary_says_when_live_deliveries_wait_in_the_spool(tmp_path):
    import subprocess
    import sys

    from tests.live_support import ROOT

    db = tmp_path / "n.duckdb"
    from ingest.store import load_key

    rec = Recorder(spool_dir_for(db), load_key(db))  # as the receiver does: the key, never the database
    _record_all(rec, _chain_bodies(3, "n"))
    rec.close()

    def summary_cli() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tokentrail", "summary", "--db", str(db), "--json"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    r = summary_cli()
    assert json.loads(r.stdout)["deliveries"] == 0
    assert "3 live deliveries" in r.stderr and "tokentrail follow" in r.stderr
    store = Store.open(db)
    apply_spool(store)
    store.close()
    r = summary_cli()
    assert json.loads(r.stdout)["deliveries"] == 3 and "live deliveries" not in r.stderr


def test_a_failed_write_is_not_acknowledged_and_its_log_line_is_masked(tmp_path, caplog):
    import logging

    rec = Recorder(tmp_path / "f.spool", secrets.token_hex(16))
    token = "Z" * 8 + secrets.token_urlsafe(24)

    def disk_full(data: bytes, lines: int) -> None:
        raise OSError(f"No space left on device (writing {token})")

    rec.writer.append = disk_full
    raw = body(auth_code="", new_oauth_token=token, refresh_token="", old_refresh_token="", notification_type="new")
    with caplog.at_level(logging.ERROR, logger="tokentrail.receiver"), pytest.raises(OSError):
        run_async(rec.record(raw, time.time_ns()))
    rec.close()
    assert "No space left on device" in caplog.text and "Tyk will retry" in caplog.text
    assert token not in caplog.text
    assert rec.recorded == 0


def test_segments_rotate_and_applied_ones_are_removed(tmp_path):
    store = Store.open(tmp_path / "r.duckdb")
    spool = spool_dir_for(store.path)
    rec = Recorder(spool, store.key, segment_bytes=1500)  # rotates at batch boundaries: every 2 batches here
    for k in range(6):
        _record_all(rec, _chain_bodies(4, f"rot{k}"))
    assert len(segments(spool)) >= 3
    assert apply_spool(store).new_deliveries == 24
    rec.close()
    assert len(segments(spool)) == 1  # only the newest: a receiver may still be writing it
    s = summary(store)
    assert (s["deliveries"], s["chains"], s["orphan_chains"]) == (24, 6, 0)
