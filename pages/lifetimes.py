"""Session lifetimes: how long sessions live, and who keeps losing theirs.

Panels: the lifetime distribution (stacked by how each session ended), the survival curve (share of sessions
still alive after t, Kaplan-Meier with the active ones censored, computed in SQL), and the per-identity table,
sortable, where a click on a row (or its link) opens the Identity drill-down for that identity.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from dashboard.components import (
    auto_refresh,
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
    require_data,
    stat_tile,
    threshold_level,
)
from dashboard.context import View, query
from dashboard.theme import COLORS, END_STATE_COLORS, MUTED, TEXT, style
from queries.lifetimes import KINDS, identity_lifetimes, lifetime_histogram, lifetime_totals, survival_curve
from queries.refresh import access_ttl_s

LIFETIME_TTLS = (2.0, 1.25)  # as on the Overview: median lifetime in token lifetimes, lower is worse
FORCED_RELOGIN_RATE = (0.10, 0.30)
END_STATE_LABELS = {
    "active": "still active",
    "ended": "ended",
    "forced_relogin": "forced re-login",
    "untimed": "untimed",
}
TABLE_ROWS = 2000


def render(view: View) -> None:
    page_header("Session lifetimes", view, subtitle="How long sessions live, and who keeps losing theirs")
    if not require_data("session lifetimes"):
        return
    kind = st.segmented_control(
        "Sessions",
        list(KINDS),
        default="all",
        required=True,
        format_func=KINDS.get,
        key="kind",
        bind="query-params",
        help="Orphan chains start mid-session, so their lifetimes are too short; "
        "unidentified chains are mostly client_credentials tokens (one event each).",
    )
    totals = query(lifetime_totals, view.start, view.end, kind)
    if not totals["chains"]:
        no_data_in_range(view)
        return
    ttl = float(query(access_ttl_s))
    _tiles(totals, ttl)
    left, right = st.columns(2)
    with left:
        _histogram_panel(query(lifetime_histogram, view.start, view.end, kind))
    with right:
        _survival_panel(query(survival_curve, view.start, view.end, kind), totals, ttl)
    _identity_panel(query(identity_lifetimes, view.start, view.end, TABLE_ROWS))


def _tiles(totals: dict, ttl: float) -> None:
    median = totals["median_lifetime_s"]
    # as on the Overview: only a session with an identity can end in a forced re-login
    identified = totals["identified"]
    forced_rate = totals["forced_relogins"] / identified if identified else None
    cols = st.columns(5)
    with cols[0]:
        stat_tile(
            "Sessions",
            fmt_int(totals["chains"]),
            key="lt-sessions",
            note=f"{fmt_int(totals['active'])} still active",
            help="Chains started in the range. A session's lifetime is its span (last event − first) plus "
            "one access-token lifetime, since the last access token stays valid that long.",
        )
    with cols[1]:
        ratio = median / ttl if median and ttl else None
        stat_tile(
            "Median lifetime",
            fmt_duration(median),
            key="lt-median",
            level=threshold_level(ratio, *LIFETIME_TTLS, higher_is_worse=False),
            note=f"access token {fmt_duration(ttl)}",
            help="Of the sessions started in the range (the Overview's tile counts those that ended in it: "
            "over a short range the two differ, as sessions started lately are still young). "
            f"Amber at {LIFETIME_TTLS[0]:g}× the access-token lifetime or less, red at "
            f"{LIFETIME_TTLS[1]:g}× or less: sessions rarely survive a refresh.",
        )
    with cols[2]:
        stat_tile(
            "90th percentile",
            fmt_duration(totals["p90_lifetime_s"]),
            key="lt-p90",
            note="of lifetimes",
            help="One session in ten lives longer than this.",
        )
    with cols[3]:
        stat_tile("Longest", fmt_duration(totals["max_lifetime_s"]), key="lt-max", note="single session")
    with cols[4]:
        stat_tile(
            "Forced re-logins",
            fmt_int(totals["forced_relogins"]),
            key="lt-relogins",
            level=threshold_level(forced_rate, *FORCED_RELOGIN_RATE),
            note=f"{fmt_pct(forced_rate, 0)} of user sessions started",
            help="The identity logged in again while the session's last refresh token was never used and "
            "still valid: the app lost its tokens. Amber from "
            f"{FORCED_RELOGIN_RATE[0]:.0%}, red from {FORCED_RELOGIN_RATE[1]:.0%} of the sessions with an identity.",
        )


def _histogram_panel(hist) -> None:
    with panel("Lifetime distribution", key="lt-hist"):
        if hist.empty:
            st.caption("No session with a known lifetime in this range.")
            return
        bins = sorted(hist["bin"].unique())
        edges = {b: (lo, hi) for b, lo, hi in zip(hist["bin"], hist["lo_s"], hist["hi_s"], strict=True)}
        labels = {b: fmt_duration(edges[b][0]) for b in bins}  # bars named by their lower edge, log steps
        fig = go.Figure()
        for state, color in END_STATE_COLORS.items():
            part = hist[hist["end_state"] == state]
            if part.empty:
                continue
            ranges = [
                f"{fmt_duration(lo)}–{fmt_duration(hi)}"
                for lo, hi in zip(part["lo_s"], part["hi_s"], strict=True)
            ]
            fig.add_bar(
                x=[labels[b] for b in part["bin"]],
                y=part["chains"],
                name=END_STATE_LABELS[state],
                marker_color=color,
                customdata=ranges,
                hovertemplate="%{customdata}: %{y:,} sessions<extra>" + END_STATE_LABELS[state] + "</extra>",
            )
        fig.update_layout(
            barmode="stack",
            xaxis_title="session lifetime (log scale: each bar √2 × longer)",
            yaxis_title="sessions",
            hovermode="closest",
            bargap=0.08,
        )
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=[labels[b] for b in bins])
        plot(style(fig, height=320))
        st.caption(
            "A session lives at least one access-token lifetime (its last token stays valid that long), "
            "so the first bar holds the sessions that never refreshed."
        )


def _survival_panel(curve, totals: dict, ttl: float) -> None:
    with panel("Survival: sessions still alive after t", key="lt-survival"):
        if curve.empty:
            st.caption("No session with a known lifetime in this range.")
            return
        curve = curve[curve["t_s"] > 0]  # a log axis starts at one token lifetime
        hours = curve["t_s"] / 3600
        fig = go.Figure()
        fig.add_scatter(
            x=hours,
            y=curve["alive"] * 100,
            mode="lines",
            name="alive",
            line={"color": COLORS["active"], "width": 2, "shape": "hv"},
            fill="tozeroy",
            fillcolor="rgba(115,191,105,0.12)",
            customdata=list(
                zip(curve["t_s"].map(fmt_duration), curve["at_risk"], curve["ended"], strict=True)
            ),
            hovertemplate="after %{customdata[0]}: %{y:.1f}% alive<br>%{customdata[1]:,} at risk, "
            "%{customdata[2]:,} ended in the step<extra></extra>",
        )
        fig.add_hline(y=50, line={"color": MUTED, "width": 1, "dash": "dot"})
        median = totals["median_lifetime_s"]
        if median:
            fig.add_vline(x=median / 3600, line={"color": TEXT, "width": 1, "dash": "dash"})
            # on a log axis an annotation's x is log10 of the value (shapes take the value itself)
            fig.add_annotation(
                x=math.log10(median / 3600),
                y=100,
                text=f"median {fmt_duration(median)}",
                showarrow=False,
                xanchor="left",
                yanchor="top",
                xshift=4,
                font={"size": 11, "color": MUTED},
            )
        ticks = [
            h for h in (1, 2, 4, 8, 12, 24, 48, 96, 168, 336, 720) if ttl / 3600 <= h <= hours.max() * 1.05
        ]
        fig.update_xaxes(type="log", tickvals=ticks, ticktext=[fmt_duration(h * 3600) for h in ticks])
        fig.update_layout(
            xaxis_title="time since the session started (log scale)",
            yaxis_title="sessions alive",
            hovermode="closest",
        )
        fig.update_yaxes(range=[0, 102], ticksuffix="%")
        plot(style(fig, height=320, legend=False))
        st.caption(
            "Kaplan-Meier estimate: sessions still active at the end of the data count as alive up to "
            "their current lifetime and then leave the count, instead of counting as ended."
        )


def _identity_panel(per_identity) -> None:
    total = int(per_identity["identities_total"].iloc[0]) if len(per_identity) else 0
    title = "Sessions per identity" + (
        f" (worst {fmt_int(len(per_identity))} of {fmt_int(total)})"
        if total > len(per_identity)
        else f" ({fmt_int(total)})"
    )
    with panel(title, key="lt-identities", link="identity", link_label="Identity drill-down"):
        if per_identity.empty:
            st.markdown(
                "No identified sessions started in this range. Identities come from a user field in the "
                "log records or from an identity mapping file: load one on the Upload page."
            )
            return
        shown = per_identity.drop(columns=["identities_total"]).assign(
            median_lifetime_h=per_identity["median_lifetime_s"] / 3600,
            max_lifetime_h=per_identity["max_lifetime_s"] / 3600,
            drill_down=[identity_link(i) for i in per_identity["identity"]],
        )[
            [
                "identity",
                "chains",
                "median_lifetime_h",
                "max_lifetime_h",
                "forced_relogins",
                "late_refreshes",
                "refreshes",
                "forks",
                "last_seen",
                "drill_down",
            ]
        ]
        event = st.dataframe(
            shown,
            hide_index=True,
            width="stretch",
            height=420,
            on_select="rerun",
            selection_mode="single-row",
            key="lt-identity-table",
            column_config={
                "identity": st.column_config.TextColumn("identity"),
                "chains": st.column_config.NumberColumn("sessions"),
                "median_lifetime_h": st.column_config.NumberColumn("median lifetime (h)", format="%.1f"),
                "max_lifetime_h": st.column_config.NumberColumn("max lifetime (h)", format="%.1f"),
                "forced_relogins": st.column_config.NumberColumn("forced re-logins"),
                "late_refreshes": st.column_config.NumberColumn("late refreshes"),
                "refreshes": st.column_config.NumberColumn("refreshes"),
                "forks": st.column_config.NumberColumn("forks"),
                "last_seen": st.column_config.DatetimeColumn("last event (UTC)", format="YYYY-MM-DD HH:mm"),
                "drill_down": st.column_config.LinkColumn("drill-down", display_text="open ›"),
            },
        )
        rows = event.selection.rows if event else []
        if rows:
            open_identity(str(shown.iloc[rows[0]]["identity"]))
        csv_download(shown.drop(columns=["drill_down"]), "sessions-per-identity.csv", key="lt-identities-csv")
        st.caption(
            "Sorted by forced re-logins; click a column header to sort by another. Select a row (the box on "
            "its left) or click its link to open that identity's drill-down."
        )


auto_refresh(render)
