"""Overview: is the receiver healthy, are sessions surviving? Seven stat tiles and four time-series panels.

Every figure comes aggregated from `queries.overview` (DuckDB); this page only picks colours and lays out.
Thresholds are Grafana-style: green below the first, amber from it, red from the second. Each tile and panel
links to the page that explains its number.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard.components import (
    auto_refresh,
    empty_state,
    fmt_duration,
    fmt_int,
    fmt_pct,
    no_data_in_range,
    page_header,
    panel,
    plot,
    plural,
    require_data,
    stat_tile,
    threshold_level,
)
from dashboard.context import View, get_store, query
from dashboard.theme import COLORS, add_rate_line, style
from queries.overview import series, store_counts, tiles

# (warn from, bad from). Rates are shares (0.02 = 2 %).
# orphan chains / chains started: lost notifications, or data that starts mid-session
ORPHAN_RATE = (0.02, 0.10)
DUPLICATE_RATE = (0.01, 0.05)  # Tyk retries: the receiver answered non-200 or slower than 10 s
FORKS = (1, 10)  # any refresh-token reuse deserves a look
FORCED_RELOGIN_RATE = (0.10, 0.30)  # of the identified sessions that ended in the range


def render(view: View) -> None:
    page_header("Overview", view, subtitle="Session health of your Tyk OAuth clients")
    counts = query(store_counts)
    if not counts["deliveries"] and counts["rejected"]:
        require_data("session health")  # says that every record was rejected, and where they are
        return
    if not counts["deliveries"]:
        db = get_store().path
        empty_state(
            "No data yet",
            "tokentrail shows what your Tyk OAuth notification logs say about your users' sessions. Upload your "
            "receiver's log exports, or load a simulated fleet (five days, 150 users, with lost notifications, "
            "retries and forks). From the command line, with this dashboard stopped:",
            command=f"tokentrail demo --db {db} --force   # replaces this empty database\ntokentrail serve --db {db}",
            demo_button="overview-demo",
        )
        return

    t = query(tiles, view.start, view.end)
    s = query(series, view.start, view.end, view.bucket)
    _tiles(t, s)
    if not (t["events"] or t["deliveries"] or t["chains_started"]):
        no_data_in_range(view)
        return
    if not require_data("charts over time"):  # the events have no times: the tiles above are all there is
        return
    _panels(s)


def _tiles(t: dict, s) -> None:
    ttl = t["access_token_lifetime_s"]
    lifetime = t["median_session_lifetime_s"]
    dup_series = (s["duplicates"] / s["deliveries"].where(s["deliveries"] > 0)).fillna(0) * 100
    cols = st.columns(7)
    with cols[0]:
        stat_tile(
            "Active now",
            fmt_int(t["active_sessions"]),
            key="active",
            level="neutral",
            note="at the data's end",
            series=s["active_sessions"],
            link="lifetimes",
            link_label="Lifetimes",
            help="Chains whose last access token is still valid (last event + access-token lifetime) at the "
            "last event in the data. The sparkline: sessions alive in each bucket.",
        )
    with cols[1]:
        stat_tile(
            "Refreshes",
            fmt_int(t["refreshes"]),
            key="refreshes",
            level="neutral",
            note=plural(t["new_events"], "login"),
            series=s["refreshes"],
            link="refresh_rates",
            link_label="Refresh rates",
            help="`refresh` notifications (distinct events, retries not counted) first seen in the range.",
        )
    with cols[2]:
        stat_tile(
            "Orphan rate",
            fmt_pct(t["orphan_rate"]),
            key="orphans",
            level=threshold_level(t["orphan_rate"], *ORPHAN_RATE),
            note=plural(t["orphan_chains"], "orphan chain"),
            series=s["orphan_chains"],
            link="orphans",
            link_label="Orphans",
            help="Chains started in the range whose first event is a refresh of a token never seen issued: "
            "the parent notification was lost, or lies before the data. Such sessions cannot be tied "
            f"to a user. Here: {fmt_int(t['orphan_chains'])} of {fmt_int(t['chains_started'])} chains. "
            f"Amber from {ORPHAN_RATE[0]:.0%}, red from {ORPHAN_RATE[1]:.0%}.",
        )
    with cols[3]:
        stat_tile(
            "Forks",
            fmt_int(t["forks"]),
            key="forks",
            level=threshold_level(t["forks"], *FORKS),
            note="reused tokens" if t["forks"] != 1 else "reused token",
            series=s["forks"],
            link="identity",
            link_label="Drill-down",
            help="Refresh tokens presented by two or more refresh events: two app instances racing, or a "
            "replayed token (a security signal). Counted when the token was presented again. "
            f"Amber from {FORKS[0]}, red from {FORKS[1]}.",
        )
    with cols[4]:
        stat_tile(
            "Retry rate",
            fmt_pct(t["duplicate_rate"]),
            key="duplicates",
            level=threshold_level(t["duplicate_rate"], *DUPLICATE_RATE),
            note=plural(t["duplicates"], "retry", "retries"),
            series=dup_series,
            link="orphans",
            link_label="Orphans",
            help="(deliveries − distinct events) / deliveries. Tyk re-sends a notification 10 s later when the "
            "receiver answers anything but 200 or takes over 10 s; after 3 failures it is lost. "
            f"Amber from {DUPLICATE_RATE[0]:.0%}, red from {DUPLICATE_RATE[1]:.0%}.",
        )
    with cols[5]:
        stat_tile(
            "Forced re-logins",
            fmt_int(t["forced_relogins"]),
            key="relogins",
            level=threshold_level(t["forced_relogin_rate"], *FORCED_RELOGIN_RATE),
            note=f"{fmt_pct(t['forced_relogin_rate'], 0)} of user sessions ended",
            series=s["forced_relogins"],
            link="lifetimes",
            link_label="Lifetimes",
            help="Sessions (ending in the range) after which the same identity logged in again although the "
            "last refresh token was never used and was still valid: the app lost its session. Colour by "
            f"share of identified sessions: amber from {FORCED_RELOGIN_RATE[0]:.0%}, "
            f"red from {FORCED_RELOGIN_RATE[1]:.0%}.",
        )
    with cols[6]:
        stat_tile(
            "Median lifetime",
            fmt_duration(lifetime),
            key="lifetime",
            level="neutral",
            note=f"token TTL {fmt_duration(ttl)}",
            series=s["median_session_lifetime_s"] / 3600,
            link="lifetimes",
            link_label="Lifetimes",
            help="Median over the sessions last seen in the range of: last event − first event + the "
            "access-token lifetime (the last token stays valid that long). No thresholds: machine clients "
            "(client_credentials) never refresh, so a fleet of them has a median of one token lifetime "
            "and is healthy; forced re-logins are the signal for sessions that end too early.",
        )


def _panels(s) -> None:
    left, right = st.columns(2)
    with left, panel("New vs refresh events", key="events", link="refresh_rates", link_label="Refresh rates"):
        fig = go.Figure()
        fig.add_bar(x=s["bucket"], y=s["new_events"], name="new", marker_color=COLORS["new"])
        fig.add_bar(x=s["bucket"], y=s["refreshes"], name="refresh", marker_color=COLORS["refresh"])
        fig.update_layout(barmode="stack")
        plot(style(fig, height=280))
    with right, panel("Orphan chains over time", key="orphans", link="orphans", link_label="Orphaned tokens"):
        rate = (s["orphan_chains"] / s["chains_started"].where(s["chains_started"] > 0)) * 100
        fig = go.Figure()
        fig.add_bar(x=s["bucket"], y=s["orphan_chains"], name="orphan chains", marker_color=COLORS["orphan"])
        add_rate_line(fig, s["bucket"], rate, "% of chains started")
        plot(style(fig, height=280))

    left, right = st.columns(2)
    with left, panel("Active sessions", key="active", link="lifetimes", link_label="Session lifetimes"):
        fig = go.Figure()
        fig.add_scatter(
            x=s["bucket"],
            y=s["active_sessions"],
            name="sessions alive",
            mode="lines",
            line={"color": COLORS["active"], "width": 1.5},
            fill="tozeroy",
            fillcolor="rgba(115,191,105,0.15)",
        )
        plot(style(fig, height=240, legend=False))
    with (
        right,
        panel(
            "Tyk retries (duplicate deliveries)", key="retries", link="orphans", link_label="Orphaned tokens"
        ),
    ):
        rate = (s["duplicates"] / s["deliveries"].where(s["deliveries"] > 0)) * 100
        fig = go.Figure()
        fig.add_bar(x=s["bucket"], y=s["duplicates"], name="retried deliveries", marker_color=COLORS["retry"])
        add_rate_line(fig, s["bucket"], rate, "% of deliveries")
        plot(style(fig, height=240))


auto_refresh(render)
