"""One palette for every page: an event type or an anomaly has the same colour everywhere (dark theme).

The colours are Grafana's classic palette, so the dashboard reads like a monitoring tool an SRE already knows;
`.streamlit/config.toml` sets the same values as Streamlit's named colours (green, orange, red, blue), which is
what `st.metric` colours its delta and sparkline with. This module has no Streamlit import: plotly only.
"""

from __future__ import annotations

import math
import numbers
from datetime import datetime

import numpy as np
import pandas as pd
import plotly.graph_objects as go

COLORS = {
    # event types
    "new": "#73BF69",  # Grafana green
    "refresh": "#5794F2",  # Grafana blue
    # refresh classes
    "early": "#B877D9",
    "on_time": "#5794F2",
    "late": "#FF9830",
    # anomalies
    "orphan": "#F2495C",
    "fork": "#FADE2A",
    "retry": "#8AB8FF",
    "forced_relogin": "#FF7383",
    "gap": "#F2495C",
    # chain end states
    "active": "#73BF69",
    "ended": "#8E8E8E",
    "untimed": "#5A5A5A",
    # live deliveries by what the user's own service answered the relay (tokentrail receive --forward)
    "accepted": "#73BF69",
    "refused": "#FF9830",
    "no_answer": "#F2495C",
    "not_relayed": "#5794F2",
    "rejected": "#8E8E8E",  # bodies that were not notifications (quarantined)
    # thresholds
    "ok": "#73BF69",
    "warn": "#FF9830",
    "bad": "#F2495C",
    "neutral": "#5794F2",
}
END_STATE_COLORS = {k: COLORS[k] for k in ("active", "ended", "forced_relogin", "untimed")}
# Threshold level -> the Streamlit named colour configured to the same value (st.metric's delta_color).
LEVEL_NAMED_COLORS = {"ok": "green", "warn": "orange", "bad": "red", "neutral": "blue"}
BACKGROUND = "#111217"
PANEL = "#181B1F"
GRID = "#2C3235"
TEXT = "#CCCCDC"
MUTED = "#8E8E8E"

# Page CSS: Grafana's flat panels (panel background, thin border, small square corners), coloured stat values.
CSS = f"""
<style>
[data-testid="stMainBlockContainer"] {{ padding-left: 2rem; padding-right: 2rem; max-width: 100%; }}
div[class*="st-key-tt-tile-"], div[class*="st-key-tt-panel-"], div[class*="st-key-tt-empty-"] {{
    background: {PANEL}; border: 1px solid {GRID}; border-radius: 4px;
}}
div[class*="st-key-tt-tile-"] {{ padding: 0.55rem 0.8rem 0.35rem 0.8rem; gap: 0.1rem; flex: 1 1 auto; }}
div[class*="st-key-tt-panel-"] {{ padding: 0.5rem 0.7rem 0.2rem 0.7rem; }}
div[class*="st-key-tt-empty-"] {{ padding: 1rem 1.2rem; max-width: 56rem; }}
div[class*="st-key-tt-tile-"] [data-testid="stMetricValue"] {{ font-weight: 600; }}
/* a row of tiles is as tall as its tallest tile (the tile grows inside its wrapper, the wrapper in its column) */
[data-testid="stLayoutWrapper"]:has(> div[class*="st-key-tt-tile-"]) {{ flex: 1 1 auto; }}
/* narrow tiles (seven in a row on the overview): wrap a long label or note instead of cutting it off */
div[class*="st-key-tt-tile-"] [data-testid="stMetricLabel"] *,
div[class*="st-key-tt-tile-"] [data-testid="stMetricDelta"] * {{
    white-space: normal; overflow-wrap: anywhere; text-overflow: clip; overflow: visible;
}}
div[class*="st-key-tt-tile-ok-"] [data-testid="stMetricValue"] {{ color: {COLORS["ok"]}; }}
div[class*="st-key-tt-tile-warn-"] [data-testid="stMetricValue"] {{ color: {COLORS["warn"]}; }}
div[class*="st-key-tt-tile-bad-"] [data-testid="stMetricValue"] {{ color: {COLORS["bad"]}; }}
div[class*="st-key-tt-tile-neutral-"] [data-testid="stMetricValue"] {{ color: {COLORS["neutral"]}; }}
div[class*="st-key-tt-tile-"] [data-testid="stPageLink"] p {{ font-size: 0.8rem; color: {MUTED}; }}
div[class*="st-key-tt-panel-"] [data-testid="stPageLink"] p {{ font-size: 0.8rem; color: {MUTED}; }}
.tt-panel-title {{ font-weight: 600; font-size: 0.95rem; color: {TEXT}; margin: 0; }}
.tt-subtitle {{ color: {MUTED}; font-size: 0.85rem; margin-top: -0.6rem; }}
</style>
"""


