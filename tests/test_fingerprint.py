"""Fingerprints and ids: the SQL and the Python definitions agree, and a database of schema 1 is converted in
place to exactly what loading its inputs afresh gives."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import shutil
from datetime import datetime, timedelta

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import fingerprint
from ingest.normalize import install_macros
from ingest.pipeline import ingest
from ingest.store import SCHEMA_VERSION, Store, StoreError, key_path
from tests.helpers import DATA

NEW_KEY = fingerprint.SCHEME_PREFIX + "0123456789abcdef0123456789abcdef"
OLD_KEY = "fedcba9876543210fedcba9876543210"
V1 = DATA / "v1"


@pytest.fixture(scope="module")
def con():
    c = duckdb.connect()
    install_macros(c)
    yield c
    c.close()


values = st.text(min_size=1, max_size=80)
fps = st.one_of(st.none(), values)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from([NEW_KEY, OLD_KEY]), ntype=st.sampled_from(["new", "refresh"]),
       auth=fps, access=values, refresh=fps, old=fps,
       at=st.one_of(st.none(), st.datetimes(datetime(1990, 1, 1), datetime(2199, 12, 31))))
def test_sql_and_python_give_the_same_fingerprints_and_ids(con, key, ntype, auth, access, refresh, old, at):
    row = con.execute(
        """
        WITH f AS (SELECT tt_fp($k, $a) AS a, tt_fp($k, $x) AS x, tt_fp($k, $r) AS r, tt_fp($k, $o) AS o)
        SELECT a, x, r, o, tt_event_id($t, a, x, r, o) AS e, tt_delivery_id(tt_event_id($t, a, x, r, o), $at::TIMESTAMP)
        FROM f
        """,
        {"k": key, "a": auth, "x": access, "r": refresh, "o": old, "t": ntype, "at": at},
    ).fetchall()[0]
    py = [fingerprint.fp(key, v) for v in (auth, access, refresh, old)]
    event = fingerprint.event_id(ntype, *py)
    us = None if at is None else (at - datetime(1970, 1, 1)) // timedelta(microseconds=1)
    assert list(row) == [*py, event, fingerprint.delivery_id(event, us)]
    assert all(v is None or 0 <= v < 1 << 120 for v in row)
    # the text form goes to the screen, URLs and JSON, and comes back
    assert fingerprint.parse(fingerprint.text(event)) == event
    assert con.execute("SELECT tt_fp_of_text($s)", {"s": fingerprint.text(event)}).fetchall()[0][0] == event
    assert con.execute(f"SELECT {fingerprint.text_sql('$e::UHUGEINT')}", {"e": str(event)}).fetchall()[0][0] == \
        fingerprint.text(event)


def test_a_key_made_before_keeps_its_function_schema_1_fingerprints_as_integers(con):
    # schema 1 stored base64url(SHA-256(key || value)[:9]); a bare key still computes the same 72 bits
    old_text = base64.urlsafe_b64encode(hashlib.sha256((OLD_KEY + "T1").encode()).digest()[:9]).decode()
    as_int = con.execute("SELECT tt_fp_of_text($s)", {"s": old_text}).fetchall()[0][0]
    assert as_int == fingerprint.fp(OLD_KEY, "T1")
    assert fingerprint.fp(NEW_KEY, "T1") != fingerprint.fp(NEW_KEY.removeprefix(fingerprint.SCHEME_PREFIX), "T1")


def test_ids_tell_the_fields_and_the_type_apart():
    a, b = fingerprint.fp(NEW_KEY, "A"), fingerprint.fp(NEW_KEY, "B")
    ids = {
        fingerprint.event_id("refresh", None, a, b, None),
        fingerprint.event_id("refresh", None, a, None, b),
        fingerprint.event_id("refresh", b, a, None, None),
        fingerprint.event_id("new", None, a, b, None),
        fingerprint.event_id("refresh", None, b, a, None),
    }
    assert len(ids) == 5
    e = next(iter(ids))
    assert fingerprint.delivery_id(e, None) not in {fingerprint.delivery_id(e, 0), e}


@pytest.mark.parametrize("bad", ["", "xyz", "0x12", "1" * 31, "12 34", "-1"])
def test_a_text_that_is_not_an_id_parses_to_none(bad):
    assert fingerprint.parse(bad) is None


def test_a_new_database_key_names_its_function(tmp_path):
    store = Store.open(tmp_path / "t.duckdb")
    store.close()
    assert key_path(str(tmp_path / "t.duckdb")).read_text().startswith(fingerprint.SCHEME_PREFIX)
    assert store.key.startswith(fingerprint.SCHEME_PREFIX)


def _v1_copy(tmp_path):
    db = tmp_path / "v1.duckdb"
    with gzip.open(V1 / "v1.duckdb.gz") as src, open(db, "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(V1 / "v1.duckdb.key", key_path(str(db)))
    return db


def _inputs():
    return sorted(p for p in V1.iterdir() if p.name.startswith(("receiver-", "elasticsearch-")))


_TABLES = {
    "deliveries": "delivery_id, event_id, received_at, identity",  # which file a delivery came from: load order
    "events": "event_id, notification_type, auth_code_fp, access_token_fp, refresh_token_fp, old_refresh_token_fp, "
              "first_seen, last_seen, deliveries, identity",
    "quarantine": "quarantine_id, record_no, reason, excerpt",
    "identity_map": "auth_code_fp, identity",
    "lineage": "event_id, parent_id, chain_id, depth, interval_s, refresh_class, forked",
    "chains": "chain_id, orphan, root_type, identity, first_seen, last_seen, events, deliveries, refreshes, forks, "
              "late_refreshes, span_s, lifetime_s, unknown_parent_fp, cycle_broken",
}


def _contents(store: Store) -> dict:
    cur = store.cursor()
    return {t: sorted(cur.execute(f"SELECT {cols} FROM {t}").fetchall(), key=repr) for t, cols in _TABLES.items()}


def test_a_schema_1_database_is_converted_to_what_loading_its_inputs_afresh_gives(tmp_path):
    db = _v1_copy(tmp_path)
    with pytest.raises(StoreError, match="open it once for writing"):
        Store.open(db, read_only=True)
    before = duckdb.connect(str(db), read_only=True)
    counts = {t: before.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in _TABLES}
    before.close()
    assert counts["deliveries"] > 100 and counts["quarantine"] and counts["identity_map"]

    upgraded = Store.open(db)
    assert upgraded.get_meta("schema_version") == SCHEMA_VERSION
    assert not upgraded.key.startswith(fingerprint.SCHEME_PREFIX)  # the key and its function are kept
    got = _contents(upgraded)
    assert {t: len(rows) for t, rows in got.items()} == counts

    # The same inputs, loaded afresh with the same key, give the same rows, ids included.
    fresh_db = tmp_path / "fresh.duckdb"
    shutil.copy(V1 / "v1.duckdb.key", key_path(str(fresh_db)))
    fresh = Store.open(fresh_db)
    ingest(fresh, _inputs(), identities=V1 / "identities.csv")
    ingest(fresh, [DATA / "bad" / "truncated_json.jsonl"])
    want = _contents(fresh)
    for t in _TABLES:
        assert got[t] == want[t], t
    fresh.close()

    # and the converted database goes on: re-loading its inputs adds nothing
    report = ingest(upgraded, _inputs())
    assert sum(f.new_deliveries for f in report.files) == 0
    assert _contents(upgraded) == got
    upgraded.close()


def test_an_interrupted_conversion_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    db = _v1_copy(tmp_path)
    from ingest import lineage

    def boom(*_a, **_k):
        raise RuntimeError("killed")

    monkeypatch.setattr(lineage, "rebuild", boom)
    with pytest.raises(RuntimeError, match="killed"):
        Store.open(db)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [("1",)]
    assert con.execute("SELECT typeof(event_id) FROM events LIMIT 1").fetchall() == [("VARCHAR",)]
    con.close()
    monkeypatch.undo()
    assert Store.open(db).get_meta("schema_version") == SCHEMA_VERSION


def test_a_spool_line_written_before_schema_2_applies_with_the_ids_of_now(tmp_path):
    """A receiver of the version before wrote fingerprints as base64 and ids of its own; its spool, applied
    after the upgrade, gives the fingerprints the store computes and today's ids."""
    from live.follower import apply_spool
    from live.spool import spool_dir_for

    db = tmp_path / "x.duckdb"
    key_path(str(db)).write_text(OLD_KEY + "\n")  # a key file of schema 1: bare digits
    store = Store.open(db)

    def old_fp(v):
        return base64.urlsafe_b64encode(hashlib.sha256((OLD_KEY + v).encode()).digest()[:9]).decode()

    spool = spool_dir_for(db)
    spool.mkdir()
    line = {
        "record_no": 1, "received_at": "2026-12-04T22:05:01.250000Z", "reason": None, "excerpt": None,
        "quarantine_id": None, "notification_type": "refresh", "auth_code_fp": None,
        "access_token_fp": old_fp("T2"), "refresh_token_fp": old_fp("R2"), "old_refresh_token_fp": old_fp("R1"),
        "identity": None, "event_id": "AAAAAAAAAAAA", "delivery_id": "BBBBBBBBBBBB", "upstream_status": None,
    }
    (spool / "00000001-20261204T220501Z.jsonl").write_text(json.dumps(line) + "\n")
    (spool / "00000002-20261204T220502Z.jsonl").write_text("")  # a newer segment: the first one is closed
    applied = apply_spool(store)
    assert applied is not None and applied.new_deliveries == 1

    fps = [fingerprint.fp(store.key, v) for v in ("T2", "R2", "R1")]
    event = fingerprint.event_id("refresh", None, *fps)
    us = (datetime(2026, 12, 4, 22, 5, 1, 250000) - datetime(1970, 1, 1)) // timedelta(microseconds=1)
    cur = store.cursor()
    assert cur.execute("SELECT event_id, access_token_fp, refresh_token_fp, old_refresh_token_fp FROM events").fetchall() \
        == [(event, *fps)]
    assert cur.execute("SELECT delivery_id FROM deliveries").fetchall() == [(fingerprint.delivery_id(event, us),)]
    store.close()
