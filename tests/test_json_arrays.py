"""A JSON array of records (`gcloud logging read --format=json`, Grafana's JSON download, `jq -s`) is split into
its items by a scan of its bytes (`ingest.formats._read_nested_items`), not parsed item by item. The scan must
find exactly the items a JSON parser finds, wherever the reads cut the file and whatever the strings hold;
a broken document still loads what comes before the break, and says where it broke."""

from __future__ import annotations

import io
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import formats
from ingest.pipeline import ingest
from ingest.store import Store
from tests.helpers import DATA, body, record

# Strings with everything that could fool a byte scan: quotes, runs of backslashes, brackets, commas, non-ASCII.
_TRICKY = st.text(alphabet=st.sampled_from(list('ab"\\,[]{}: \n\té€😀')), max_size=12)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=8,
)
_ITEMS = st.lists(st.dictionaries(_TRICKY, _VALUES, max_size=4), max_size=12)


def _split(doc: bytes, chunk: int) -> list[tuple[int, object]]:
    tables = list(formats._read_nested_items("t.json", io.BytesIO(doc), [], False))
    return [(n, json.loads(raw)) for t in tables
            for n, raw in zip(t.column("record_no").to_pylist(), t.column("raw").to_pylist(), strict=True)]


@settings(max_examples=200, deadline=None)
@given(_ITEMS, st.sampled_from([None, 0, 2]), st.booleans(), st.integers(1, 64))
def test_the_items_are_what_a_json_parser_finds_however_the_file_is_cut(items, indent, ascii_only, chunk):
    doc = json.dumps(items, indent=indent, ensure_ascii=ascii_only).encode()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(formats, "CHUNK_BYTES", chunk)  # reads of a few bytes: every cut lands somewhere odd
        assert _split(doc, chunk) == list(enumerate(items, start=1))


@pytest.mark.parametrize("doc", [b"[]", b" \n[ ]\n", b"\xef\xbb\xbf[]"])
def test_an_empty_array_has_no_records(doc):
    assert _split(doc, 3) == []


def _notifications() -> list[dict]:
    return [record("2026-12-03T09:00:00Z", body("new", "T1", "R1", code="A1")),
            record("2026-12-03T09:30:00Z", body("refresh", "T2", "R2", "R1")),
            record("2026-12-03T10:00:00Z", body("refresh", "T3", "R3", "R2"))]


def _load(doc: bytes, name: str = "export.json"):
    store = Store.open(":memory:")
    report = ingest(store, [(name, io.BytesIO(doc))])
    return store, report.files[0]


def test_a_pretty_printed_array_loads_like_json_lines():
    store, report = _load(json.dumps(_notifications(), indent=2).encode())
    assert (report.format, report.records, report.new_deliveries, report.rejected, report.error) == \
        ("json-array", 3, 3, 0, None)
    assert store.cursor().execute("SELECT count(*) FROM chains").fetchall() == [(1,)]


def test_an_item_that_is_not_valid_json_is_quarantined_and_the_rest_loads():
    # past the first megabyte, which the format is sniffed from (a bad item inside it makes the file read as text)
    logins = [json.dumps(record(f"2026-12-03T09:{i // 60 % 60:02d}:{i % 60:02d}Z", body("new", f"T{i}")))
              for i in range(7000)]
    bad = '{"received_at": "2026-12-03T11:00:00Z", "body": {"auth_code": tru}}'
    doc = ("[\n" + ",\n".join([*logins, bad, *(json.dumps(r) for r in _notifications())]) + "\n]\n").encode()
    assert doc.index(b"tru}") > formats.SAMPLE_BYTES
    store, report = _load(doc)
    assert (report.format, report.records, report.new_deliveries, report.rejected, report.error) == \
        ("json-array", 7004, 7003, 1, None)
    assert store.cursor().execute("SELECT record_no, reason FROM quarantine").fetchall()[0][0] == 7001


