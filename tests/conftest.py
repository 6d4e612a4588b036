"""Shared fixtures: a cheap store in a temp folder (one DuckDB file per test), the dashboard under AppTest, and
one headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "t.duckdb")
    yield s
    s.close()


@pytest.fixture
def fresh_app(monkeypatch):
    """`fresh_app(db)` -> an AppTest of app.py on that database, with fresh Streamlit caches.

    Every AppTest run is like the first run of a new server process: Streamlit's old `pages/`-folder mode is
    on until app.py calls `st.navigation`, and a rerun on a page runs that page file alone. The shell guard in
    dashboard.context turns that into one more run through app.py (which drops a button click of that run).
    """
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    def make(db) -> AppTest:
        monkeypatch.setenv("TOKENTRAIL_DB", str(db))
        st.cache_data.clear()
        st.cache_resource.clear()  # closes the previous test's store (on_release)
        return AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)

    yield make
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def dashboard_app(fresh_app):
    """`make(db, page=None, **query_params)`: app.py under AppTest on `db`, run once, then switched to `page` (a
    key of dashboard.components.PAGES) when one is given."""
    from dashboard.components import PAGES

    def make(db, page: str | None = None, **params: str):
        at = fresh_app(db)
        for k, v in params.items():
            at.query_params[k] = v
        at.run()
        if page:
            at.switch_page(PAGES[page].path).run()
        return at

    return make


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole run (Playwright's sync API allows one instance per thread)."""
    from playwright.sync_api import sync_playwright

    from tests.browser_support import CHROMIUM, MISSING_CHROMIUM, launch

    if not Path(CHROMIUM).exists():
        pytest.fail(MISSING_CHROMIUM, pytrace=False)
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()
