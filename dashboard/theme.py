"""One palette for every page: an event type or an anomaly has the same colour everywhere (dark theme)."""

from __future__ import annotations

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
    # thresholds
    "ok": "#73BF69",
    "warn": "#FF9830",
    "bad": "#F2495C",
}
END_STATE_COLORS = {k: COLORS[k] for k in ("active", "ended", "forced_relogin", "untimed")}
BACKGROUND = "#111217"
PANEL = "#181B1F"
GRID = "#2C3235"
TEXT = "#CCCCDC"


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
    )
    fig.update_xaxes(gridcolor=GRID, zeroline=False)
    fig.update_yaxes(gridcolor=GRID, zeroline=False)
    return fig