@pytest.mark.parametrize(("cut", "problem", "loaded"), [
    (lambda d: d[: d.rindex(b"},") + 2] + b' {"received_at": "2026-12-03T10:00:00Z", "bo', "ends inside the array", 2),
    (lambda d: d + b'\n{"more": 1}\n', "data after the array", 3),
])
def test_a_broken_array_loads_what_comes_before_and_names_the_file(cut, problem, loaded):
    store, report = _load(cut(json.dumps(_notifications(), indent=2).encode()), name="gcloud-export.json")
    assert report.error.startswith("gcloud-export.json: invalid JSON after record")
    assert problem in report.error
    assert report.new_deliveries == loaded


@pytest.mark.parametrize(("sample", "split"), [
    (b'[{"a": 1}]', True),
    (b'\xef\xbb\xbf \n[\n  {\n "a": 1}]', True),
    (b'[[{"field": "@message", "value": "x"}]]', False),  # rows of field/value pairs: parsed, then named
    (b'["a line", "another"]', False),
    (b'{"hits": [{"a": 1}]}', False),
])
def test_only_arrays_of_objects_are_split_by_the_scan(sample, split):
    assert formats._array_of_objects(sample) is split


@pytest.mark.parametrize("indent", [2, None])
@pytest.mark.parametrize("bad", [0, 2])
def test_a_redacted_value_in_the_first_megabyte_costs_only_its_own_record(bad, indent):
    # The format is sniffed from the first megabyte: an item there that is not valid JSON once made the whole
    # file read as text lines, so a pretty-printed array lost every record (each line quarantined on its own).
    logins = [record(f"2026-12-03T09:0{i}:00Z", body("new", f"T{i}", f"R{i}", code=f"A{i}")) for i in range(5)]
    items = [json.dumps(r, indent=indent) for r in logins]
    items[bad] = items[bad].replace(f'"A{bad}"', "<redacted>")
    store, report = _load(("[\n" + ",\n".join(items) + "\n]\n").encode())
    assert (report.format, report.records, report.new_deliveries, report.rejected, report.error) == \
        ("json-array", 5, 4, 1, None)
    ((record_no, reason),) = store.cursor().execute("SELECT record_no, reason FROM quarantine").fetchall()
    assert record_no == bad + 1
    # where in the record, by line when the record has lines; not "truncated": the break is in its middle
    assert reason.startswith("invalid JSON: Expecting value at " + ("line 4, column 18" if indent else "column"))
    assert "truncated" not in reason


@pytest.mark.parametrize("text", [
    b'[{"a": 1}] and then a log line\n[{"b": 2}] another\n',  # text lines that happen to start like an array
    b'[{"a": 1}}] oops\n',  # a bracket closes what never opened
])
def test_text_that_only_starts_like_an_array_is_not_split_as_one(text):
    assert formats.sniff("x.log", text) == "text"


def test_a_redacted_value_in_a_pretty_document_costs_only_its_own_record():
    # Read as text, each line of a pretty-printed Elasticsearch answer was a record of its own: with one
    # redacted value, all 350 lines were quarantined and nothing loaded.
    doc = (DATA / "exports" / "elasticsearch_search.json").read_text(encoding="utf-8")
    broken = doc.replace('"auth_code" : "WNEQ', '"auth_code" : <redacted>, "x" : "WNEQ', 1)
    assert broken != doc
    store, report = _load(broken.encode(), name="es.json")
    assert (report.format, report.records, report.new_deliveries, report.rejected, report.error) == \
        ("json-object", 6, 5, 1, None)


def test_a_document_that_breaks_loads_its_records_up_to_the_break_and_never_quotes_the_text(tmp_path, monkeypatch):
    # Shapes the scan does not take (Loki's arrays of arrays, columnar answers) are parsed (ijson), which stops
    # at a break. The parser's own message quotes the text around the error, an auth code here: it is left out
    # of the report and of the database file.
    monkeypatch.setattr(formats, "_records_keys", lambda sample, prefix: None)  # this answer, parsed
    doc = (DATA / "exports" / "elasticsearch_search.json").read_text(encoding="utf-8")
    broken = doc.replace('"auth_code" : "WNEQ', '"auth_code" : <redacted>, "x" : "WNEQ', 1)
    path = tmp_path / "es.json"
    path.write_text(broken, encoding="utf-8")
    db = tmp_path / "x.duckdb"
    store = Store.open(db)
    report = ingest(store, [path]).files[0]
    store.close()
    assert (report.format, report.new_deliveries, report.rejected) == ("json-object", 5, 0)
    assert report.error.startswith(f"{path}: invalid JSON after record 5 (lexical error")
    code = re.search(r'"WNEQ\w+', doc).group(0)[1:]
    assert code[:8] not in report.error
    assert code[:8].encode() not in db.read_bytes()


