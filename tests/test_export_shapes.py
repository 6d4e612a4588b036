"""The same Tyk story exported by every log platform must give the same summary.

Each file in tests/data/exports/ (see its README.md) is one platform's export shape; expected.json holds a
"default" block and per-file overrides. The CLI is driven exactly as a user drives it, in a subprocess, so
these tests exercise format sniffing, locating the notification, time parsing and lineage end to end.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from ingest.formats import columns_of, records_prefix
from ingest.pipeline import FileReport, rejected_reasons
from tests.helpers import CLI

EXPORTS = Path(__file__).parent / "data" / "exports"
IDENTITIES = EXPORTS / "identities.csv"
NOT_FIXTURES = {"expected.json", "README.md", "identities.csv"}
EXPECTED = json.loads((EXPORTS / "expected.json").read_text(encoding="utf-8"))
FIXTURES = sorted(p for p in EXPORTS.iterdir() if p.is_file() and p.name not in NOT_FIXTURES)
TIME_KEYS = {"first_seen", "last_seen"}
REPORT_KEYS = {"path", "format", "records", "new_deliveries", "duplicate_deliveries", "rejected", "error"}
# The lineage every fixture tells, whatever the platform: the same five notifications.
STORY = {"events": 5, "chains": 3, "orphan_chains": 1, "forks": 0, "identities": 1, "rejected": 0}




def tokentrail(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, (
        f"`{' '.join(proc.args)}` exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


def summary(db: Path, cwd: Path) -> dict:
    return json.loads(ok(tokentrail("summary", "--db", db, "--json", cwd=cwd)).stdout)


def expected_for(fixture: Path) -> dict:
    assert fixture.name in EXPECTED, f"{fixture.name} has no entry in {EXPORTS / 'expected.json'}"
    return {**EXPECTED["default"], **EXPECTED[fixture.name]}


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def same_time(actual: object, expected: str) -> bool:
    """Equal at the precision the expected string carries (an export in ms cannot be compared in µs)."""
    if not isinstance(actual, str):
        return False
    match = re.search(r"\.(\d+)", expected)
    step = 10 ** (6 - min(len(match.group(1)), 6)) if match else 1_000_000
    got = parse_time(actual)
    return got.replace(microsecond=got.microsecond // step * step) == parse_time(expected)


def mismatches(actual: dict, expected: dict) -> list[str]:
    wrong = []
    for key, want in expected.items():
        got = actual.get(key)
        if key in TIME_KEYS and want is not None:
            if not same_time(got, want):
                wrong.append(f"{key}: got {got!r}, expected {want!r}")
        elif got != want:
            wrong.append(f"{key}: got {got!r}, expected {want!r}")
    return wrong


@dataclass
class Ingested:
    db: Path
    work: Path
    summary: dict


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """One plain `tokentrail ingest` per fixture, shared by the tests that only read its result."""
    done: dict[str, Ingested] = {}

    def get(fixture: Path) -> Ingested:
        if fixture.name not in done:
            work = tmp_path_factory.mktemp(re.sub(r"\W", "_", fixture.name))
            db = work / "x.duckdb"
            ok(tokentrail("ingest", fixture, "--db", db, "--identities", IDENTITIES, cwd=work))
            done[fixture.name] = Ingested(db, work, summary(db, work))
        return done[fixture.name]

    return get


def test_every_fixture_has_expectations():
    assert FIXTURES, f"no fixtures found in {EXPORTS}"
    stale = sorted(set(EXPECTED) - {"default"} - {p.name for p in FIXTURES})
    assert not stale, f"expected.json names files that do not exist: {stale}"
    for fixture in FIXTURES:
        expected_for(fixture)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_summary_matches_expected(fixture, ingested):
    result = ingested(fixture)
    wrong = mismatches(result.summary, expected_for(fixture))
    assert not wrong, f"{fixture.name}: " + "; ".join(wrong) + f"\nsummary: {result.summary}"


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_ingesting_twice_changes_nothing(fixture, ingested):
    result = ingested(fixture)
    ok(tokentrail("ingest", fixture, "--db", result.db, "--identities", IDENTITIES, cwd=result.work))
    again = summary(result.db, result.work)
    keys = expected_for(fixture).keys()
    assert {k: again.get(k) for k in keys} == {k: result.summary.get(k) for k in keys}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_ingest_report_names_the_detected_format(fixture, tmp_path):
    db = tmp_path / "x.duckdb"
    proc = ok(tokentrail("ingest", fixture, "--db", db, "--identities", IDENTITIES, "--json", cwd=tmp_path))
    report = json.loads(proc.stdout)
    assert len(report["files"]) == 1, report
    entry = report["files"][0]
    assert entry.keys() >= REPORT_KEYS, f"report entry lacks {REPORT_KEYS - entry.keys()}: {entry}"
    assert fixture.name in str(entry["path"]), entry
    assert isinstance(entry["format"], str) and entry["format"].strip(), entry
    assert entry["error"] is None, entry
    assert entry["rejected"] == 0, entry
    assert entry["new_deliveries"] == expected_for(fixture)["deliveries"], entry


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_format_is_sniffed_from_content_not_name(fixture, tmp_path):
    # Users rename exports ("download (3)", "logs.txt"): the extension must not matter.
    anonymous = tmp_path / "export"
    shutil.copyfile(fixture, anonymous)
    db = tmp_path / "x.duckdb"
    ok(tokentrail("ingest", anonymous, "--db", db, "--identities", IDENTITIES, cwd=tmp_path))
    expected = expected_for(fixture)
    wanted = {k: expected[k] for k in ("deliveries", "events", "chains", "orphan_chains", "rejected")}
    got = summary(db, tmp_path)
    assert {k: got.get(k) for k in wanted} == wanted, f"{fixture.name} renamed to 'export': {got}"


def test_all_exports_together_tell_one_story(tmp_path):
    # Identical payloads collapse into one event whichever platform delivered them, so the union of every
    # export is still five events in three chains.
    db = tmp_path / "x.duckdb"
    ok(tokentrail("ingest", *FIXTURES, "--db", db, "--identities", IDENTITIES, cwd=tmp_path))
    got = summary(db, tmp_path)
    assert {k: got.get(k) for k in STORY} == STORY, got
    assert got["deliveries"] >= max(expected_for(f)["deliveries"] for f in FIXTURES), got
    # Millisecond exports floor the first delivery to .123, microsecond ones say .123456: compare in ms.
    assert same_time(got.get("first_seen"), "2026-12-03T09:00:00.123Z"), got


def test_a_csv_in_browser_time_is_read_in_the_zone_given(tmp_path):
    # Kibana's CSV writes the browser's local time with no zone. Read as UTC by default, and the report says so;
    # --timezone reads it in the zone the browser was in (Tokyo: UTC+9, no summer time).
    kibana = EXPORTS / "kibana_discover.csv"
    utc_db, tokyo_db = tmp_path / "utc.duckdb", tmp_path / "tokyo.duckdb"
    plain = ok(tokentrail("ingest", kibana, "--db", utc_db, cwd=tmp_path))
    assert "6 times without a zone were read as UTC" in plain.stderr
    assert "--timezone" in plain.stderr
    tokyo = ok(tokentrail("ingest", kibana, "--db", tokyo_db, "--timezone", "asia/tokyo", "--json", cwd=tmp_path))
    report = json.loads(tokyo.stdout)
    assert report["timezone"] == "Asia/Tokyo"
    assert report["files"][0]["zoneless_times"] == 6
    assert same_time(summary(utc_db, tmp_path)["first_seen"], "2026-12-03T09:00:00.123Z")
    assert same_time(summary(tokyo_db, tmp_path)["first_seen"], "2026-12-03T00:00:00.123Z")

    bad_db = tmp_path / "bad.duckdb"
    bad = tokentrail("ingest", kibana, "--db", bad_db, "--timezone", "Mars/Olympus", cwd=tmp_path)
    assert bad.returncode == 2
    assert "unknown time zone 'Mars/Olympus'" in bad.stderr and "Traceback" not in bad.stderr
    assert not bad_db.exists()


# -- XML: Splunk's results are read; any other XML is refused by name ------------------------------------------

SPLUNK_XML = EXPORTS / "splunk_web_export.xml"


def test_splunk_xml_streamed_as_several_documents(tmp_path):
    # Splunk's export endpoint (output_mode=xml) streams one <results> document after another, each with its
    # own XML declaration; they are read as one export.
    text = SPLUNK_XML.read_text(encoding="utf-8")
    head, body = text.split("</meta>\n", 1)
    results = re.findall(r"\t<result offset='\d+'>.*?</result>\n", body, flags=re.S)
    assert len(results) == 6
    doc = "".join(f"{head}</meta>\n{''.join(results[i:i + 2])}</results>\n" for i in range(0, 6, 2))
    streamed = tmp_path / "export.xml"
    streamed.write_text(doc, encoding="utf-8")
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", streamed, "--db", db, "--json", cwd=tmp_path)).stdout)
    assert report["files"][0]["format"] == "splunk-xml", report
    got = summary(db, tmp_path)
    assert {k: got.get(k) for k in ("deliveries", "events", "chains", "orphan_chains", "rejected")} == {
        "deliveries": 6, "events": 5, "chains": 3, "orphan_chains": 1, "rejected": 0
    }, got


def test_splunk_xml_cut_short_keeps_the_results_before(tmp_path):
    text = SPLUNK_XML.read_text(encoding="utf-8")
    cut = tmp_path / "cut.xml"
    cut.write_text(text[: text.index("<result offset='3'>") + 40], encoding="utf-8")
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", cut, "--db", db, "--json", cwd=tmp_path)).stdout)
    entry = report["files"][0]
    assert "cut.xml" in str(entry["error"]), entry
    assert summary(db, tmp_path)["deliveries"] == 3


@pytest.mark.parametrize(
    "xml",
    [
        '<?xml version="1.0" encoding="utf-8"?>\n<Events><Event><System><Provider Name="x"/></System>'
        "<EventData><Data>{&quot;notification_type&quot;:&quot;new&quot;}</Data></EventData></Event></Events>\n",
        '<?xml version="1.0"?>\n<!DOCTYPE results [<!ENTITY a "aaaaaaaaaa">]>\n<results>&a;&a;</results>\n',
    ],
    ids=["not-splunk", "dtd"],
)
def test_other_xml_is_refused_by_name(xml, tmp_path):
    path = tmp_path / "events.xml"
    path.write_text(xml, encoding="utf-8")
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", path, "--db", db, "--json", cwd=tmp_path)).stdout)
    entry = report["files"][0]
    error = str(entry["error"] or "")
    assert "events.xml" in error and "xml" in error.lower() and "not a log export" in error, entry
    assert not entry["new_deliveries"], entry


# -- columnar answers: rows are arrays, their names sit beside them ---------------------------------------------

COLUMNAR = [
    # Azure Log Analytics query API: one table per result, each with its own columns
    ('{"tables": [{"name": "PrimaryResult", "columns": [{"name": "TimeGenerated", "type": "datetime"}, '
     '{"name": "Message", "type": "string"}], "rows": [["2026-12-03T09:00:00Z", "{\\"notification_type\\": \\"new\\"}"]]}]}',
     "tables.item.rows.item", ["TimeGenerated", "Message"]),
    # ClickHouse FORMAT JSONCompact
    ('{"meta": [{"name": "received_at", "type": "DateTime64(6)"}, {"name": "body", "type": "String"}], '
     '"data": [["2026-12-03 09:00:00.123456", "{\\"notification_type\\": \\"new\\"}"]], "rows": 1}',
     "data.item", ["received_at", "body"]),
    # OpenSearch SQL / PPL
    ('{"schema": [{"name": "@timestamp", "type": "timestamp"}, {"name": "log", "type": "string"}], '
     '"datarows": [["2026-12-03 09:00:00", "{\\"notification_type\\": \\"new\\"}"]], "total": 1}',
     "datarows.item", ["@timestamp", "log"]),
]


@pytest.mark.parametrize(("doc", "prefix", "names"), COLUMNAR, ids=["azure", "clickhouse", "opensearch-sql"])
def test_columnar_results_are_named_by_their_columns(doc, prefix, names):
    sample = doc.encode()
    assert records_prefix(sample) == prefix
    assert columns_of(sample, prefix) == (names, False)


@pytest.mark.parametrize(
    ("doc", "prefix", "names", "by_column"),
    [
        # ES|QL: rows beside their column list
        (b'{"columns": [{"name": "@timestamp"}, {"name": "message"}], "values": [["2026-12-03T09:00:00Z", '
         b'"{\\"notification_type\\": \\"new\\"}"]]}', "values.item", ["@timestamp", "message"], False),
        # Splunk json_cols: `columns` holds the data, `fields` the names
        (b'{"fields": ["_time", "_raw"], "columns": [["2026-12-03T09:00:00Z"], '
         b'["{\\"notification_type\\": \\"new\\"}"]]}', "columns.item", ["_time", "_raw"], True),
        # a Grafana data frame: names in schema.fields, columns in data.values
        (b'[{"schema": {"fields": [{"name": "Time"}, {"name": "Line"}]}, "data": {"values": [[1796288400123], '
         b'["{\\"notification_type\\": \\"new\\"}"]]}}]', "item.data.values.item", ["Time", "Line"], True),
        # ES|QL and Elasticsearch SQL asked for `columnar`: the same `values`, one array per column
        (b'{"columns": [{"name": "@timestamp", "type": "date"}, {"name": "message", "type": "text"}], "values": '
         b'[["2026-12-03T09:00:00Z", "2026-12-03T09:00:01Z", "2026-12-03T09:00:02Z"], ["{\\"notification_type\\": '
         b'\\"new\\"}", "{\\"notification_type\\": \\"refresh\\"}", "{\\"notification_type\\": \\"new\\"}"]]}',
         "values.item", ["@timestamp", "message"], True),
        (b'{"columns": [{"name": "@timestamp", "type": "datetime"}, {"name": "message", "type": "text"}], '
         b'"values": [["2026-12-03T09:00:00Z"], ["{\\"notification_type\\": \\"new\\"}"]]}',
         "values.item", ["@timestamp", "message"], True),
        # ... while rows hold one value per column
        (b'{"columns": [{"name": "@timestamp"}, {"name": "message"}], "values": [["2026-12-03T09:00:00Z", '
         b'"{\\"notification_type\\": \\"new\\"}"], ["2026-12-03T09:00:01Z", null], ["2026-12-03T09:00:02Z", '
         b'"{\\"notification_type\\": \\"refresh\\"}"]]}', "values.item", ["@timestamp", "message"], False),
    ],
    ids=["esql-rows", "splunk-json-cols", "grafana-frame", "esql-columnar", "es-sql-columnar", "esql-3-rows"],
)
def test_rows_and_columns_are_told_apart(doc, prefix, names, by_column):
    assert records_prefix(doc) == prefix
    assert columns_of(doc, prefix) == (names, by_column)


# Answers whose column names are Tyk's fields (`... | KEEP body.*`, `SELECT body.auth_code ...`): the names hold the
# notification markers, but the records are the rows that follow them.
NAMED_BY_TYK_FIELDS = [
    # Elasticsearch SQL, format=json
    (b'{"columns": [{"name": "@timestamp", "type": "datetime"}, {"name": "body.notification_type", "type": '
     b'"keyword"}, {"name": "body.new_oauth_token", "type": "keyword"}], "rows": [["2026-12-03T09:00:00.123Z", '
     b'"new", "T1"]]}', "rows.item", {"@timestamp": "2026-12-03T09:00:00.123Z", "body.notification_type": "new",
                                     "body.new_oauth_token": "T1"}),
    # ES|QL: columns and values
    (b'{"took": 3, "columns": [{"name": "@timestamp", "type": "date"}, {"name": "body.notification_type", '
     b'"type": "keyword"}], "values": [["2026-12-03T09:00:00.123Z", "new"]]}', "values.item",
     {"@timestamp": "2026-12-03T09:00:00.123Z", "body.notification_type": "new"}),
    # Splunk output_mode=json: fields listed first, results are objects
    (b'{"preview": false, "init_offset": 0, "messages": [], "fields": [{"name": "_time"}, {"name": '
     b'"body.notification_type"}], "results": [{"_time": "2026-12-03T09:00:00.123+00:00", '
     b'"body.notification_type": "new"}]}', "results.item", None),
    # Splunk output_mode=json_rows: fields as plain strings
    (b'{"preview": false, "init_offset": 0, "messages": [], "fields": ["_time", "body.notification_type"], '
     b'"rows": [["2026-12-03T09:00:00.123+00:00", "new"]]}', "rows.item",
     {"_time": "2026-12-03T09:00:00.123+00:00", "body.notification_type": "new"}),
]


@pytest.mark.parametrize(("doc", "prefix", "row"), NAMED_BY_TYK_FIELDS,
                         ids=["es-sql", "esql", "splunk-json", "splunk-json-rows"])
def test_columns_named_like_tyk_fields_are_not_the_records(doc, prefix, row):
    assert records_prefix(doc) == prefix
    if row is not None:
        names, by_column = columns_of(doc, prefix)
        assert (dict(zip(names, json.loads(doc)[prefix.split(".")[0]][0], strict=True)), by_column) == (row, False)


def test_an_es_sql_answer_of_flattened_fields_loads(tmp_path):
    # POST _sql?format=json {"query": "SELECT \"@timestamp\", user_id, body.* FROM \"tyk-hook-*\""}
    rows = [["2026-12-03T09:00:00.123Z", "alice", "new", "A1", "T1", "R1", None],
            ["2026-12-03T09:40:00.654Z", None, "refresh", "", "T2", "R2", "R1"]]
    names = ["@timestamp", "user_id", "body.notification_type", "body.auth_code", "body.new_oauth_token",
             "body.refresh_token", "body.old_refresh_token"]
    doc = {"columns": [{"name": n, "type": "datetime" if n == "@timestamp" else "keyword"} for n in names],
           "rows": rows, "cursor": "sDXF1ZXJ5QW5kRmV0Y2gBAAAAAAAAAA"}
    path = tmp_path / "sql.json"
    path.write_text(json.dumps(doc))
    db = tmp_path / "x.duckdb"
    ok(tokentrail("ingest", path, "--db", db, cwd=tmp_path))
    got = summary(db, tmp_path)
    assert {k: got[k] for k in ("deliveries", "events", "chains", "rejected", "identities")} == \
        {"deliveries": 2, "events": 2, "chains": 1, "rejected": 0, "identities": 1}, got


def test_rows_without_a_column_list_stay_as_they_are():
    # Loki's [timestamp, line] pairs: `stream` labels are not columns
    loki = (b'{"status": "success", "data": {"resultType": "streams", "result": [{"stream": {"app": "hook"}, '
            b'"values": [["1796288400123456789", "{\\"notification_type\\": \\"new\\"}"]]}]}}')
    prefix = records_prefix(loki)
    assert prefix == "data.result.item.values.item"
    assert columns_of(loki, prefix)[0] is None
    # Elasticsearch's `fields` is an object of one-item lists, not a list of names
    es = b'{"hits": {"hits": [{"_id": "1", "fields": {"body.notification_type": ["new"]}}]}}'
    assert columns_of(es, records_prefix(es))[0] is None


# -- archives and encodings: the same exports, packed or encoded as people hand them over -----------------------

def _story_of(db: Path, cwd: Path) -> dict:
    got = summary(db, cwd)
    return {k: got.get(k) for k in ("deliveries", "events", "chains", "orphan_chains", "rejected", "untimed")}


STORY_OF_SIX = {"deliveries": 6, "events": 5, "chains": 3, "orphan_chains": 1, "rejected": 0, "untimed": 0}


def _add(archive, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1796288400
    archive.addfile(info, io.BytesIO(data))


def test_a_tar_gz_of_a_log_directory_loads_every_log_and_skips_the_rest(tmp_path):
    # `tar czf hook-logs.tar.gz /var/log/tyk-hook/`: logrotate's current file, an older one compressed, a README
    lines = (EXPORTS / "receiver_plain.jsonl").read_bytes().splitlines(keepends=True)
    packed = tmp_path / "hook-logs.tar.gz"
    with tarfile.open(packed, "w:gz") as archive:
        _add(archive, "tyk-hook/README.txt", b"\x89PNG\r\n\x1a\n not a log")
        _add(archive, "tyk-hook/hook.log.1.gz", gzip.compress(b"".join(lines[:3]), mtime=0))
        _add(archive, "tyk-hook/hook.log", b"".join(lines[3:]))
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", packed, "--db", db, "--json", cwd=tmp_path)).stdout)
    by_member = {f["path"].rpartition("!")[2]: f for f in report["files"]}
    assert by_member["tyk-hook/README.txt"]["format"] == "skipped", report
    assert by_member["tyk-hook/hook.log.1.gz"]["format"] == "tar.gz/gzip/jsonl", report
    assert by_member["tyk-hook/hook.log"]["format"] == "tar.gz/jsonl", report
    assert by_member["tyk-hook/hook.log.1.gz"]["records"] == 3 and by_member["tyk-hook/hook.log"]["records"] == len(lines) - 3
    assert _story_of(db, tmp_path) == STORY_OF_SIX


README = b"Receiver logs of tyk-hook, exported 2026-12-04 by ops.\n\nQuestions: ops@example.com\n"
MANIFEST = b'{"exported_by": "ops", "files": ["hook.log"], "range": ["2026-12-03", "2026-12-04"]}\n'


@pytest.mark.parametrize("packing", ["zip", "tar.gz"])
def test_a_readme_or_manifest_beside_the_logs_is_skipped_not_quarantined(packing, tmp_path):
    # Text with no Tyk field name anywhere in it cannot hold a notification: in an archive it is a member beside
    # the logs, skipped. A member that does name the fields but breaks is still a log: its bad line is quarantined.
    log = (EXPORTS / "receiver_plain.jsonl").read_bytes()
    broken = b'{"received_at": "2026-12-03T09:00:00Z", "body": {"notification_type": "new", "auth_code": \n'
    members = {"README.txt": README, "manifest.json": MANIFEST, "hook.log": log, "hook-broken.log": broken}
    packed = tmp_path / f"logs.{packing}"
    if packing == "zip":
        with zipfile.ZipFile(packed, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    else:
        with tarfile.open(packed, "w:gz") as archive:
            for name, data in members.items():
                _add(archive, name, data)
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", packed, "--db", db, "--json", cwd=tmp_path)).stdout)
    by_member = {f["path"].rpartition("!")[2]: f for f in report["files"]}
    assert by_member["README.txt"]["format"] == by_member["manifest.json"]["format"] == "skipped", report
    assert (by_member["README.txt"]["rejected"], by_member["manifest.json"]["rejected"]) == (0, 0)
    # the report says why a member was skipped, and why the broken member's record was rejected
    assert by_member["README.txt"]["note"] == "skipped: not a log export: no Tyk notification in it (a README or a manifest?)"
    assert by_member["manifest.json"]["note"].startswith("skipped: not a log export"), report
    assert by_member["hook.log"]["note"] is None, report
    assert by_member["hook-broken.log"]["rejected"] == 1, report
    assert list(by_member["hook-broken.log"]["rejected_reasons"].values()) == [1], report
    assert "truncated" in next(iter(by_member["hook-broken.log"]["rejected_reasons"])), report
    assert _story_of(db, tmp_path) == {**STORY_OF_SIX, "rejected": 1}
    proc = ok(tokentrail("ingest", packed, "--db", tmp_path / "y.duckdb", cwd=tmp_path))
    assert f"logs.{packing}!README.txt: skipped: not a log export" in proc.stderr, proc.stderr


def test_a_receiver_log_with_other_lines_says_what_was_rejected_and_why(tmp_path):
    # A receiver's own log holds lines about other things beside the notifications: they are rejected (they are
    # not notifications) and kept, and the report counts them by reason, so "4 rejected" is not a mystery.
    body = json.loads((EXPORTS / "receiver_plain.jsonl").read_text().splitlines()[0])["body"]
    lines = [
        "2026-12-03T08:59:00Z INFO listening on :8080",
        "2026-12-03T08:59:30Z INFO GET /healthz 200 0.4ms",
        f"2026-12-03T09:00:00Z INFO tyk notification {json.dumps(body)}",
        "2026-12-03T09:00:30Z INFO GET /healthz 200 0.3ms",
        f"2026-12-03T09:01:00Z INFO tyk notification {json.dumps(body)[:120]}",
    ]
    log = tmp_path / "hook.log"
    log.write_text("\n".join(lines) + "\n")
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", log, "--db", db, "--json", cwd=tmp_path)).stdout)["files"][0]
    assert (report["records"], report["new_deliveries"], report["rejected"]) == (5, 1, 4), report
    reasons = list(report["rejected_reasons"].items())
    assert reasons[0] == ("no Tyk notification found in the record", 3), reasons  # most frequent first
    assert reasons[1][1] == 1 and "truncated" in reasons[1][0], reasons
    proc = ok(tokentrail("ingest", log, "--db", tmp_path / "y.duckdb", cwd=tmp_path))
    assert ("hook.log: 4 records rejected. 3: no Tyk notification found in the record (other log lines?); 1: invalid"
            in proc.stderr), proc.stderr


def test_the_report_names_the_three_most_frequent_reasons_and_counts_the_rest():
    report = FileReport(path="hook.log", rejected_reasons={"a": 8, "b": 4, "c": 2, "d": 3, "e": 1})
    assert rejected_reasons(report) == "8: a; 4: b; 2: c; 4 for 2 other reasons"
    report.rejected_reasons.pop("e")
    assert rejected_reasons(report).endswith("; 3 for 1 other reason")


def test_a_readme_on_its_own_is_still_read_line_by_line(tmp_path):
    # Outside an archive a file is what the user asked to load: every line that is not a notification is kept
    # in the quarantine with its line number, as any bad record is.
    readme = tmp_path / "README.txt"
    readme.write_bytes(README)
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", readme, "--db", db, "--json", cwd=tmp_path)).stdout)
    assert report["files"][0]["records"] == report["files"][0]["rejected"] == 3, report  # the blank line too


def test_a_zip_holding_only_a_readme_is_one_clear_error(tmp_path):
    packed = tmp_path / "logs.zip"
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("README.txt", README)
    db = tmp_path / "x.duckdb"
    proc = ok(tokentrail("ingest", packed, "--db", db, cwd=tmp_path))
    assert "logs.zip!README.txt: not a log export: no Tyk notification in it" in proc.stderr


def test_a_tar_without_a_log_is_one_clear_error(tmp_path):
    packed = tmp_path / "bundle.tar"
    with tarfile.open(packed, "w") as archive:
        _add(archive, "screenshot.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", packed, "--db", db, "--json", cwd=tmp_path)).stdout)
    errors = [f["error"] for f in report["files"] if f["error"]]
    assert len(errors) == 1 and "bundle.tar" in errors[0] and "no log export" in errors[0], report


@pytest.mark.parametrize("name", ["receiver_plain.jsonl", "kibana_discover.csv", "elasticsearch_search.json"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_exports_read_like_their_utf8_original(name, encoding, tmp_path):
    # Windows PowerShell's `>` writes UTF-16 with a byte order mark ("utf-16"); some tools write it without one
    original = EXPORTS / name
    recoded = tmp_path / name
    recoded.write_bytes(original.read_text(encoding="utf-8").encode(encoding))
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", recoded, "--db", db, "--json", cwd=tmp_path)).stdout)
    assert report["files"][0]["format"].startswith("utf-16/"), report
    expected = expected_for(original)
    got = summary(db, tmp_path)
    assert not mismatches(got, {k: expected[k] for k in ("deliveries", "events", "chains", "first_seen", "last_seen")}), got


def test_excel_delimiter_hint_line(tmp_path):
    # A CSV saved by a European Excel: semicolons, and the `sep=;` line it writes or expects first
    rows = list(csv.reader(io.StringIO((EXPORTS / "kibana_discover_noescape.csv").read_text(encoding="utf-8"))))
    out = io.StringIO()
    out.write("sep=;\r\n")
    csv.writer(out, delimiter=";").writerows(rows)
    saved = tmp_path / "export.csv"
    saved.write_text(out.getvalue(), encoding="utf-8")
    db = tmp_path / "x.duckdb"
    ok(tokentrail("ingest", saved, "--db", db, cwd=tmp_path))
    assert _story_of(db, tmp_path) == STORY_OF_SIX


def test_a_yaml_document_that_does_not_parse_is_quarantined_by_its_line(tmp_path):
    text = (EXPORTS / "gcloud_logging_read.yaml").read_text(encoding="utf-8")
    starts = [i for i, line in enumerate(text.splitlines(), 1) if line == "---"]
    docs = text.split("---\n")[1:]
    docs[2] = "jsonPayload: {body: [unclosed\n" + docs[2]  # the third entry breaks
    broken = tmp_path / "logs.yaml"
    broken.write_text("".join("---\n" + d for d in docs), encoding="utf-8")
    db = tmp_path / "x.duckdb"
    ok(tokentrail("ingest", broken, "--db", db, cwd=tmp_path))
    rows = json.loads(ok(tokentrail("quarantine", "--db", db, "--json", cwd=tmp_path)).stdout)
    assert [(r["record_no"], "yaml" in r["reason"].lower()) for r in rows] == [(starts[2] + 1, True)], rows
    assert summary(db, tmp_path)["deliveries"] == 5


def test_filter_log_events_as_aws_cli_yaml(tmp_path):
    # `aws logs filter-log-events --output yaml` (or `output = yaml` in ~/.aws/config): one document, the events a
    # list under `events:`, long messages folded. Each event is a record, numbered by the line it starts on.
    import yaml

    lines = (EXPORTS / "receiver_plain.jsonl").read_text().splitlines()
    events = [{"logStreamName": "2026/12/03/[$LATEST]3f1c9e7a", "timestamp": 1796288400123 + i,
               "message": line, "ingestionTime": 1796288400999 + i, "eventId": f"3800000000000000000000{i:04d}"}
              for i, line in enumerate(lines)]
    events[2]["message"] = "START RequestId: 6b1f Version: $LATEST"
    doc = yaml.safe_dump({"events": events, "searchedLogStreams": []}, width=80, sort_keys=False)
    path = tmp_path / "events.yaml"
    path.write_text(doc)
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", path, "--db", db, "--json", cwd=tmp_path)).stdout)
    assert (report["files"][0]["format"], report["files"][0]["records"]) == ("yaml", len(lines)), report
    rows = json.loads(ok(tokentrail("quarantine", "--db", db, "--json", cwd=tmp_path)).stdout)
    starts = [n for n, line in enumerate(doc.splitlines(), 1) if line.startswith("- ")]
    assert [r["record_no"] for r in rows] == [starts[2]], rows  # the third event's first line
    assert summary(db, tmp_path)["deliveries"] == len(lines) - 1


def test_get_log_events_as_aws_cli_text(tmp_path):
    # `aws logs get-log-events --output text`: EVENTS, ingestionTime, message, timestamp (no eventId or stream)
    source = EXPORTS / "cloudwatch_get_log_events.json"
    events = json.loads(source.read_text(encoding="utf-8"))["events"]
    lines = [f"EVENTS\t{e['ingestionTime']}\t{e['message'].rstrip()}\t{e['timestamp']}\n" for e in events]
    text = tmp_path / "events.txt"
    text.write_text("".join(lines) + "NEXTBACKWARDTOKEN\tb/123\nNEXTFORWARDTOKEN\tf/456\n", encoding="utf-8")
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", text, "--db", db, "--identities", IDENTITIES, "--json",
                                      cwd=tmp_path)).stdout)
    assert report["files"][0]["format"] == "aws-text" and report["files"][0]["records"] == len(events), report
    expected = expected_for(source)
    assert not mismatches(summary(db, tmp_path), expected)


def test_aws_cli_text_with_a_line_that_is_not_utf8(tmp_path):
    lines = (EXPORTS / "cloudwatch_filter_log_events.txt").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"tyk oauth notification", b"tyk oauth notification \xff\xfe")
    text = tmp_path / "events.txt"
    text.write_bytes(b"".join(lines))
    db = tmp_path / "x.duckdb"
    ok(tokentrail("ingest", text, "--db", db, cwd=tmp_path))
    rows = json.loads(ok(tokentrail("quarantine", "--db", db, "--json", cwd=tmp_path)).stdout)
    assert [(r["record_no"], "utf-8" in r["reason"].lower()) for r in rows] == [(2, True)], rows
    assert summary(db, tmp_path)["deliveries"] == 5


def _journal_export(entries: list[dict[str, bytes]]) -> bytes:
    """`journalctl -o export`: KEY=value lines; a value with a newline (or not UTF-8) framed as binary."""
    out = b""
    for entry in entries:
        for key, value in entry.items():
            if b"\n" in value or not _utf8(value):
                out += key.encode() + b"\n" + len(value).to_bytes(8, "little") + value + b"\n"
            else:
                out += key.encode() + b"=" + value + b"\n"
        out += b"\n"
    return out


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_a_journal_export_cut_off_in_a_binary_field_keeps_the_entries_before(tmp_path):
    records = [json.loads(line) for line in (EXPORTS / "journald_json.jsonl").read_text().splitlines()]
    entries = [{k: v.encode() for k, v in r.items() if k in ("__CURSOR", "__REALTIME_TIMESTAMP", "MESSAGE")}
               for r in records[:3]]
    for entry in entries[1:]:  # messages logged on two lines: binary fields
        entry["MESSAGE"] = entry["MESSAGE"].replace(b" body=", b"\nbody=")
    entries[1]["_HOSTNAME"] = b"hook-\xff1"  # not UTF-8: binary too; outside the message it does not matter
    whole = _journal_export(entries)
    cut = whole[: whole.rindex(b"MESSAGE\n") + len(b"MESSAGE\n") + 8 + 20]  # inside the third entry's message
    cut_entry_line = whole[: whole.rindex(b"__CURSOR=")].count(b"\n") + 1  # the file's line, as sed counts
    log = tmp_path / "journal.export"
    log.write_bytes(cut)
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", log, "--db", db, "--json", cwd=tmp_path)).stdout)["files"][0]
    assert report["format"] == "journal-export", report
    assert (report["records"], report["new_deliveries"], report["rejected"]) == (3, 2, 1), report
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT record_no, reason FROM quarantine ORDER BY record_no").fetchall()
    assert [r[0] for r in rows] == [cut_entry_line], rows
    assert "cut off" in rows[0][1], rows


def test_a_zipped_cloudwatch_s3_export_reads_its_gzip_members(tmp_path):
    # CloudWatch's export to S3 is a folder: a permission check file, and one 000000.gz per log stream. Zipped
    # up, each member is itself compressed: it is read as gzip, not skipped as binary.
    lines = gzip.decompress((EXPORTS / "cloudwatch_s3_export_000000.gz").read_bytes()).splitlines(keepends=True)
    packed = tmp_path / "export.zip"
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("exportTask/aws-logs-write-test", b"Permission Check Successful")
        archive.writestr("exportTask/stream-a/000000.gz", gzip.compress(b"".join(lines[:3]), mtime=0))
        archive.writestr("exportTask/stream-b/000000.gz", gzip.compress(b"".join(lines[3:]), mtime=0))
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", packed, "--db", db, "--json", cwd=tmp_path)).stdout)
    formats = {f["path"].rpartition("!")[2]: f["format"] for f in report["files"]}
    assert formats == {"exportTask/aws-logs-write-test": "skipped", "exportTask/stream-a/000000.gz": "zip/gzip/text",
                       "exportTask/stream-b/000000.gz": "zip/gzip/text"}, report
    assert summary(db, tmp_path)["deliveries"] == expected_for(EXPORTS / "cloudwatch_s3_export_000000.gz")["deliveries"]


def test_a_zip_holding_no_log_is_one_clear_error(tmp_path):
    packed = tmp_path / "export.zip"
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("README.txt", README)
        archive.writestr("screenshot.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    proc = ok(tokentrail("ingest", packed, "--db", tmp_path / "x.duckdb", cwd=tmp_path))
    assert "export.zip: the zip archive holds no log export" in proc.stderr, proc.stderr


@pytest.mark.parametrize("fixture", ["elasticsearch_scroll_pages.json", "loki_query_range.json"])
def test_answers_one_per_line_are_read_whole(fixture, tmp_path):
    # `curl ... ; echo` page after page writes each answer compact, on a line of its own. The lines parse as
    # JSON Lines would, but each holds a list of records: read as one record a line, all but the first
    # notification of each page were lost, silently.
    text = (EXPORTS / fixture).read_text()
    decoder, docs, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        doc, at = decoder.raw_decode(text, at)
        docs.append(doc)
        while at < len(text) and text[at].isspace():
            at += 1
    if len(docs) == 1:  # one answer: split its streams into pages of their own
        streams = docs[0]["data"]["result"]
        docs = [{**docs[0], "data": {**docs[0]["data"], "result": [s]}} for s in streams]
    assert len(docs) >= 2
    compact = tmp_path / "pages.json"
    compact.write_text("".join(json.dumps(d, separators=(",", ":")) + "\n" for d in docs))
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", compact, "--db", db, "--json", cwd=tmp_path)).stdout)
    assert report["files"][0]["format"] == "json-stream", report
    want = expected_for(EXPORTS / fixture)
    got = summary(db, tmp_path)
    assert {k: got[k] for k in ("deliveries", "events", "rejected")} == \
        {k: want[k] for k in ("deliveries", "events", "rejected")}, got


def test_continuation_lines_without_a_notification_keep_text_line_by_line(tmp_path):
    # A stack trace under an error line continues that line, but holds no notification: the file is still read a
    # line at a time (each trace line kept in the quarantine, as before), not gathered into multi-line records.
    log = (EXPORTS / "receiver_text.log").read_text().splitlines(keepends=True)
    trace = ["2026-12-03T10:30:00.000Z ERROR handler failed\n", "Traceback (most recent call last):\n",
             '  File "hook.py", line 12, in notify\n', "ValueError: boom\n"]
    path = tmp_path / "hook.log"
    path.write_text("".join(log[:2] + trace + log[2:]))
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", path, "--db", db, "--json", cwd=tmp_path)).stdout)["files"][0]
    assert report["format"] == "text", report
    assert (report["records"], report["rejected"]) == (len(log) + 4, 4), report


def test_a_csv_saved_again_by_excel_is_read_in_its_code_page(tmp_path):
    # Opened and saved in Excel on Windows, a CSV export is in Windows-1252: `amélie` in one byte a letter. Read
    # as UTF-8, her login row was quarantined and her chain lost its identity.
    text = (EXPORTS / "datadog_explorer.csv").read_text(encoding="utf-8").replace("alice", "amélie")
    path = tmp_path / "export.csv"
    path.write_bytes(text.encode("cp1252"))
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", path, "--db", db, "--json", cwd=tmp_path)).stdout)["files"][0]
    assert (report["format"], report["rejected"]) == ("windows-1252/csv", 0), report
    chains = json.loads(ok(tokentrail("chains", "--identity", "amélie", "--db", db, "--json", cwd=tmp_path)).stdout)
    assert len(chains) == 1, chains


def test_a_utf8_csv_with_one_bad_row_still_quarantines_that_row(tmp_path):
    lines = (EXPORTS / "datadog_explorer.csv").read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"tyk", b"tyk \xe9\xff", 1)
    path = tmp_path / "export.csv"
    path.write_bytes(b"".join(lines))
    report = json.loads(ok(tokentrail("ingest", path, "--db", tmp_path / "x.duckdb", "--json", cwd=tmp_path)).stdout)
    assert (report["files"][0]["format"], report["files"][0]["rejected"]) == ("csv", 1), report


@pytest.mark.parametrize("rule", [True, False], ids=["es-sql-txt", "opensearch-ppl-raw"])
def test_the_header_of_a_text_table_is_not_a_rejected_record(rule, tmp_path):
    # Elasticsearch SQL's `format=txt` (names between pipes, a rule of dashes) and OpenSearch PPL's raw format
    # (names between pipes): the header is not a record, so nothing is rejected.
    rows = [line.split(" ", 1) for line in (EXPORTS / "receiver_text.log").read_text().splitlines()]
    width = max(len(m) for _, m in rows)
    lines = [f"{'@timestamp':^24}|{'message':^{width}}"] + (["-" * 24 + "+" + "-" * width] if rule else [])
    lines += [f"{t:<24}|{m:<{width}}" for t, m in rows]
    path = tmp_path / "answer.txt"
    path.write_text("\n".join(lines) + "\n")
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", path, "--db", db, "--json", cwd=tmp_path)).stdout)["files"][0]
    assert (report["rejected"], report["new_deliveries"]) == (0, len(rows)), report


def test_json_lines_after_a_line_of_text_stay_records_of_their_own(tmp_path):
    # A receiver's log that starts with a text line and goes on in JSON Lines: each JSON line is a record, not
    # the continuation of the first (read as one multi-line record, all but one notification were lost).
    lines = (EXPORTS / "receiver_plain.jsonl").read_text().splitlines(keepends=True)
    path = tmp_path / "hook.log"
    path.write_text("2026-12-03T08:59:00Z INFO listening on :8080\n" + "".join(lines))
    report = json.loads(ok(tokentrail("ingest", path, "--db", tmp_path / "x.duckdb", "--json", cwd=tmp_path)).stdout)
    entry = report["files"][0]
    assert (entry["format"], entry["records"], entry["new_deliveries"], entry["rejected"]) == \
        ("text", len(lines) + 1, len(lines), 1), entry


def test_powershell_export_csv_with_its_type_line(tmp_path):
    # Windows PowerShell 5's Export-Csv writes `#TYPE <the object's type>` before the header unless told not to
    text = (EXPORTS / "datadog_explorer.csv").read_text(encoding="utf-8")
    path = tmp_path / "export.csv"
    path.write_text("#TYPE System.Management.Automation.PSCustomObject\n" + text)
    report = json.loads(ok(tokentrail("ingest", path, "--db", tmp_path / "x.duckdb", "--json", cwd=tmp_path)).stdout)
    entry = report["files"][0]
    assert (entry["format"], entry["rejected"]) == ("csv", 0), entry
    assert entry["new_deliveries"] == expected_for(EXPORTS / "datadog_explorer.csv")["deliveries"], entry


def test_splunk_csv_of_fields_extracted_twice(tmp_path):
    # Splunk extracting a JSON event at index time and again at search time (INDEXED_EXTRACTIONS and KV_MODE both
    # json) has every field twice; its CSV export joins a field's values with a newline: `new\nnew`.
    records = [json.loads(line) for line in (EXPORTS / "receiver_plain.jsonl").read_text().splitlines()]
    fields = ["received_at", "user_id", *(f"body.{k}" for k in records[0]["body"])]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["_time", *fields, "_raw"])
    for r in records:
        values = [r.get("received_at"), r.get("user_id") or r.get("username"), *r["body"].values()]
        w.writerow([r["received_at"], *("\n".join([v, v]) if v else "" for v in values), json.dumps(r)])
    path = tmp_path / "splunk.csv"
    path.write_text(out.getvalue())
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", path, "--db", db, "--json", cwd=tmp_path)).stdout)["files"][0]
    assert (report["rejected"], report["new_deliveries"]) == (0, len(records)), report
    assert _story_of(db, tmp_path) == STORY_OF_SIX


def test_two_records_on_one_line_are_kept_aside_not_cut_to_one(tmp_path):
    # `cat a.jsonl b.jsonl` where a.jsonl does not end with a line break: one line holds two records. Reading
    # the first and dropping the second went unnoticed; the line is quarantined with what happened.
    lines = (EXPORTS / "receiver_plain.jsonl").read_text().splitlines()
    joined = lines[:4] + [lines[4] + lines[5]]
    path = tmp_path / "joined.jsonl"
    path.write_text("\n".join(joined) + "\n")
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", path, "--db", db, "--json", cwd=tmp_path)).stdout)["files"][0]
    assert (report["format"], report["records"], report["new_deliveries"], report["rejected"]) == ("jsonl", 5, 4, 1)
    rows = json.loads(ok(tokentrail("quarantine", "--db", db, "--json", cwd=tmp_path)).stdout)
    assert [(r["record_no"], r["reason"].split(":")[0]) for r in rows] == [(5, "two records on one line")], rows


def test_a_csv_row_that_lost_its_closing_quote_is_kept_aside_with_the_row_it_swallowed(tmp_path):
    # A hand edit deleted the closing quote of a message: the CSV reader runs that cell on into the next row. Read
    # as one record its first notification loaded and the next row's was lost without a word; now the merged
    # row (both notifications, in its excerpt) is quarantined and every other row loads.
    lines = (EXPORTS / "kibana_discover.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    broken = lines[3].rstrip("\r\n")
    assert broken.endswith('"')
    lines[3] = broken[:-1] + "\n"
    path = tmp_path / "discover.csv"
    path.write_text("".join(lines), encoding="utf-8")
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", path, "--db", db, "--json", cwd=tmp_path)).stdout)["files"][0]
    rows = len(lines) - 1
    assert (report["records"], report["rejected"], report["new_deliveries"]) == (rows - 1, 1, rows - 2), report
    [row] = json.loads(ok(tokentrail("quarantine", "--db", db, "--json", cwd=tmp_path)).stdout)
    assert row["record_no"] == 4 and "quote" in row["reason"], row


@pytest.mark.parametrize("joint", ["", "\n"], ids=["back-to-back", "a-line-apart"])
def test_json_arrays_joined_with_cat_all_load(joint, tmp_path):
    # `cat` of two exports that are each one JSON array (gcloud logging read --format=json): `][` or `]\n[`
    records = json.loads((EXPORTS / "gcloud_logging_read.json").read_text())
    path = tmp_path / "joined.json"
    path.write_text(json.dumps(records[:3], indent=2) + joint + json.dumps(records[3:], indent=2))
    db = tmp_path / "x.duckdb"
    report = json.loads(ok(tokentrail("ingest", path, "--db", db, "--json", cwd=tmp_path)).stdout)["files"][0]
    assert (report["error"], report["records"], report["rejected"]) == (None, len(records), 0), report
    assert summary(db, tmp_path)["deliveries"] == expected_for(EXPORTS / "gcloud_logging_read.json")["deliveries"]


def test_a_hole_of_nul_bytes_is_not_taken_for_binary_data(tmp_path):
    # A crash while the log was written leaves a run of NUL bytes where a line was: the records around it load
    lines = (EXPORTS / "receiver_plain.jsonl").read_bytes().splitlines(keepends=True)
    path = tmp_path / "hook.log"
    path.write_bytes(b"".join(lines[:2]) + b"\x00" * 4096 + b"".join(lines[2:]))
    report = json.loads(ok(tokentrail("ingest", path, "--db", tmp_path / "x.duckdb", "--json", cwd=tmp_path)).stdout)
    entry = report["files"][0]
    assert (entry["error"], entry["new_deliveries"], entry["rejected"]) == (None, len(lines), 0), entry


def test_an_empty_last_page_is_no_record(tmp_path):
    # `aws logs filter-log-events` page by page with --next-token: the last page often holds no events
    page = tmp_path / "page9.json"
    page.write_text(json.dumps({"events": [], "searchedLogStreams": []}, indent=4))
    report = json.loads(ok(tokentrail("ingest", page, "--db", tmp_path / "x.duckdb", "--json", cwd=tmp_path)).stdout)
    assert (report["files"][0]["records"], report["files"][0]["rejected"], report["files"][0]["error"]) == (0, 0, None)
