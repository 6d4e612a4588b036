"""Architecture boundaries: the write side and the query layer never import streamlit or plotly."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import ROOT


def test_engine_and_cli_do_not_load_the_ui():
    code = (
        "import sys, ingest.pipeline, ingest.lineage, ingest.demo, queries.summary, tokentrail.cli;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('streamlit', 'plotly'));"
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"loaded UI modules: {result.stdout} {result.stderr}"


def test_query_and_ingest_modules_do_not_import_ui_libraries():
    ui_import = re.compile(r"^\s*(import|from)\s+(streamlit|plotly)\b", re.M)
    files = [*(ROOT / "queries").glob("*.py"), *(ROOT / "ingest").glob("*.py")]
    assert len(files) > 8
    assert [p.name for p in files if ui_import.search(p.read_text())] == []


def test_ingesting_json_lines_does_not_load_pandas(tmp_path):
    """pandas costs ~0.2 s to import, a third of a small `tokentrail ingest`: the line reader builds its
    Arrow arrays from buffers, since pa.array() imports pandas to check its argument."""
    log = tmp_path / "receiver.jsonl"
    log.write_text("".join(
        f'{{"received_at": "2026-12-03T09:00:0{i}Z", "body": {{"auth_code": "code{i}", "new_oauth_token": "tok{i}", '
        f'"refresh_token": "ref{i}", "old_refresh_token": "", "notification_type": "new"}}}}\n'
        for i in range(3)
    ))
    code = (
        "import sys; from tokentrail.cli import main;"
        f"rc = main(['ingest', '--db', {str(tmp_path / 'tt.duckdb')!r}, '--json', {str(log)!r}]);"
        "print('PANDAS' if 'pandas' in sys.modules else 'CLEAN'); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert '"new_deliveries": 3' in result.stdout, result.stdout
    assert result.stdout.rstrip().endswith("CLEAN"), "ingesting JSON Lines imported pandas"
