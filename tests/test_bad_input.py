"""One fixture per kind of bad input (tests/data/bad/), one parametrized test over all of them.

A bad record is quarantined with a reason a person can act on, its neighbours still load, and its tokens
never appear in the clear. A file that is not a log export at all is reported by name and does not stop a
multi-file ingest.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bench.notifications import generate
from tests.helpers import CLI

BAD = Path(__file__).parent / "data" / "bad"
EXPECTED = json.loads((BAD / "expected.json").read_text(encoding="utf-8"))
FILES = sorted(p for p in BAD.iterdir() if p.is_file() and p.name != "expected.json")

# Two good notifications (a login and its refresh) in the receiver's JSON Lines format (docs/design.md).
GOOD_LINES = [
    {
        "received_at": "2026-12-03T16:00:00.250000Z",
        "level": "info",
        "msg": "tyk oauth notification",
        "status": 200,
        "remote_addr": "10.0.3.7:43122",
        "user_id": "carol",
        "body": {
            "auth_code": "Qw8eRt5yUi2oPa7sDf4gHj1kLz9xCv3b",
            "new_oauth_token": "NWU5ZDk1NDRhMWRjZDYwMDAxZDBlZDIwZjQ3YjVjOWUxZDBhNGE2Yjg4YzNlMjdmNTkxZDYwOGE=",
            "refresh_token": "Mn4Bv7Cx1Za9Sd3Fg6Hj2Kl5Qw8Er0Ty4Ui7Op1As3D",
            "old_refresh_token": "",
            "notification_type": "new",
        },
    },
    {
        "received_at": "2026-12-03T16:59:41.800000Z",
        "level": "info",
        "msg": "tyk oauth notification",
        "status": 200,
        "remote_addr": "10.0.3.9:51544",
        "body": {
            "auth_code": "",
            "new_oauth_token": "NWU5ZDk1NDRhMWRjZDYwMDAxZDBlZDIwOGUxYTRkN2MzYjVmNDI5MGE2ZDFjOGU3YjNmMjQ1YzE=",
            "refresh_token": "Ty2Gh5Jk8Lm1Nb4Vc7Xz0As3Df6Gh9Jk2Lq5Wp8Er1T",
            "old_refresh_token": "Mn4Bv7Cx1Za9Sd3Fg6Hj2Kl5Qw8Er0Ty4Ui7Op1As3D",
            "notification_type": "refresh",
        },
    },
]




def tokentrail(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, (
        f"`{' '.join(proc.args)}` exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


def summary(db: Path, cwd: Path) -> dict:
    return json.loads(tokentrail("summary", "--db", db, "--json", cwd=cwd).stdout)


def test_every_bad_file_has_expectations():
    assert sorted(EXPECTED) == [p.name for p in FILES], "tests/data/bad/expected.json and the files differ"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_bad_input_is_reported_and_the_rest_loads(path, tmp_path):
    spec = EXPECTED[path.name]
    db = tmp_path / "x.duckdb"
    if "file_error" in spec:
        check_not_a_log_export(path, spec, db, tmp_path)
    else:
        check_quarantined_record(path, spec, db, tmp_path)


def check_quarantined_record(path: Path, spec: dict, db: Path, tmp_path: Path) -> None:
    tokentrail("ingest", path, "--db", db, cwd=tmp_path)
    rows = json.loads(tokentrail("quarantine", "--db", db, "--json", cwd=tmp_path).stdout)
    assert len(rows) == 1, f"{path.name}: expected exactly one quarantined record, got {rows}"
    row = rows[0]
    assert {"file", "record_no", "reason", "excerpt"} <= row.keys(), row
    assert path.name in str(row["file"]), row
    assert row["record_no"] == spec["record_no"], row
    reason = str(row["reason"]).lower()
    for word in spec["reason"]:
        assert word.lower() in reason, f"{path.name}: reason {row['reason']!r} should mention {word!r}"
    excerpt = str(row["excerpt"] or "")
    leaked = [token for token in spec["tokens"] if token in excerpt]
    assert not leaked, f"{path.name}: excerpt shows tokens in the clear: {excerpt!r}"
    got = summary(db, tmp_path)
    assert got["deliveries"] == 2, f"{path.name}: the two good records around the bad one must load: {got}"
    assert got["rejected"] == 1, got


def check_not_a_log_export(path: Path, spec: dict, db: Path, tmp_path: Path) -> None:
    good = tmp_path / "receiver.jsonl"
    good.write_text("".join(json.dumps(line) + "\n" for line in GOOD_LINES), encoding="utf-8")
    report = json.loads(tokentrail("ingest", path, good, "--db", db, "--json", cwd=tmp_path).stdout)
    entries = {Path(str(entry["path"])).name: entry for entry in report["files"]}
    assert {path.name, good.name} <= entries.keys(), report
    bad, fine = entries[path.name], entries[good.name]
    error = str(bad["error"] or "")
    assert path.name in error, f"the error must name the file: {bad}"
    for word in spec["file_error"]:
        assert word.lower() in error.lower(), f"{path.name}: error {error!r} should say {word!r}"
    assert not bad["new_deliveries"], bad
    # The multi-file ingest goes on past the bad file.
    assert fine["error"] is None, fine
    assert fine["new_deliveries"] == 2, fine
    assert summary(db, tmp_path)["deliveries"] == 2


def test_running_out_of_memory_is_a_clear_error_that_changes_nothing(tmp_path):
    """A memory limit too small for the work: not a traceback nor "unexpected error", but what happened and
    which setting to raise."""
    src = tmp_path / "n.jsonl"
    generate(src, 50_000, seed=5)
    db = tmp_path / "x.duckdb"
    proc = subprocess.run(
        [*CLI, "ingest", str(src), "--db", str(db)], capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "TOKENTRAIL_MEMORY_LIMIT": "10MB"},
    )
    assert proc.returncode == 1
    assert "ran out of memory within its limit of 10MB" in proc.stderr, proc.stderr
    assert "TOKENTRAIL_MEMORY_LIMIT=4GB tokentrail ingest" in proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    assert json.loads(tokentrail("summary", "--db", db, "--json", cwd=tmp_path).stdout)["deliveries"] == 0


def test_a_quarantined_record_shows_its_field_names_and_is_not_counted_as_an_unreadable_time(tmp_path):
    path = BAD / "missing_token.jsonl"
    db = tmp_path / "x.duckdb"
    report = json.loads(tokentrail("ingest", path, "--db", db, "--json", cwd=tmp_path).stdout)
    # its time was fine: only a valid record whose time cannot be read is an "unreadable time"
    assert [(f["rejected"], f["unreadable_times"]) for f in report["files"]] == [(1, 0)]
    (row,) = json.loads(tokentrail("quarantine", "--db", db, "--json", cwd=tmp_path).stdout)
    # Tyk's long field names are not mistaken for tokens; the tokens after them are masked
    assert '"refresh_token": "***", "old_refresh_token": "***"' in row["excerpt"], row


def test_a_gzip_file_cut_short_loads_what_it_holds_and_says_where_it_ends(tmp_path):
    # An interrupted copy or upload: the records before the cut load, the one cut in half is quarantined, and the
    # report names the file and says it ends early (gzip.GzipFile lost everything a small file held).
    import gzip
    import zlib

    lines = []
    for i in range(3000):
        rec = json.loads(json.dumps(GOOD_LINES[i % 2]))
        rec["body"]["new_oauth_token"] += f"{i:06d}"
        lines.append(json.dumps(rec) + "\n")
    whole = gzip.compress("".join(lines).encode(), mtime=0)
    cut = tmp_path / "receiver.jsonl.gz"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    held = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut.read_bytes())
    complete = held.count(b"\n")
    assert 0 < complete < len(lines) and not held.endswith(b"\n")  # the cut falls inside a record
    db = tmp_path / "x.duckdb"
    report = json.loads(tokentrail("ingest", cut, "--db", db, "--json", cwd=tmp_path).stdout)
    entry = report["files"][0]
    assert cut.name in str(entry["error"]) and "ends early" in str(entry["error"]), entry
    assert (entry["new_deliveries"], entry["rejected"]) == (complete, 1), entry
    rows = json.loads(tokentrail("quarantine", "--db", db, "--json", cwd=tmp_path).stdout)
    assert [r["record_no"] for r in rows] == [complete + 1]
    assert summary(db, tmp_path)["deliveries"] == complete
    # a file cut inside its header holds nothing: one clear error
    head = tmp_path / "head.jsonl.gz"
    head.write_bytes(whole[:5])
    report = json.loads(tokentrail("ingest", head, "--db", db, "--json", cwd=tmp_path).stdout)
    assert "ends before any of its data" in str(report["files"][0]["error"]), report


@pytest.mark.parametrize("ending", ["\n", ""], ids=["newline", "no-newline"])
def test_a_file_that_is_one_cut_off_record_quarantines_it(ending, tmp_path):
    # One record, cut off (a copy interrupted after the first line): read as a JSON document it was an error
    # with nothing kept; it is one record, quarantined by its line like any other.
    line = json.dumps(GOOD_LINES[0])
    cut = line[: line.index('"refresh_token"') + 30]
    path = tmp_path / "hook.log"
    path.write_text(cut + ending, encoding="utf-8")
    db = tmp_path / "x.duckdb"
    report = json.loads(tokentrail("ingest", path, "--db", db, "--json", cwd=tmp_path).stdout)
    assert report["files"][0]["error"] is None, report
    rows = json.loads(tokentrail("quarantine", "--db", db, "--json", cwd=tmp_path).stdout)
    assert [(r["record_no"], "invalid json" in r["reason"].lower()) for r in rows] == [(1, True)], rows
    for field in ("auth_code", "new_oauth_token", "refresh_token"):
        assert GOOD_LINES[0]["body"][field][:16] not in rows[0]["excerpt"], rows[0]["excerpt"]


def test_a_notification_type_in_another_case_or_padded_is_read(tmp_path):
    # a char(10) column exported by PostgreSQL pads it ('new       '); a hand-typed one may be capitalised
    from tests.helpers import body, jsonl

    records = [{"received_at": "2026-12-03T09:00:00Z", "body": {**body("new", "T1", "R1", code="A1"),
                                                                "notification_type": "new       "}},
               {"received_at": "2026-12-03T09:40:00Z", "body": {**body("refresh", "T2", "R2", "R1"),
                                                                "notification_type": " Refresh"}}]
    path = tmp_path / "padded.jsonl"
    path.write_bytes(jsonl(records))
    db = tmp_path / "x.duckdb"
    tokentrail("ingest", path, "--db", db, cwd=tmp_path)
    got = summary(db, tmp_path)
    assert (got["deliveries"], got["rejected"], got["chains"]) == (2, 0, 1), got
