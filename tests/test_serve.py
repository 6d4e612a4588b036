"""`tokentrail serve`: a database you name starts empty (only the embedded default gets the demo data), and
stopping the command (SIGTERM, as `kill` and systemd send) stops the dashboard with it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from ingest.store import Store
from tests.browser_support import _healthy, free_port, log_tail
from tests.helpers import CLI, ROOT


def test_serve_on_a_new_database_starts_it_empty_and_stops_on_sigterm(tmp_path):
    db = tmp_path / "fresh.duckdb"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TOKENTRAIL_DB", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([*CLI, "serve", "--db", str(db), "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            assert proc.poll() is None, log_tail(log)
            assert time.monotonic() < deadline, log_tail(log)
            time.sleep(0.25)
        assert "created it, empty" in log.read_text(), log_tail(log)
        assert not (tmp_path / "demo").exists()  # no demo logs written beside it
        proc.send_signal(signal.SIGTERM)  # to the command alone, not its process group
        proc.wait(timeout=20)
        deadline = time.monotonic() + 20
        while _healthy(url) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not _healthy(url), "the dashboard outlived the command"
    finally:  # (the command, or a Streamlit it left behind, would hold the port: the whole group goes)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    store = Store.open(db, read_only=True)
    try:
        assert store.cursor().execute("SELECT count(*) FROM events").fetchall() == [(0,)]
    finally:
        store.close()