# -- records inside a document: Elasticsearch `hits.hits`, CloudWatch `events`, Datadog `data` ------------------

_ENVELOPE = st.dictionaries(_TRICKY.filter(lambda k: k not in ("hits", "events")), _VALUES, max_size=3)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_ENVELOPE, _ITEMS, _ENVELOPE), min_size=1, max_size=3), st.sampled_from([None, 2]),
       st.integers(1, 64))
def test_the_records_of_a_document_are_what_a_json_parser_finds(pages, indent, chunk):
    # each page: some keys, then hits.hits, then more keys (CloudWatch puts `searchedLogStreams` after `events`)
    docs = [json.dumps({**before, "hits": {"total": len(items), "hits": items}, **after}, indent=indent,
                       ensure_ascii=False) for before, items, after in pages]
    doc = "\n".join(docs).encode()
    want = [item for _, items, _ in pages for item in items]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(formats, "CHUNK_BYTES", chunk)
        tables = list(formats._read_nested_items("t.json", io.BytesIO(doc), ["hits", "hits"], len(pages) > 1))
    got = [(n, json.loads(raw)) for t in tables
           for n, raw in zip(t.column("record_no").to_pylist(), t.column("raw").to_pylist(), strict=True)]
    assert got == list(enumerate(want, start=1))


def _es(records: list[dict]) -> dict:
    return {"took": 3, "timed_out": False, "hits": {"total": {"value": len(records)}, "max_score": None,
                                                     "hits": [{"_index": "logs", "_id": str(i), "_source": r}
                                                              for i, r in enumerate(records)]}}


def test_a_broken_hit_past_the_first_megabyte_is_quarantined_and_the_hits_after_it_load():
    logins = [record(f"2026-12-03T09:{i // 60 % 60:02d}:{i % 60:02d}Z", body("new", f"T{i}")) for i in range(5000)]
    text = json.dumps(_es([*logins, *_notifications()]), indent=2)
    at = text.index('"new_oauth_token": "T4990"')
    text = text[:at] + '"new_oauth_token": <redacted>' + text[at + len('"new_oauth_token": "T4990"'):]
    assert at > formats.SAMPLE_BYTES
    store, report = _load(text.encode(), name="es.json")
    assert (report.format, report.records, report.new_deliveries, report.rejected, report.error) == \
        ("json-object", 5003, 5002, 1, None)
    assert store.cursor().execute("SELECT record_no FROM quarantine").fetchall() == [(4991,)]
    assert store.cursor().execute("SELECT count(*) FROM chains WHERE events = 3").fetchall() == [(1,)]


def test_a_document_cut_short_loads_the_records_before_the_cut():
    text = json.dumps(_es(_notifications()), indent=2)
    store, report = _load(text[: text.rindex('"_index"')].encode(), name="es.json")
    assert report.error == "es.json: invalid JSON after record 2 (the file ends inside the document); " \
                           "the records before it were read"
    assert report.new_deliveries == 2


def test_a_redacted_value_in_a_one_line_document_costs_only_its_own_record():
    # `curl .../_search > export.json` saves the answer on one line: read as text it was one record, quarantined
    doc = json.dumps(json.loads((DATA / "exports" / "elasticsearch_search.json").read_bytes()))
    broken = doc.replace('"auth_code": "WNEQ', '"auth_code": <redacted>, "x": "WNEQ', 1)
    assert broken != doc and "\n" not in broken
    store, report = _load(broken.encode(), name="es.json")
    assert (report.format, report.records, report.new_deliveries, report.rejected, report.error) == \
        ("json-object", 6, 5, 1, None)
