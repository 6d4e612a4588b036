"""Shared fixtures: a cheap store in a temp folder (one DuckDB file per test)."""

from __future__ import annotations

import pytest

from ingest.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "t.duckdb")
    yield s
    s.close()


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole run (Playwright's sync API allows one instance per thread)."""
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    from tests.browser_support import CHROMIUM, MISSING_CHROMIUM, launch

    if not Path(CHROMIUM).exists():
        pytest.fail(MISSING_CHROMIUM, pytrace=False)
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()
