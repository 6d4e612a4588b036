"""The dashboard's shared context: the store, the view state that lives in the URL, and cached queries.

* One `Store` per server process (`st.cache_resource`): the dashboard is the single writer of its database
  file; every query takes its own cursor (Streamlit sessions are threads).
* The view (time range, auto-refresh, identity) is made of widgets bound to query params, so a copied link
  reopens the same page, range, filters and identity.
* Query results are cached with `st.cache_data`, keyed by the query, its arguments and the data version
  (the last ingest run), so an upload shows up on every page without a restart and nothing stale survives it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import streamlit as st

from ingest.store import Store
from tokentrail.config import default_db_path

RANGES = {"1h": "Last 1 hour", "6h": "Last 6 hours", "24h": "Last 24 hours", "7d": "Last 7 days", "all": "All data", "custom": "Absolute range"}
_RANGE_SECONDS = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
REFRESH = {"off": None, "10s": 10, "1m": 60, "5m": 300}


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


@st.cache_resource(show_spinner="Opening the database...")
def get_store() -> Store:
    return Store.open(default_db_path())


def data_version() -> int:
    row = get_store().cursor().execute("SELECT coalesce(max(run_id), 0) FROM ingest_files").fetchall()[0]
    return int(row[0])


def query(fn, *args, **kwargs) -> pd.DataFrame:
    """Run a named query function `fn(store, *args, **kwargs)` through the cache."""
    return _cached(fn.__module__, fn.__name__, data_version(), args, tuple(sorted(kwargs.items())))


@st.cache_data(max_entries=512, show_spinner=False)
def _cached(module: str, name: str, version: int, args: tuple, kwargs: tuple):
    fn = getattr(importlib.import_module(module), name)
    return fn(get_store(), *args, **dict(kwargs))


def bucket_for(seconds: float | None) -> str:
    if seconds is None or seconds <= 0:
        return "1 hour"
    for limit, bucket in ((2 * 3600, "1 minute"), (12 * 3600, "5 minutes"), (2 * 86400, "15 minutes"),
                          (15 * 86400, "1 hour"), (90 * 86400, "6 hours")):
        if seconds <= limit:
            return bucket
    return "1 day"


def data_bounds() -> tuple[datetime | None, datetime | None]:
    return query(_bounds)


def _bounds(store: Store):
    return tuple(store.cursor().execute("SELECT min(received_at), max(received_at) FROM deliveries").fetchall()[0])




def sidebar_controls() -> View:
    """Render the range picker and auto-refresh in the sidebar (widgets bound to the URL) and return the view."""
    first, last = data_bounds()
    with st.sidebar:
        st.markdown("#### Time range")
        key = st.selectbox("Range", list(RANGES), format_func=RANGES.get, index=3, key="range",
                           bind="query-params", label_visibility="collapsed")
        start = end = None
        if key == "custom":
            default_from = (last - timedelta(days=1)) if last else None
            frm = st.text_input("From (UTC)", value=default_from.strftime("%Y-%m-%d %H:%M") if default_from else "",
                                key="from", bind="query-params")
            to = st.text_input("To (UTC)", value=last.strftime("%Y-%m-%d %H:%M") if last else "", key="to",
                               bind="query-params")
            start, end = _parse(frm), _parse(to)
            if frm and start is None or to and end is None:
                st.error("Use the form 2026-12-04 13:00 (UTC).")
        elif key in _RANGE_SECONDS and last is not None:
            end = last + timedelta(microseconds=1)
            start = end - timedelta(seconds=_RANGE_SECONDS[key])
        refresh = st.selectbox("Auto-refresh", list(REFRESH), index=0, key="refresh", bind="query-params",
                               format_func=lambda k: "Auto-refresh: off" if k == "off" else f"Auto-refresh: every {k}")
        if last is not None and key != "custom":
            st.caption(f"Relative ranges end at the data's last delivery: {last:%Y-%m-%d %H:%M} UTC")
    span = None
    if start and end:
        span = (end - start).total_seconds()
    elif first and last:
        span = (last - first).total_seconds()
    label = RANGES[key] if key != "custom" else f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}" if start and end else RANGES[key]
    view = View(start, end, key, label, bucket_for(span), last, REFRESH[refresh])
    st.session_state["tt_view"] = view
    return view


def current_view() -> View:
    view = st.session_state.get("tt_view")
    if view is None:
        view = sidebar_controls()
    return view


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
