"""Refresh rates: how often sessions refresh, and how close to the access token's expiry.

Panels: events per bucket (new vs refresh), the refresh interval distribution against the access-token
lifetime with early / on-time / late bands, late refreshes over time, and the identities that refresh the
most per hour of session. Every number comes aggregated from `queries.refresh`; this page only lays out.
Clicking a bar or a row of the top-identities panel opens that identity's drill-down.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard.components import (
    auto_refresh,
    buckets,
    csv_download,
    fmt_duration,
    fmt_int,
    fmt_pct,
    identity_link,
    no_data_in_range,
    open_identity,
    page_header,
    panel,
    plot,
    plot_label,
    plural,
    require_data,
    stat_tile,
    threshold_level,
)
from dashboard.context import View, query
from dashboard.theme import COLORS, MUTED, TEXT, add_rate_line, style
from queries.refresh import HIST_TTLS, events_per_bucket, refresh_profile, top_identities_by_refresh_rate

LATE_SHARE = (0.05, 0.15)  # share of refreshes after expiry: amber from 5 %, red from 15 %
EARLY_SHARE = (0.15, 0.35)  # refreshing well before expiry wastes token requests; a client bug when common
CLASS_LABELS = {"early": "early (< ttl/2)", "on_time": "on time", "late": "late (> ttl)"}
TOP_N = 20


def render(view: View) -> None:
    page_header("Refresh rates", view, subtitle="How often sessions refresh, and how close to expiry")
    if not require_data("refresh rates"):
        return
    events = query(events_per_bucket, view.start, view.end, view.bucket)
    if events.empty or not events["events"].sum():
        no_data_in_range(view)
        return
    profile = query(refresh_profile, view.start, view.end, view.bucket)
    _tiles(events, profile["totals"], profile["over_time"])
    _events_panel(events, view)
    left, right = st.columns(2)
    with left:
        _interval_panel(profile["histogram"], profile["totals"])
    with right:
        _late_panel(profile["over_time"], profile["totals"], view)
    _top_identities_panel(query(top_identities_by_refresh_rate, view.start, view.end, TOP_N))


def _tiles(events, totals: dict, over) -> None:
    n = totals["refreshes"]
    share = {k: (totals[k] / n if n else None) for k in ("early", "on_time", "late")}
    refreshes = int(events.loc[events["type"] == "refresh", "events"].sum())
    logins = int(events.loc[events["type"] == "new", "events"].sum())
    ttl = totals["ttl_s"]
    cols = st.columns(5)
    with cols[0]:
        stat_tile(
            "Refreshes",
            fmt_int(refreshes),
            key="rr-refreshes",
            note=plural(logins, "login"),
            series=events.loc[events["type"] == "refresh", "events"],
            help="`refresh` notifications (distinct events) first seen in the range.",
        )
    with cols[1]:
        median = totals["median_interval_s"]
        stat_tile(
            "Median interval",
            # read off the histogram (within half a bin), or past its last bar
            "–" if median is None else f"≈ {fmt_duration(median)}" if math.isfinite(median)
            else f"≥ {fmt_duration(HIST_TTLS * ttl)}",
            key="rr-median",
            note=f"access token {fmt_duration(ttl)}",
            series=pd.to_numeric(over["median_interval_s"], errors="coerce").replace(math.inf, math.nan) / 60,
            help="Median time from an event to the refresh that replaced its tokens (refreshes whose "
            "parent is in the data), read off the histogram below.",
        )
    with cols[2]:
        stat_tile(
            "Early",
            fmt_pct(share["early"]),
            key="rr-early",
            level=threshold_level(share["early"], *EARLY_SHARE),
            note=f"{fmt_int(totals['early'])} under {fmt_duration(ttl / 2)}",
            series=_share(over, "early"),
            help="Refreshed before half the access-token lifetime: app restarts, a second tab, or a client "
            f"that refreshes too eagerly. Amber from {EARLY_SHARE[0]:.0%}, red from {EARLY_SHARE[1]:.0%}.",
        )
    with cols[3]:
        stat_tile(
            "On time",
            fmt_pct(share["on_time"]),
            key="rr-ontime",
            level="ok" if n else "neutral",
            note=f"{fmt_int(totals['on_time'])} refreshes",
            series=_share(over, "on_time"),
            help="Refreshed between half the access-token lifetime and its expiry.",
        )
    with cols[4]:
        stat_tile(
            "Late",
            fmt_pct(share["late"]),
            key="rr-late",
            level=threshold_level(share["late"], *LATE_SHARE),
            note=f"{fmt_int(totals['late'])} after expiry",
            series=_share(over, "late"),
            help="Refreshed after the access token had expired: the user held an expired token (an idle "
            f"app coming back, or a client that missed its refresh). Amber from {LATE_SHARE[0]:.0%}, "
            f"red from {LATE_SHARE[1]:.0%}.",
        )


def _share(over, cls: str):
    return over[cls] / over["refreshes"].where(over["refreshes"] > 0) * 100


def _events_panel(events, view: View) -> None:
    with panel(f"New logins vs refreshes ({buckets(view.bucket)})", key="rr-events"):
        fig = go.Figure()
        for kind in ("new", "refresh"):
            part = events[events["type"] == kind]
            fig.add_bar(x=part["t"], y=part["events"], name=kind, marker_color=COLORS[kind])
        fig.update_layout(barmode="stack", yaxis_title="events")
        plot(style(fig, height=260))


def _interval_panel(hist, totals: dict) -> None:
    ttl = totals["ttl_s"]
    with panel("Refresh interval vs access-token lifetime", key="rr-intervals"):
        if hist.empty:
            st.caption("No refresh in this range has its parent in the data, so no interval can be measured.")
            return
        width = ttl / 12  # queries.refresh bins: ttl/12 wide, the last one open-ended
        top_min = (float(hist["lo_s"].max()) + width) / 60
        fig = go.Figure()
        # the three bands behind the bars, so the eye reads the class before the count
        for x0, x1, cls in ((0, ttl / 2, "early"), (ttl / 2, ttl, "on_time"), (ttl, None, "late")):
            fig.add_vrect(
                x0=x0 / 60,
                x1=(x1 / 60) if x1 else top_min,
                fillcolor=COLORS[cls],
                opacity=0.07,
                line_width=0,
                layer="below",
            )
        for cls in ("early", "on_time", "late"):
            part = hist[hist["refresh_class"] == cls]
            labels = [
                f"{fmt_duration(lo)}–{fmt_duration(hi)}" if hi != float("inf") else f"≥ {fmt_duration(lo)}"
                for lo, hi in zip(part["lo_s"], part["hi_s"], strict=True)
            ]
            fig.add_bar(
                x=(part["lo_s"] + width / 2) / 60,
                y=part["refreshes"],
                width=width / 60 * 0.9,
                name=CLASS_LABELS[cls],
                marker_color=COLORS[cls],
                customdata=labels,
                hovertemplate="%{customdata}: %{y:,} refreshes<extra>" + CLASS_LABELS[cls] + "</extra>",
            )
        # each label on the side of its line where the bars are low (early ones left of ttl/2, late ones right
        # of ttl): the on-time bars between the lines are the tall ones
        for x, text, side in ((ttl / 2, f"ttl/2 = {fmt_duration(ttl / 2)}", "top left"),
                              (ttl, f"ttl = {fmt_duration(ttl)}", "top right")):
            fig.add_vline(
                x=x / 60,
                line={"color": TEXT, "width": 1, "dash": "dash"},
                annotation={"text": text, "font": {"size": 11, "color": MUTED}},
                annotation_position=side,
            )
        fig.update_layout(
            barmode="overlay",
            xaxis_title="minutes from the parent event to the refresh",
            yaxis_title="refreshes",
            hovermode="closest",
        )
        fig.update_xaxes(range=[0, max(top_min, ttl / 60 * 1.1)])  # (room for the ttl line's label)
        plot(style(fig, height=320))
        overflow = bool(hist.loc[hist["hi_s"] == math.inf, "refreshes"].sum())
        st.caption(
            (f"The last bar holds every interval of {fmt_duration(HIST_TTLS * ttl)} or more. " if overflow else "")
            + f"The access-token lifetime is {fmt_duration(ttl)} (set with `--access-ttl` at ingest)."
        )


def _late_panel(over, totals: dict, view: View) -> None:
    with panel("Late refreshes over time", key="rr-late-time"):
        fig = go.Figure()
        fig.add_bar(x=over["t"], y=over["late"], name="late refreshes", marker_color=COLORS["late"])
        add_rate_line(fig, over["t"], over["late_share"] * 100, "% of refreshes")
        fig.update_layout(
            yaxis_title="late refreshes",
        )
        plot(style(fig, height=320))
        st.caption(
            "A late refresh comes after the access token expired: an app woken after idling, or one that "
            "missed its refresh. A burst at one time points at a client release or an outage."
        )


def _top_identities_panel(top) -> None:
    with panel(
        f"Top {TOP_N} identities by refresh rate",
        key="rr-top",
        link="identity",
        link_label="Identity drill-down",
    ):
        if top.empty:
            st.caption(
                "No identified sessions started in this range: identities come from a user field in the "
                "logs or from an identity mapping file (Upload page)."
            )
            return
        left, right = st.columns([2, 3])
        with left:
            ordered = top.iloc[::-1].reset_index(drop=True)
            # bars at positions, the names as tick labels: a name is shown as written (escaped, shortened when
            # long) and two names never share a bar
            labels = [plot_label(i) for i in ordered["identity"]]
            fig = go.Figure()
            fig.add_bar(
                x=ordered["refreshes_per_hour"],
                y=list(range(len(ordered))),
                orientation="h",
                marker_color=COLORS["refresh"],
                name="refreshes per hour",
                customdata=ordered[["refreshes", "session_hours"]],
                hovertext=labels,
                hovertemplate="%{hovertext}<br>%{x:.2f} refreshes/h (%{customdata[0]:,} in %{customdata[1]:.1f} h)"
                "<extra></extra>",
            )
            fig.update_layout(
                xaxis_title="refreshes per hour of session", hovermode="closest", margin={"l": 8}
            )
            fig.update_yaxes(automargin=True, tickvals=list(range(len(ordered))), ticktext=labels)
            event = st.plotly_chart(
                style(fig, height=max(260, 22 * len(top) + 60), legend=False),
                width="stretch",
                config={"displayModeBar": False},
                on_select="rerun",
                selection_mode="points",
                key="rr-top-chart",
            )
            picked = [p.get("y") for p in (event.selection.points if event else []) if p.get("y") is not None]
            if picked:
                open_identity(str(ordered["identity"].iloc[int(picked[0])]))
        with right:
            shown = top.assign(drill_down=[identity_link(i) for i in top["identity"]])
            table_event = st.dataframe(
                shown,
                hide_index=True,
                width="stretch",
                on_select="rerun",
                selection_mode="single-row",
                key="rr-top-table",
                column_config={
                    "identity": st.column_config.TextColumn("identity"),
                    "chains": st.column_config.NumberColumn("chains"),
                    "refreshes": st.column_config.NumberColumn("refreshes", format="%d"),
                    "session_hours": st.column_config.NumberColumn("session h", format="%.1f"),
                    "refreshes_per_hour": st.column_config.NumberColumn("per hour", format="%.2f"),
                    "early_refreshes": st.column_config.NumberColumn("early"),
                    "late_refreshes": st.column_config.NumberColumn("late"),
                    "forks": st.column_config.NumberColumn("forks"),
                    "drill_down": st.column_config.LinkColumn("drill-down", display_text="open ›"),
                },
            )
            rows = table_event.selection.rows if table_event else []
            if rows:
                open_identity(str(top.iloc[rows[0]]["identity"]))
            csv_download(top, "top-identities-by-refresh-rate.csv", key="rr-top-csv")
        st.caption(
            "Refreshes per hour of session time (each session counts its span plus one access-token "
            "lifetime). A healthy client refreshes about once per token lifetime; far more points at a "
            "client that refreshes on every start or in a loop. Click a bar or a row for the drill-down."
        )


auto_refresh(render)
