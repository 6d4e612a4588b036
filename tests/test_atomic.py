"""An ingest is one transaction: killed half-way (SIGKILL), the database is exactly as before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from ingest.store import Store
from queries.summary import summary
from tests.helpers import DATA, ROOT


def _big_export(path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({
                "received_at": f"2026-12-02T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}Z",
                "body": {"auth_code": "", "new_oauth_token": f"access-{i:09d}-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                         "refresh_token": f"refresh-{i + 1:09d}-yyyyyyyyyyyyyyyyyyyy",
                         "old_refresh_token": f"refresh-{i:09d}-yyyyyyyyyyyyyyyyyyyy", "notification_type": "refresh"},
            }) + "\n")


def test_sigkill_mid_ingest_leaves_the_database_unchanged(tmp_path):
    db = tmp_path / "a.duckdb"
    store = Store.open(db)
    from ingest.pipeline import ingest

    ingest(store, [DATA / "golden" / "basic.jsonl"])
    before = summary(store)
    store.close()

    big = tmp_path / "big.jsonl"
    _big_export(big, 1_000_000)  # ~4 s to load on a fast machine: the kill at 1.5 s lands mid-ingest
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokentrail", "ingest", str(big), "--db", str(db)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1.5)  # well into reading and staging; the whole ingest takes several seconds
    assert proc.poll() is None, "the ingest finished before it could be killed: make the input bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    store = Store.open(db)
    assert summary(store) == before
    store.close()
