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
