"""Nothing leaked: raw tokens and auth codes never reach the database file, in any table or byte of it, nor sit
in the rows of a query operator that DuckDB could write to its temporary directory."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pytest

from bench.notifications import generate
from ingest.demo import write_demo
from ingest.locate import learn_layout
from ingest.normalize import STAGE_COLUMNS, install_macros, normalize_sql
from ingest.pipeline import SLOW_RELATION, _fast_relation, ingest
from ingest.store import Store, key_path
from tests.helpers import CLI, DATA, ROOT

TOKEN_KEYS = ("auth_code", "new_oauth_token", "refresh_token", "old_refresh_token")


def _tokens_in(path) -> set[str]:
    """Every token-like value of a JSON Lines input (records and quarantined lines alike)."""
    found = set()
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            b = obj.get("body", obj)
            found.update(str(b[k]) for k in TOKEN_KEYS if isinstance(b, dict) and b.get(k))
    return found - REDACTED


# what a logger writes in place of a secret (tests/data/bad/redacted_tokens.jsonl): not a token
REDACTED = {"[REDACTED]", "[FILTERED]"}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sec")
    demo = write_demo(tmp / "demo", days=1, users=20, seed=3, end=datetime(2026, 12, 3, tzinfo=UTC))
    import gzip

    tokens: set[str] = set()
    for p in demo:
        if p.name.endswith(".jsonl.gz"):
            plain = tmp / p.name.removesuffix(".gz")
            plain.write_bytes(gzip.decompress(p.read_bytes()))
            tokens |= _tokens_in(plain)
    bad = [p for p in (DATA / "bad").glob("*.jsonl")]
    for p in bad:
        tokens |= _tokens_in(p)
    tokens |= {row.split(",")[0] for row in (demo[-1]).read_text().splitlines()[1:]}
    db = tmp / "sec.duckdb"
    store = Store.open(db)
    ingest(store, [*demo[:-1], *bad], identities=demo[-1])
    rejected = store.cursor().execute("SELECT count(*) FROM quarantine").fetchall()[0][0]
    store.close()
    assert len(tokens) > 1000 and rejected >= len(bad)
    return db, tokens


def test_no_raw_token_in_any_column(loaded):
    db, tokens = loaded
    store = Store.open(db, read_only=True)
    cur = store.cursor()
    columns = cur.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE data_type = 'VARCHAR' "
        "AND table_schema = 'main'"
    ).fetchall()
    cur.execute("CREATE TEMP TABLE raw_tokens (t VARCHAR)")
    cur.executemany("INSERT INTO raw_tokens VALUES (?)", [(t,) for t in tokens])
    for table, column in columns:
        hits = cur.execute(
            f'SELECT count(*) FROM "{table}" JOIN raw_tokens ON contains("{column}", t)'  # noqa: S608
        ).fetchall()[0][0]
        assert hits == 0, f"raw token found in {table}.{column}"
    store.close()


def test_no_raw_token_in_the_file_bytes(loaded):
    db, tokens = loaded
    blob = db.read_bytes()
    wal = db.with_name(db.name + ".wal")
    if wal.exists():
        blob += wal.read_bytes()
    leaked = [t for t in tokens if len(t) >= 8 and t.encode() in blob]
    assert leaked == []


def test_key_file_is_private_and_not_in_the_database(loaded):
    db, _ = loaded
    kp = key_path(str(db))
    assert stat.S_IMODE(os.stat(kp).st_mode) == 0o600
    assert kp.read_text().strip().encode() not in db.read_bytes()


def test_missing_key_for_existing_data_is_a_clear_error(loaded, tmp_path):
    db, _ = loaded
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(db.read_bytes())
    from ingest.store import StoreError

    with pytest.raises(StoreError, match="key .* is missing"):
        Store.open(copy)


# Operators that pass rows on without holding them. Any other one (a materialised CTE, a join, an aggregate, a
# sort, a window) keeps rows in buffers that DuckDB writes to its temporary directory when memory runs short.
STREAMING_OPERATORS = {"Batch Insert", "Insert", "Projection", "Filter", "Python Arrow Scan", "Arrow Scan"}


def _operators(cur, sql: str, tt_batch: pa.Table, tt_slow: pa.Table) -> set[str]:  # noqa: ARG001 - both read
    # by DuckDB's replacement scan (this frame's locals)
    plan = "\n".join(row[1] for row in cur.execute(f"EXPLAIN {sql}", {"key": "k", "source_id": 1}).fetchall())
    return set(re.findall(r"╭─ ([^─]+?) ─", plan))


@pytest.mark.parametrize("path", ["fast", "slow"])
def test_the_statement_that_reads_raw_tokens_holds_no_rows(path):
    """The normalising statement is the one place raw tokens meet DuckDB: it must be one streaming pipeline.
    (It once materialised a CTE holding every token of its batch, which DuckDB may offload to `<db>.tmp`. No
    spilled copy of it was caught, the tokens found there came from freed memory, see below, but with the CTE a
    300,000-line ingest ran out of memory at a 60 MB limit, and without it, it runs.)"""
    cur = duckdb.connect().cursor()
    install_macros(cur)
    cur.execute(f"CREATE TEMP TABLE stage ({STAGE_COLUMNS})")
    line = (DATA / "exports" / "receiver_plain.jsonl").read_text().splitlines()[0]
    layout = learn_layout([line])
    assert layout is not None
    tt_batch = pa.table({"record_no": [1], "raw": [line], "err": pa.array([None], pa.string())})
    tt_slow = pa.table(
        {"record_no": [1], "raw": [line], "err": pa.array([None], pa.string()), "reason": pa.array([None], pa.string()),
         "notif": [json.dumps(json.loads(line)["body"])], "time_raw": ["2026-12-03T09:00:00Z"],
         "identity_raw": pa.array([None], pa.string())}
    )
    relation = _fast_relation(layout) if path == "fast" else SLOW_RELATION
    operators = _operators(cur, f"INSERT INTO stage {normalize_sql(relation)}", tt_batch, tt_slow)
    assert "Projection" in operators
    assert operators <= STREAMING_OPERATORS, f"operators that hold rows: {operators - STREAMING_OPERATORS}"


def test_no_raw_token_in_the_temporary_files(tmp_path):
    """When its memory limit is reached DuckDB writes blocks to `<db>.tmp`, whole: their unused bytes are whatever
    that memory held before, raw tokens included, unless freed memory is overwritten (`ingest/__init__.py`).
    A 150,000-line ingest with a 50 MB limit spills; its temporary files are read while it runs. (Without the
    overwriting, 100-2,000 of its tokens were found in them.)"""
    src = tmp_path / "n.jsonl"
    generate(src, 150_000, seed=5)
    tokens = set()
    for line in src.read_text().splitlines():
        b = json.loads(line)["body"]
        tokens |= {b[k].encode() for k in TOKEN_KEYS if b.get(k)}
    db = tmp_path / "spill.duckdb"
    env = {k: v for k, v in os.environ.items() if k != "DUCKDB_JE_MALLOC_CONF"}
    err = tmp_path / "stderr.txt"
    with err.open("wb") as err_file:  # a file, not a pipe: a full pipe would stall the ingest
        proc = subprocess.Popen(
            [*CLI, "ingest", str(src), "--db", str(db)],
            env={**env, "TOKENTRAIL_MEMORY_LIMIT": "50MB"}, stdout=subprocess.DEVNULL, stderr=err_file,
        )
    token_like = re.compile(rb"[A-Za-z0-9+/_=-]{30,}")
    spilled, leaked = 0, set()
    deadline = time.monotonic() + 300
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the ingest took over 300 s")
        for f in db.with_name(db.name + ".tmp").glob("*.tmp"):
            try:
                data = f.read_bytes()
            except OSError:  # deleted meanwhile
                continue
            spilled = max(spilled, len(data))
            leaked |= {m.group(0) for m in token_like.finditer(data)} & tokens
        time.sleep(0.05)
    assert proc.returncode == 0, err.read_text()
    assert spilled > 1 << 20, "the ingest did not spill: this test would prove nothing"
    assert not leaked, f"{len(leaked)} raw tokens written to DuckDB's temporary files"


def test_the_command_line_writes_no_core_dump(tmp_path):
    """A crash must not write the process's memory, raw tokens included, to a core file."""
    code = (
        "import resource, sys; from tokentrail.cli import main;"
        f"main(['summary', '--db', {str(tmp_path / 'none.duckdb')!r}]);"  # any command (this one: no database)
        "print('CORE LIMIT', resource.getrlimit(resource.RLIMIT_CORE))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "no database" in result.stderr, result.stderr
    assert result.stdout.rstrip().endswith("CORE LIMIT (0, 0)"), result.stdout