def style(fig: go.Figure, *, height: int = 300, legend: bool = True) -> go.Figure:
    """Grafana-like panel styling for a plotly figure."""
    fig.update_layout(
        template="plotly_dark",
        paper_bgcolor=PANEL,
        plot_bgcolor=PANEL,
        font={"color": TEXT, "size": 12},
        height=height,
        margin={"l": 40, "r": 16, "t": 36, "b": 32},
        showlegend=legend,
        legend={"orientation": "h", "y": 1.12, "x": 0},
        hovermode="x unified",
        bargap=0.15,
    )
    fig.update_xaxes(gridcolor=GRID, zeroline=False)
    fig.update_yaxes(gridcolor=GRID, zeroline=False)
    # nothing happened (the healthy case: no late refresh, no orphan): counts from 0 to 1, a share from 0 to 100 %,
    # not plotly's -1..1 around a flat line
    if _all_zero(fig, "y"):
        fig.update_layout(yaxis={"range": [0, 1], "dtick": 1})
        if "yaxis2" in fig.layout and fig.layout.yaxis2.overlaying:
            fig.update_layout(yaxis2={"range": [0, 100], "rangemode": None})
    if _all_zero(fig, "x"):  # horizontal bars
        fig.update_layout(xaxis={"range": [0, 1], "dtick": 1})
    moment = _one_moment(fig)
    if moment is not None:  # a single point in time: an hour around it, not plotly's fractions of a millisecond
        fig.update_xaxes(range=[moment - pd.Timedelta(minutes=30), moment + pd.Timedelta(minutes=30)])
        fig.update_traces(mode="lines+markers", selector={"type": "scatter"})
    return fig


def _one_moment(fig: go.Figure):
    """The one time every trace's points share, when the x axis holds times and only one (one event in the
    data); else None."""
    seen = set()
    for trace in fig.data:
        if getattr(trace, "orientation", None) == "h" or trace.x is None or getattr(trace, "base", None) is not None:
            return None
        for x in trace.x:
            if x is None:
                continue
            if not isinstance(x, str | datetime | np.datetime64):
                return None
            try:
                seen.add(pd.Timestamp(x))
            except ValueError:  # a category, not a time
                return None
    seen.discard(pd.NaT)
    return next(iter(seen)) if len(seen) == 1 else None


def _all_zero(fig: go.Figure, axis: str) -> bool:
    """Whether every trace plots numbers along `axis` ("y": vertical bars, lines; "x": horizontal bars) and all
    of them are 0. (A timeline of lanes, bars of categories, have other values.)"""
    values = []
    for trace in fig.data:
        horizontal = getattr(trace, "orientation", None) == "h"
        data = getattr(trace, axis, None)
        if horizontal != (axis == "x") or data is None:
            return False
        values.extend(v for v in data if v is not None and not (isinstance(v, float) and math.isnan(v)))
    return bool(values) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and v == 0 for v in values)


def add_rate_line(fig: go.Figure, x, percent, name: str) -> go.Figure:
    """A share (in %) as a dotted line on a right-hand axis over a count chart: one look on every page."""
    fig.add_scatter(
        x=x,
        y=percent,
        name=name,
        yaxis="y2",
        mode="lines",
        line={"color": MUTED, "width": 1.5, "dash": "dot"},
        connectgaps=False,
    )
    fig.update_layout(
        yaxis2={
            "overlaying": "y",
            "side": "right",
            "showgrid": False,
            "ticksuffix": "%",
            "tickformat": ".0f",
            "tickmode": "auto",
            "nticks": 5,
            "rangemode": "tozero",
            "gridcolor": GRID,
        }
    )
    return fig
