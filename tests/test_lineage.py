"""Lineage: golden files (small inputs and their exact expected chains) and re-linking as data arrives."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingest.pipeline import ingest
from queries.summary import chains_for_identity, summary
from tests.helpers import DATA, body, chains_by_label, fp, jsonl, load, record

GOLDEN = sorted((DATA / "golden").glob("*.jsonl"))
SUMMARY_KEYS = ("deliveries", "events", "duplicates", "rejected", "chains", "orphan_chains", "forks", "identities",
                "median_chain_span_s", "forced_relogins", "late_refreshes", "active_chains")


def _labels(path: Path) -> list[str]:
    return sorted({v for line in path.read_text().splitlines() for v in json.loads(line)["body"].values() if v})


@pytest.mark.parametrize("case", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden(store, case):
    expected = json.loads(case.with_suffix(".expected.json").read_text())
    ingest(store, [case])
    got = summary(store)
    assert {k: got[k] for k in SUMMARY_KEYS} == expected["summary"]
    assert chains_by_label(store, _labels(case)) == expected["chains"]


def test_late_parent_adopts_orphan_chain(store):
    child = [record("2026-12-03T10:00:00Z", body("refresh", "T2", "R2", "R1")),
             record("2026-12-03T11:00:00Z", body("refresh", "T3", "R3", "R2"))]
    load(store, child, "part2.jsonl")
    assert (summary(store)["chains"], summary(store)["orphan_chains"]) == (1, 1)
    load(store, [record("2026-12-03T09:00:00Z", body("new", "T1", "R1", code="A1"), user_id="erin")], "part1.jsonl")
    s = summary(store)
    assert (s["chains"], s["orphan_chains"], s["identities"]) == (1, 0, 1)
    [chain] = chains_for_identity(store, "erin")
    assert chain["events"] == 3 and chain["refreshes"] == 2


def test_new_identity_mapping_labels_stored_chains(store):
    load(store, [record("2026-12-03T09:00:00Z", body("new", "T1", "R1", code="CODE-1")),
                 record("2026-12-03T09:40:00Z", body("refresh", "T2", "R2", "R1"))])
    assert summary(store)["identities"] == 0
    load(store, [], identities=b"code,username\nCODE-1,frank@example.com\n")
    assert [c["events"] for c in chains_for_identity(store, "frank@example.com")] == [2]


MAPPINGS = {
    "comma": b"auth_code,user_id\nCODE-1,frank@example.com\n",
    # Excel in a German or French locale: a byte-order mark, semicolons, CRLF, blank lines at the end
    "excel-semicolon": "auth_code;user_id;created\r\nCODE-1;frank@example.com;17.11.2026\r\n\r\n\r\n".encode("utf-8-sig"),
    "excel-sep-hint": b"sep=;\r\nAuth Code;User ID\r\nCODE-1;frank@example.com\r\n",
    "tab, header case": b"Auth_Code\tUser-Name\tteam\nCODE-1\tfrank@example.com\tops\n",
    "pipe, quoted": b'"code"|"sub"\n"CODE-1"|"frank@example.com"\n',
    # PowerShell 5's Export-Csv (without -NoTypeInformation), from a directory that names users by email
    "powershell, email": b'#TYPE System.Management.Automation.PSCustomObject\r\n"Code","Email"\r\n'
                         b'"CODE-1","frank@example.com"\r\n',
}


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_identity_mappings_as_spreadsheets_save_them(store, mapping):
    load(store, [record("2026-12-03T09:00:00Z", body("new", "T1", "R1", code="CODE-1"))])
    report = ingest(store, [], identities=("users.csv", io.BytesIO(MAPPINGS[mapping])))
    r = report.identities
    assert (r.error, r.rows, r.mapped, r.rejected_lines) == (None, 1, 1, [])  # blank lines are not rows
    assert [c["events"] for c in chains_for_identity(store, "frank@example.com")] == [1]


@pytest.mark.parametrize(("encoding", "read_as"), [("utf-8", "utf-8"), ("cp1252", "windows-1252"), ("utf-16", "utf-16")],
                         ids=["utf-8", "excel-csv-windows-1252", "excel-unicode-text"])
def test_identity_mappings_in_the_encodings_spreadsheets_save(store, encoding, read_as):
    # Excel on Windows saves "CSV" in the code page (one byte per umlaut), "Unicode text" as UTF-16 with tabs
    load(store, [record("2026-12-03T09:00:00Z", body("new", "T1", "R1", code="CODE-1"))])
    text = "auth_code;user_id\r\nCODE-1;jürgen.müller@example.de\r\n"
    if encoding == "utf-16":
        text = text.replace(";", "\t")
    report = ingest(store, [], identities=("users.csv", io.BytesIO(text.encode(encoding))))
    assert (report.identities.mapped, report.identities.encoding) == (1, read_as)
    assert [c["events"] for c in chains_for_identity(store, "jürgen.müller@example.de")] == [1]


def test_identity_mapping_rows_without_a_user_are_named_by_their_line(store):
    mapping = b"sep=,\ncode,user\nCODE-1,frank\nCODE-2,\n\nCODE-3,gina\n"
    report = ingest(store, [], identities=("users.csv", io.BytesIO(mapping)))
    assert (report.identities.rows, report.identities.mapped, report.identities.rejected_lines) == (3, 2, [4])


def test_the_later_row_for_a_code_in_one_mapping_wins(store):
    load(store, [record("2026-12-03T09:00:00Z", body("new", "T1", "R1", code="CODE-1"))])
    ingest(store, [], identities=("users.csv", io.BytesIO(b"code,user\nCODE-1,old@example.com\nCODE-1,new@example.com\n")))
    assert [c["events"] for c in chains_for_identity(store, "new@example.com")] == [1]
    assert chains_for_identity(store, "old@example.com") == []


# The same two deliveries in two exports: the receiver's bodies (us, no user) and an access log (ms) whose login
# record names the user. Dropped as a repeat or not, the copy with the user names the chain, in any order.
_BODIES = [record("2026-12-03T09:00:00.123456Z", body("new", "T1", "R1", code="A1")),
           record("2026-12-03T09:40:00.654321Z", body("refresh", "T2", "R2", "R1"))]
_WITH_USER = [record("2026-12-03T09:00:00.123Z", body("new", "T1", "R1", code="A1"), user_id="alice"),
              record("2026-12-03T09:40:00.654Z", body("refresh", "T2", "R2", "R1"))]


@pytest.mark.parametrize("order", ["bodies+user", "user+bodies", "bodies, then user", "user, then bodies"])
def test_a_user_on_either_copy_of_a_delivery_names_the_chain(store, order):
    files = {"bodies": ("bodies.jsonl", _BODIES), "user": ("access.jsonl", _WITH_USER)}
    runs = [[files[k] for k in run.split("+")] for run in order.split(", then ")]
    for run in runs:
        ingest(store, [(name, io.BytesIO(jsonl(records))) for name, records in run])
    s = summary(store)
    assert (s["deliveries"], s["events"], s["identities"]) == (2, 2, 1)
    assert [c["events"] for c in chains_for_identity(store, "alice")] == [2]


def test_a_token_issued_twice_hangs_its_presenter_under_the_earliest_issuer(store):
    # Tyk's refresh tokens are random, so only corrupt or hostile input issues one twice. The earliest issuer
    # is the parent (a `new` event before a refresh at the same time); the other issuer keeps its own chain.
    load(store, [record("2026-12-03T10:00:00Z", body("new", "T1", "R1", code="A1")),
                 record("2026-12-03T09:00:00Z", body("new", "T0", "R1", code="A0")),
                 record("2026-12-03T09:00:00Z", body("refresh", "T5", "R1", "R9")),
                 record("2026-12-03T11:00:00Z", body("refresh", "T2", "R2", "R1")),
                 record("2026-12-03T11:30:00Z", body("refresh", "T3", "R3", "R2"))])
    chains = chains_by_label(store, ["T0", "T1", "T2", "T3", "T5"])
    assert [(c["root"], c["events"], c["orphan"]) for c in chains] == [
        ("T0", ["T0", "T2", "T3"], False), ("T1", ["T1"], False), ("T5", ["T5"], True)]
    assert summary(store)["forks"] == 0


def test_rebuild_numbers_events_correctly_when_row_ids_have_gaps(store, tmp_path):
    # A full rebuild numbers events by row id when those are 0..N-1 (events are only appended); if rows were
    # ever deleted it must fall back to numbering a copy, and give the chains a store without them would give.
    from ingest import lineage
    from ingest.store import Store

    path = DATA / "golden" / "out_of_order_and_late.jsonl"
    ingest(store, [path])
    cur = store.cursor()
    victim = cur.execute(
        "SELECT event_id FROM events WHERE notification_type = 'new' "
        "AND rowid > (SELECT min(rowid) FROM events) AND rowid < (SELECT max(rowid) FROM events) LIMIT 1"
    ).fetchall()[0][0]
    cur.execute("DELETE FROM events WHERE event_id = ?", [victim])
    cur.execute("DELETE FROM deliveries WHERE event_id = ?", [victim])
    assert cur.execute("SELECT max(rowid) - min(rowid) + 1 > count(*) FROM events").fetchall()[0][0]  # a gap
    cur.execute("BEGIN")
    lineage.rebuild(cur)
    cur.execute("COMMIT")

    other = Store.open(":memory:")
    other.key = store.key  # same fingerprints, so event ids compare
    ingest(other, [path])
    oc = other.cursor()
    oc.execute("DELETE FROM events WHERE event_id = ?", [victim])
    oc.execute("CREATE TABLE kept AS SELECT * FROM events")  # a fresh table: row ids without gaps
    oc.execute("DELETE FROM events")
    oc.execute("DROP TABLE events")
    oc.execute("ALTER TABLE kept RENAME TO events")
    oc.execute("BEGIN")
    lineage.rebuild(oc)
    oc.execute("COMMIT")
    query = "SELECT * FROM lineage ORDER BY event_id"
    assert cur.execute(query).fetchall() == oc.execute(query).fetchall()
    assert cur.execute("SELECT * FROM chains ORDER BY chain_id").fetchall() == \
        oc.execute("SELECT * FROM chains ORDER BY chain_id").fetchall()


def test_retries_collapse_into_one_event_with_its_delivery_count(store):
    b = body("refresh", "T2", "R2", "R1")
    load(store, [record(f"2026-12-03T10:00:{s:02d}Z", b, status=500 if s < 20 else 200) for s in (0, 10, 20)])
    row = store.cursor().execute("SELECT deliveries, first_seen FROM events").fetchall()
    assert [(n, t.isoformat()) for n, t in row] == [(3, "2026-12-03T10:00:00")]
    assert summary(store)["duplicates"] == 2


def _times_of_two_exports():
    """Retries of one refresh 10 s apart, as two platforms export them: Elasticsearch with microseconds, Kibana's
    CSV with milliseconds, and a third platform whose ingest clock ran 2 s behind."""
    b = body("refresh", "T2", "R2", "R1")
    us = [record(f"2026-12-03T10:00:{s:02d}.123456Z", b, status=500 if s < 20 else 200) for s in (0, 10, 20)]
    ms = [record(f"2026-12-03T10:00:{s:02d}.123Z", b) for s in (0, 10, 20)]
    late = [record(f"2026-12-03T09:59:{s:02d}.9Z", b) for s in (58,)] + \
           [record(f"2026-12-03T10:00:{s:02d}.9Z", b) for s in (8, 18)]
    return us, ms, late


@pytest.mark.parametrize("together", [False, True], ids=["one-after-the-other", "in-one-run"])
def test_overlapping_exports_at_other_precisions_add_no_delivery(store, together):
    # A delivery is a payload at a time, up to a few seconds: the same record exported by two platforms keeps
    # one delivery, while Tyk's retries (10 s apart) stay three. (The live receiver's rows are exact instead:
    # tests/test_live_receiver.py posts a retry at once and counts two deliveries.)
    us, ms, late = _times_of_two_exports()
    files = [("es.jsonl", us), ("kibana.jsonl", ms), ("other.jsonl", late)]
    if together:
        ingest(store, [(name, io.BytesIO(jsonl(recs))) for name, recs in files])
    else:
        reports = [load(store, recs, name) for name, recs in files]
        assert [r.files[0].new_deliveries for r in reports] == [3, 0, 0]
    s = summary(store)
    assert (s["deliveries"], s["events"], s["duplicates"]) == (3, 1, 2)
    times = [t.isoformat() for (t,) in store.cursor().execute(
        "SELECT received_at FROM deliveries ORDER BY received_at").fetchall()]
    assert times == [f"2026-12-03T10:00:{s:02d}.123456" for s in (0, 10, 20)]  # the first file's


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)], ids=lambda o: "-".join(map(str, o)))
def test_overlapping_exports_count_the_same_in_any_order(store, order):
    # Whichever export comes first keeps its times; the counts do not depend on the order.
    files = _times_of_two_exports()
    for i in order:
        load(store, files[i], f"export-{i}.jsonl")
    s = summary(store)
    assert (s["deliveries"], s["events"], s["duplicates"]) == (3, 1, 2)


@pytest.mark.parametrize("together", [True, False], ids=["one-run", "a-run-each"])
@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1)], ids=lambda o: "-".join(map(str, o)))
def test_copies_that_bridge_a_retry_do_not_merge_it_away(store, order, together):
    # A first attempt (answered 500) and Tyk's retry 10.4 s later, in three exports of one run: the receiver's
    # log (us), Splunk's CSV (whole seconds), Loki's entry times (4.8 s behind). Sorted, no two neighbours are
    # 5 s apart (07.000 07.420 12.180 17.000 17.790 22.560): chained neighbour to neighbour, all six were one
    # delivery and the retry was lost. Each export's own rows 10 s apart are two deliveries, lined up in time
    # order across the exports: two deliveries, the same in every order.
    b = body("refresh", "T2", "R2", "R1")
    exports = [[record("2026-12-03T11:46:07.419501Z", b), record("2026-12-03T11:46:17.794234Z", b)],
               [record("2026-12-03T11:46:07Z", b), record("2026-12-03T11:46:17Z", b)],
               [record("2026-12-03T11:46:12.181879Z", b), record("2026-12-03T11:46:22.556110Z", b)]]
    files = [(f"export-{i}.jsonl", io.BytesIO(jsonl(exports[i]))) for i in order]
    for run in [files] if together else [[f] for f in files]:
        ingest(store, run)
    s = summary(store)
    assert (s["deliveries"], s["events"], s["duplicates"]) == (2, 1, 1)
    # in runs of their own, the exports after the first are matched against every copy read before (stored
    # apart, at their own times): Loki's 12.18 s is 4.8 s from the receiver's copy but 5.2 s from Splunk's
    if not together:
        ingest(store, [(f"export-{i}.jsonl", io.BytesIO(jsonl(exports[i]))) for i in order])  # all again
        assert summary(store)["deliveries"] == 2
    # the first delivery's time, as the first of the exports in the run has it (README: known limits)
    first = store.cursor().execute("SELECT first_seen FROM events").fetchall()[0][0]
    assert first.isoformat() == ["2026-12-03T11:46:07.419501", "2026-12-03T11:46:07", "2026-12-03T11:46:12.181879"][order[0]]


def _lagging_exports(n: int = 12):
    """n refreshes delivered once each (one also retried 10 s later), in two exports: Splunk's CSV in whole
    seconds, and Loki's entry times, the shipper 4.8 s behind. Truncated, the lag is 4.8 to 5.8 s, so half of
    the pairs are more than SAME_DELIVERY_S apart."""
    splunk, loki = [], []
    for i in range(n):
        b = body("refresh", f"T{i + 2}", f"R{i + 2}", f"R{i + 1}")
        at = datetime(2026, 12, 3, 10, 0, 0, 100_000 * (i % 10), tzinfo=UTC) + timedelta(minutes=7 * i)
        times = [at, at + timedelta(seconds=10.3)] if i == 3 else [at]
        splunk += [record(t.replace(microsecond=0).isoformat(), b) for t in times]
        loki += [record((t + timedelta(seconds=4.8)).isoformat(), b) for t in times]
    return splunk, loki


@pytest.mark.parametrize("together", [True, False], ids=["one-run", "a-run-each"])
@pytest.mark.parametrize("first", [0, 1], ids=["splunk-first", "loki-first"])
def test_an_export_on_a_lagging_clock_adds_no_delivery(store, first, together):
    # The lag shows in the events each export holds once: shifted back by it before copies are grouped, the
    # two exports are one set of deliveries (13: twelve, and the one retry), in either order.
    exports = _lagging_exports()
    files = [(f"export-{i}.jsonl", io.BytesIO(jsonl(exports[i]))) for i in (first, 1 - first)]
    for run in [files] if together else [[f] for f in files]:
        ingest(store, run)
    s = summary(store)
    assert (s["deliveries"], s["events"], s["duplicates"]) == (13, 12, 1), s
    # the times kept are the first export's own: the shift is for grouping only
    kept = {t.microsecond for (t,) in store.cursor().execute("SELECT received_at FROM deliveries").fetchall()}
    assert (kept == {0}) == (first == 0), kept


def test_a_lag_that_is_not_steady_is_not_taken_for_a_clock(store):
    # Delays all over the place (a shipper catching up) are no clock: nothing is shifted, and copies more than
    # SAME_DELIVERY_S apart stay apart, as before.
    splunk, loki = _lagging_exports()
    for i, r in enumerate(loki):
        at = datetime.fromisoformat(r["received_at"]) + timedelta(seconds=3 * (i % 4))  # 4.8 to 13.8 s behind
        r["received_at"] = at.isoformat()
    ingest(store, [("splunk.jsonl", io.BytesIO(jsonl(splunk))), ("loki.jsonl", io.BytesIO(jsonl(loki)))])
    assert summary(store)["deliveries"] > 13


def test_reingest_changes_nothing(store, tmp_path):
    path = DATA / "golden" / "basic.jsonl"
    ingest(store, [path])
    before = summary(store), chains_by_label(store, _labels(path))
    report = ingest(store, [path])
    assert report.files[0].new_deliveries == 0 and report.files[0].duplicate_deliveries == 6
    assert (summary(store), chains_by_label(store, _labels(path))) == before


def test_fingerprints_are_keyed(store):
    load(store, [record("2026-12-03T09:00:00Z", body("new", "T1", "R1", code="A1"))])
    stored = store.cursor().execute("SELECT access_token_fp, refresh_token_fp, auth_code_fp FROM events").fetchall()
    assert stored == [(fp(store, "T1"), fp(store, "R1"), fp(store, "A1"))]


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 8, 9, 16, 17, 33])
def test_every_event_of_a_chain_gets_its_root_and_depth(store, depth):
    # The pointer jumping stops once no distance reaches 2^rounds: a chain exactly a power of two deep is where
    # stopping one round early would leave its last event pointing at an ancestor instead of the root.
    records = [record("2026-12-03T00:00:00Z", body("new", "T0", "R0", code="A0"))]
    records += [record(f"2026-12-03T{i // 60:02d}:{i % 60:02d}:30Z", body("refresh", f"T{i}", f"R{i}", f"R{i - 1}"))
                for i in range(1, depth + 1)]
    load(store, records)
    rows = store.cursor().execute(
        "SELECT e.access_token_fp, l.depth, l.chain_id FROM lineage l JOIN events e USING (event_id)").fetchall()
    root = store.cursor().execute("SELECT event_id FROM events WHERE notification_type = 'new'").fetchall()[0][0]
    assert sorted((d, c == root) for _, d, c in rows) == [(i, True) for i in range(depth + 1)]
    assert {a: d for a, d, _ in rows} == {fp(store, f"T{i}"): i for i in range(depth + 1)}


def test_a_long_cycle_is_cut_once_and_its_tail_hangs_under_it(store):
    # Corrupt input: six refreshes each presenting the token the next one issues, plus a tail hanging off the
    # cycle. No chain can be deeper than there are events, which is how the jumping tells a cycle.
    ring = [record(f"2026-12-03T10:0{i}:00Z", body("refresh", f"T{i}", f"R{i}", f"R{(i - 1) % 6}")) for i in range(6)]
    tail = [record("2026-12-03T11:00:00Z", body("refresh", "T9", "R9", "R3"))]
    load(store, ring + tail)
    chains = chains_by_label(store, [f"T{i}" for i in (*range(6), 9)])
    assert [(c["root"], c["events"], c["cycle_broken"]) for c in chains] == \
        [("T0", ["T0", "T1", "T2", "T3", "T4", "T5", "T9"], True)]
    depths = dict(store.cursor().execute("SELECT e.access_token_fp, l.depth FROM lineage l JOIN events e USING (event_id)").fetchall())
    # cut at its earliest event (T0): T1..T5 follow it, T9 hangs under T3
    assert [depths[fp(store, f"T{i}")] for i in (0, 1, 2, 3, 4, 5, 9)] == [0, 1, 2, 3, 4, 5, 4]
