"""Shared fixtures: a cheap store in a temp folder (one DuckDB file per test)."""

from __future__ import annotations

import pytest

from ingest.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "t.duckdb")
    yield s
    s.close()
