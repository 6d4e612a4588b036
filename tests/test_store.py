"""How the store lays its columns out on disk: random ids and fingerprints uncompressed (DuckDB's dictionary
analysis of them is slow and gains nothing), everything else compressed; and databases made before that still
open and load."""

from __future__ import annotations

import duckdb
import pytest

from bench.notifications import generate
from ingest.pipeline import ingest
from ingest.store import RANDOM, SCHEMA, Store, StoreError
from tests.helpers import body, load, record


def _sessions(n: int) -> list[dict]:
    rows = []
    for s in range(n):
        rows.append(record(f"2026-12-03T08:{s % 60:02d}:00Z", body("new", f"a0-{s}-xxxxxxxxxxxx", f"r0-{s}-yyyyyyyyyyyy",
                                                                 code=f"c-{s}-zzzzzzzzzzzz"), user_id=f"user{s % 9}"))
        rows.append(record(f"2026-12-03T09:{s % 60:02d}:00Z", body("refresh", f"a1-{s}-xxxxxxxxxxxx",
                                                                 f"r1-{s}-yyyyyyyyyyyy", old=f"r0-{s}-yyyyyyyyyyyy")))
    return rows


def _compression(con, table: str) -> dict[str, set[str]]:
    rows = con.execute(
        "SELECT column_name, compression FROM pragma_storage_info(?) WHERE segment_type <> 'VALIDITY'", [table]
    ).fetchall()
    out: dict[str, set[str]] = {}
    for column, method in rows:
        out.setdefault(column, set()).add(method)
    return out


def test_random_columns_are_stored_uncompressed_and_the_rest_compressed(tmp_path):
    store = Store.open(tmp_path / "t.duckdb")
    load(store, _sessions(3000), name="a-rather-long-export-name-from-some-log-platform.jsonl")
    store.con.execute("CHECKPOINT")
    deliveries, events, lineage = (_compression(store.con, t) for t in ("deliveries", "events", "lineage"))
    for column in ("delivery_id", "event_id"):
        assert deliveries[column] == {"Uncompressed"}, deliveries
    for column in ("event_id", "access_token_fp", "refresh_token_fp"):
        assert events[column] == {"Uncompressed"}, events
    for column in ("event_id", "chain_id"):
        assert lineage[column] == {"Uncompressed"}, lineage
    # one file name on 6,000 rows, two notification types, nine users: not stored 6,000 times over
    assert "Uncompressed" not in deliveries["source"], deliveries
    assert "Uncompressed" not in events["notification_type"], events
    assert "Uncompressed" not in deliveries["identity"], deliveries
    assert store.get_meta("column_compression") == "per column"
    store.close()


def test_a_database_made_before_per_column_compression_is_converted_and_loads(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute(SCHEMA.replace(f" {RANDOM}", " VARCHAR"))  # the layout of schema 1 before it: plain VARCHAR
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.close()

    store = Store.open(path)
    # its tables were made anew (schema 2), with per-column compression: nothing is disabled database-wide
    assert store.get_meta("column_compression") == "per column"
    assert store.con.execute("SELECT current_setting('disabled_compression_methods')").fetchall()[0][0] == ""
    assert store.con.execute(
        "SELECT data_type FROM duckdb_columns() WHERE table_name = 'events' AND column_name = 'event_id'"
    ).fetchall() == [("UHUGEINT",)]
    load(store, _sessions(50))
    chains = store.con.execute("SELECT count(*), sum(events), count(*) FILTER (orphan) FROM chains").fetchall()[0]
    assert chains == (50, 100, 0)
    store.close()


def test_running_out_of_memory_rolls_back_with_a_store_error(tmp_path):
    """Every writer (the command line, the Upload page, the live follower) gets a StoreError that names the
    limit, not DuckDB's own advice to run SQL; the database is as before."""
    src = tmp_path / "n.jsonl"
    generate(src, 50_000, seed=5)
    store = Store.open(tmp_path / "x.duckdb", memory_limit="10MB")
    with pytest.raises(StoreError, match="ran out of memory within its limit of 10MB.*TOKENTRAIL_MEMORY_LIMIT"):
        ingest(store, [src])
    assert store.cursor().execute("SELECT count(*) FROM deliveries").fetchall()[0][0] == 0
    store.close()
