"""The dashboard's shared context: the store, the view state that lives in the URL, and cached queries.

* One `Store` per database file per server process (`st.cache_resource`): the dashboard is the single writer
  of its database file (uploads, and the live receiver's spool via `live.follower`); every query takes its
  own cursor (Streamlit sessions are threads). The cache is keyed
  by the path, so a changed `TOKENTRAIL_DB` (tests) opens the right file, and clearing it closes the old one.
* The view (time range, auto-refresh) is made of widgets bound to query params, so a copied link reopens the
  same page and range. Relative ranges end at the data's last delivery, not at the wall clock: the data are
  log exports, usually hours or days old, and "last 24 hours" of an export means its last day.
* Query results are cached with `st.cache_data`, keyed by the database, the query, its arguments and the data
  version (the last ingest run), so an upload shows up on every page without a restart and nothing stale
  survives it. `invalidate()` drops everything (an ingest that only maps identities adds no run).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import streamlit as st

from ingest.store import Store
from live.follower import Follower
from tokentrail.config import default_db_path

RANGES = {
    "1h": "Last 1 hour",
    "6h": "Last 6 hours",
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
    "all": "All data",
    "custom": "Absolute range",
}
_RANGE_SECONDS = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
REFRESH = {"off": None, "5s": 5, "10s": 10, "1m": 60, "5m": 300}  # 5s: for watching live mode
DEFAULT_RANGE = "all"  # an upload is looked at whole first; relative ranges then zoom in
_INPUTS = "tt_view_inputs"  # session-state key: the raw widget values the current view was made from


@dataclass(frozen=True)
class View:
    start: datetime | None  # inclusive, UTC (naive); None = from the beginning
    end: datetime | None  # exclusive, UTC (naive); None = to the end
    range_key: str
    label: str
    bucket: str  # a DuckDB interval for time buckets, e.g. "5 minutes"
    data_end: datetime | None
    refresh_s: int | None

    def params(self) -> tuple[datetime | None, datetime | None]:
        return self.start, self.end


# -- the app shell -------------------------------------------------------------------------------------------
# Streamlit still runs apps with a `pages/` folder through its old multipage mode until the first
# `st.navigation` call of the process, and that mode runs a page file *directly* (without app.py's sidebar
# and navigation) when the requested URL path equals the file's name: a deep link such as /upload opened
# first on a fresh server, and every AppTest rerun. A page that finds itself outside the shell asks for one
# rerun with that mode off, which goes through app.py and its navigation to the same page.
_shell = threading.local()


@contextlib.contextmanager
def shell() -> Iterator[None]:
    """app.py wraps its run in this; pages run inside it."""
    _shell.active = True
    try:
        yield
    finally:
        _shell.active = False


def ensure_shell() -> None:
    if getattr(_shell, "active", False):
        return
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the old mode: nothing to undo
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def _close(store: Store) -> None:
    follower = getattr(store, "follower", None)
    if follower is not None:
        follower.stop()
    store.close()


@st.cache_resource(show_spinner="Opening the database...", on_release=_close)
def _open_store(path: str) -> Store:
    store = Store.open(path)
    # The dashboard owns the database, so it is the one that applies what `tokentrail receive` records
    # (live.follower): new deliveries reach every page within about a second (with auto-refresh on).
    store.follower = Follower(store).start()
    return store


def get_store() -> Store:
    """The store of `$TOKENTRAIL_DB` (or the default database), opened once per server process."""
    ensure_shell()
    return _open_store(str(default_db_path()))


get_store.clear = _open_store.clear  # type: ignore[attr-defined]  # same call as on a cached function


def data_version() -> int:
    row = get_store().cursor().execute("SELECT coalesce(max(run_id), 0) FROM ingest_files").fetchall()[0]
    return int(row[0])


def query(fn, *args, **kwargs):
    """Run a named query function `fn(store, *args, **kwargs)` through the cache."""
    store = get_store()
    return _cached(
        store.path, fn.__module__, fn.__name__, data_version(), args, tuple(sorted(kwargs.items()))
    )


@st.cache_data(max_entries=512, show_spinner=False)
def _cached(db: str, module: str, name: str, version: int, args: tuple, kwargs: tuple):
    fn = getattr(importlib.import_module(module), name)
    return fn(get_store(), *args, **dict(kwargs))


def invalidate() -> None:
    """Forget every cached query result (after a write that might not change `data_version`)."""
    _cached.clear()


def bucket_for(seconds: float | None) -> str:
    if seconds is None or seconds <= 0:
        return "1 hour"
    for limit, bucket in (
        (2 * 3600, "1 minute"),
        (12 * 3600, "5 minutes"),
        (2 * 86400, "15 minutes"),
        (15 * 86400, "1 hour"),
        (90 * 86400, "6 hours"),
    ):
        if seconds <= limit:
            return bucket
    return "1 day"


def data_bounds() -> tuple[datetime | None, datetime | None]:
    return query(_bounds)


def _bounds(store: Store):
    return tuple(
        store.cursor().execute("SELECT min(received_at), max(received_at) FROM deliveries").fetchall()[0]
    )


def sidebar_controls() -> View:
    """Render the range picker and auto-refresh in the sidebar (widgets bound to the URL) and return the view."""
    first, last = data_bounds()
    frm = to = ""
    with st.sidebar:
        st.markdown("#### Time range")
        key = st.selectbox(
            "Range",
            list(RANGES),
            format_func=RANGES.get,
            index=list(RANGES).index(DEFAULT_RANGE),
            key="range",
            bind="query-params",
            label_visibility="collapsed",
        )
        if key == "custom":
            default_from = (last - timedelta(days=1)) if last else None
            frm = st.text_input(
                "From (UTC)",
                value=default_from.strftime("%Y-%m-%d %H:%M") if default_from else "",
                key="from",
                bind="query-params",
            )
            to = st.text_input(
                "To (UTC)",
                value=last.strftime("%Y-%m-%d %H:%M") if last else "",
                key="to",
                bind="query-params",
            )
            start, end = _parse(frm), _parse(to)
            if (frm and start is None) or (to and end is None):
                st.error("Use the form 2026-12-04 13:00 (UTC).")
            elif start and end and start >= end:
                st.error("The range must start before it ends.")
        # A bound selectbox keeps its *displayed* option in the URL: ?range=Last+24+hours&refresh=1m
        refresh = st.selectbox(
            "Auto-refresh",
            list(REFRESH),
            index=0,
            key="refresh",
            bind="query-params",
            format_func=lambda k: "Off" if k == "off" else k,
        )
        if last is not None and key not in ("custom", "all"):
            st.caption(f"Relative ranges end at the data's last delivery: {last:%Y-%m-%d %H:%M} UTC")
    inputs = (key, frm, to, refresh)
    st.session_state[_INPUTS] = inputs
    view = _resolve(*inputs, first, last)
    st.session_state["tt_view"] = view
    return view


def current_view() -> View:
    """The view of this run. Inside an auto-refresh fragment it is re-resolved against the current data, so a
    relative range follows newly uploaded data without a full rerun."""
    ensure_shell()
    inputs = st.session_state.get(_INPUTS)
    if inputs is None:
        return sidebar_controls()
    first, last = data_bounds()
    view = st.session_state.get("tt_view")
    if view is None or view.data_end != last:
        view = _resolve(*inputs, first, last)
        st.session_state["tt_view"] = view
    return view


def _resolve(
    key: str, frm: str, to: str, refresh: str, first: datetime | None, last: datetime | None
) -> View:
    key = key if key in RANGES else DEFAULT_RANGE
    start = end = None
    if key == "custom":
        start, end = _parse(frm), _parse(to)
        if start and end and start >= end:
            start = end = None
    elif key in _RANGE_SECONDS and last is not None:
        end = last + timedelta(microseconds=1)
        start = end - timedelta(seconds=_RANGE_SECONDS[key])
    span = None
    if start and end:
        span = (end - start).total_seconds()
    elif first and last:
        span = ((end or last) - (start or first)).total_seconds()
    if key == "custom":
        label = f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC" if start and end else RANGES[key]
    else:
        label = RANGES[key]
    return View(start, end, key, label, bucket_for(span), last, REFRESH.get(refresh))


def _parse(text: str) -> datetime | None:
    try:
        ts = pd.Timestamp(text.strip())
    except (ValueError, TypeError):
        return None
    if ts is pd.NaT:
        return None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.to_pydatetime()
