"""Orphaned tokens: sessions whose first notification the receiver never logged, and why.

Panels: orphan chains over time (count and share of the chains started), their likely causes, the pauses in
deliveries with the ones long enough to lose Tyk's three attempts flagged as gaps, and the table of orphan
chains with the cause and its evidence beside each. The causes are computed in SQL (`queries.orphans`); this
page reads the look-back window and renders.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard.components import (
    auto_refresh,
    buckets,
    chain_link,
    csv_download,
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
from dashboard.context import View, data_bounds, query
from dashboard.theme import COLORS, MUTED, TEXT, add_rate_line, style
from queries.orphans import CAUSES, GAP_FACTOR, GAP_MIN_S, orphan_report, orphans_per_bucket
from queries.refresh import access_ttl_s

ORPHAN_RATE = (0.02, 0.10)  # as on the Overview: amber from 2 %, red from 10 % of the chains started
LOOKBACK_MIN = (15, 30, 60, 120, 240)
# the unexplained ones are the real worry; orange like their tile (COLORS["gap"] is the orphan red already)
CAUSE_COLORS = {
    "start of data": MUTED,
    "delivery gap": COLORS["gap"],
    "retry burst": COLORS["retry"],
    "unexplained": COLORS["warn"],
}
TABLE_ROWS = 1000


def render(view: View) -> None:
    page_header("Orphaned tokens", view, subtitle="Sessions the receiver lost track of, and why")
    if not require_data("which sessions lost their parent notification"):
        return
    per_bucket = query(orphans_per_bucket, view.start, view.end, view.bucket)
    if per_bucket.empty or not per_bucket["chains"].sum():
        no_data_in_range(view)
        return
    ttl_min = query(access_ttl_s) // 60
    default = ttl_min if ttl_min in LOOKBACK_MIN else 60
    lookback = st.segmented_control(
        "Look back before each orphan's first event",
        LOOKBACK_MIN,
        default=default,
        required=True,
        format_func=lambda m: fmt_duration(m * 60),
        key="lookback",
        bind="query-params",
        help="The lost parent notification was sent before the orphan's first event, most likely within one "
        "access-token lifetime. Delivery gaps and retry bursts are looked for in this window.",
    )
    report = query(orphan_report, view.start, view.end, view.bucket, float(lookback * 60), TABLE_ROWS)
    per_bucket = report["per_bucket"]
    _tiles(per_bucket, report)
    left, right = st.columns([3, 2])
    with left:
        _over_time_panel(per_bucket, view)
    with right:
        _causes_panel(report)
    _gaps_panel(report, view)
    _orphan_table(report)


def _tiles(per_bucket, report: dict) -> None:
    chains = int(per_bucket["chains"].sum())
    orphans = report["orphans_total"]
    rate = orphans / chains if chains else None
    causes = report["causes"]
    receiver = causes["delivery gap"] + causes["retry burst"]
    cols = st.columns(5)
    with cols[0]:
        stat_tile(
            "Orphan chains",
            fmt_int(orphans),
            key="or-orphans",
            level="neutral",
            note=f"of {fmt_int(chains)} chains started",
            series=per_bucket["orphan_chains"],
            help="Chains whose first event is a refresh of a refresh token never seen issued: the parent "
            "notification is not in the data. Their tokens cannot be tied to a user.",
        )
    with cols[1]:
        stat_tile(
            "Orphan rate",
            fmt_pct(rate),
            key="or-rate",
            level=threshold_level(rate, *ORPHAN_RATE),
            note="of the chains started",
            series=per_bucket["orphan_rate"] * 100,
            help=f"Amber from {ORPHAN_RATE[0]:.0%}, red from {ORPHAN_RATE[1]:.0%}.",
        )
    with cols[2]:
        stat_tile(
            "Receiver lost them",
            fmt_int(receiver),
            key="or-receiver",
            level="bad" if receiver else "ok",
            note=f"{plural(causes['delivery gap'], 'gap')} · {plural(causes['retry burst'], 'retry burst')}",
            series=per_bucket["delivery gap"] + per_bucket["retry burst"],
            help="Orphans with a delivery gap or a burst of Tyk retries in the look-back window: the "
            "receiver was down, unreachable, or answering non-200 when the parent was sent.",
        )
    with cols[3]:
        stat_tile(
            "Start of data",
            fmt_int(causes["start of data"]),
            key="or-start",
            level="neutral",
            note="parent before the export",
            series=per_bucket["start of data"],
            help="First event within one access-token lifetime of the data's first delivery: the session "
            "was already running when the logs begin. Not a fault.",
        )
    with cols[4]:
        stat_tile(
            "Unexplained",
            fmt_int(causes["unexplained"]),
            key="or-unexplained",
            level="warn" if causes["unexplained"] else "ok",
            note="no gap, no retry burst",
            series=per_bucket["unexplained"],
            help="The parent is missing without a trace in the deliveries: lost silently (answered 200 "
            "but not logged, a log line dropped on its way to storage), or issued long before the "
            "data by a device that was idle.",
        )


def _over_time_panel(per_bucket, view: View) -> None:
    with panel(f"Orphan chains over time ({buckets(view.bucket)})", key="or-time"):
        fig = go.Figure()
        for cause in CAUSES:  # stacked bottom-up in this order; the legend lists them the same way
            fig.add_bar(x=per_bucket["t"], y=per_bucket[cause], name=cause, marker_color=CAUSE_COLORS[cause])
        add_rate_line(fig, per_bucket["t"], per_bucket["orphan_rate"] * 100, "% of chains started")
        fig.update_layout(
            barmode="stack",
            yaxis_title="orphan chains",
            legend_traceorder="normal",
        )
        plot(style(fig, height=300))


def _causes_panel(report: dict) -> None:
    with panel("Likely causes", key="or-causes"):
        counts = report["causes"]
        order = list(CAUSES)[::-1]
        fig = go.Figure()
        fig.add_bar(
            x=[counts[c] for c in order],
            y=order,
            orientation="h",
            marker_color=[CAUSE_COLORS[c] for c in order],
            text=[fmt_int(counts[c]) for c in order],
            textposition="auto",
            hovertemplate="%{y}: %{x:,} orphan chains<extra></extra>",
        )
        fig.update_layout(xaxis_title="orphan chains", hovermode="closest")
        fig.update_yaxes(automargin=True)
        plot(style(fig, height=300, legend=False))
        st.caption(
            f"Looked for in the {fmt_duration(report['lookback_s'])} before each orphan's first event."
        )


def _gaps_panel(report: dict, view: View) -> None:
    pauses, gaps = report["pauses"], report["gaps"]
    with panel("Delivery gaps: is the receiver losing notifications?", key="or-gaps"):
        left, right = st.columns([3, 2])
        with left:
            if pauses.empty:
                st.caption(f"No pause of {fmt_duration(GAP_MIN_S)} or more between deliveries in this range.")
            else:
                fig = go.Figure()
                for flagged, name, color in ((False, "pause", MUTED), (True, "gap", COLORS["gap"])):
                    part = pauses[pauses["flagged"] == flagged]
                    if part.empty:
                        continue
                    fig.add_scatter(
                        x=part["gap_start"],
                        y=part["times_usual"],
                        mode="markers",
                        name=name,
                        marker={
                            "color": color,
                            "size": 6 if not flagged else 10,
                            "opacity": 0.6 if not flagged else 1,
                        },
                        customdata=list(
                            zip(
                                part["gap_s"].map(fmt_duration),
                                part["usual_gap_s"].map(fmt_duration),
                                strict=True,
                            )
                        ),
                        hovertemplate="%{x}<br>no delivery for %{customdata[0]} (usual spacing %{customdata[1]})"
                        "<br>%{y:.1f}× the usual spacing<extra></extra>",
                    )
                fig.add_hline(
                    y=GAP_FACTOR,
                    line={"color": COLORS["gap"], "width": 1, "dash": "dash"},
                    annotation={
                        "text": f"gap threshold: {GAP_FACTOR:g}× usual",
                        "font": {"size": 11, "color": TEXT},
                    },
                    annotation_position="top left",
                )
                top = max(float(pauses["times_usual"].max()), GAP_FACTOR) * 1.15
                first, last = data_bounds()
                fig.update_layout(yaxis_title="pause ÷ usual spacing", hovermode="closest")
                fig.update_yaxes(range=[0, top])
                fig.update_xaxes(
                    range=[view.start or first, view.end or last]
                )  # the whole range, even for one point
                plot(style(fig, height=280))
        with right:
            if gaps.empty:
                if pauses.empty:
                    st.markdown("**No delivery gaps found.**")
                else:
                    worst = pauses.loc[pauses["times_usual"].idxmax()]
                    st.markdown(
                        f"**No delivery gaps found.** The most unusual pause was {fmt_duration(worst['gap_s'])} "
                        f"at {worst['gap_start']:%Y-%m-%d %H:%M} UTC, {worst['times_usual']:.1f}× the spacing usual "
                        f"around it ({fmt_duration(worst['usual_gap_s'])}) — below the {GAP_FACTOR:g}× threshold."
                    )
                if not pauses.empty:
                    usual = float(pauses["usual_gap_s"].median())
                    st.caption(
                        f"With one delivery every {fmt_duration(usual)} or so (the median spacing), an outage "
                        "shows as a gap only "
                        f"from about {fmt_duration(max(GAP_FACTOR * usual, GAP_MIN_S))}; a shorter one hides "
                        "among normal quiet periods. A receiver that logs its own restarts, or a health "
                        "check, tells you more than the gaps can."
                    )
            else:
                st.markdown(
                    f"**{fmt_int(len(gaps))} delivery gap{'s' if len(gaps) != 1 else ''}**: no notification "
                    "arrived for far longer than usual. A notification Tyk sent in one was lost after its "
                    "3 attempts."
                )
                shown = gaps.assign(
                    gap=gaps["gap_s"].map(fmt_duration), usual=gaps["usual_gap_s"].map(fmt_duration)
                )
                shown = shown[["gap_start", "gap_end", "gap", "usual", "times_usual"]]
                st.dataframe(
                    shown,
                    hide_index=True,
                    width="stretch",
                    height=min(35 * len(shown) + 38, 240),
                    column_config={
                        "gap_start": st.column_config.DatetimeColumn("from", format="YYYY-MM-DD HH:mm:ss"),
                        "gap_end": st.column_config.DatetimeColumn("to", format="YYYY-MM-DD HH:mm:ss"),
                        "times_usual": st.column_config.NumberColumn("× usual", format="%.1f"),
                    },
                )
                csv_download(shown, "delivery-gaps.csv", key="or-gaps-csv")
        st.caption(
            f"Each point is a pause of {fmt_duration(GAP_MIN_S)} or more between two deliveries, against the "
            "mean spacing over the 3 hours before it. Tyk gives up on a notification after 3 attempts "
            "10 s apart, so a receiver down for about 30 s loses what was sent meanwhile."
        )


def _orphan_table(report: dict) -> None:
    orphans = report["orphans"]
    total = report["orphans_total"]
    title = (
        f"Orphan chains ({fmt_int(total)})"
        if total <= len(orphans)
        else f"Orphan chains (latest {fmt_int(len(orphans))} of {fmt_int(total)})"
    )
    with panel(title, key="or-table"):
        if orphans.empty:
            st.markdown(
                "No orphan chain started in this range: every session's first notification was logged."
            )
            return
        shown = orphans.assign(span_h=orphans["span_s"] / 3600, drill_down=[chain_link(c) for c in orphans["chain"]])[
            [
                "first_seen",
                "chain",
                "drill_down",
                "events",
                "deliveries",
                "span_h",
                "end_state",
                "unknown_parent",
                "cause",
                "evidence",
            ]
        ]
        st.dataframe(
            shown,
            hide_index=True,
            width="stretch",
            height=420,
            column_config={
                "first_seen": st.column_config.DatetimeColumn(
                    "first seen (UTC)", format="YYYY-MM-DD HH:mm:ss"
                ),
                "chain": st.column_config.TextColumn("chain", help="First 10 characters of the chain id"),
                "drill_down": st.column_config.LinkColumn("drill-down", display_text="open ›",
                                                          help="The chain's tree and events"),
                "span_h": st.column_config.NumberColumn("span (h)", format="%.1f"),
                "end_state": st.column_config.TextColumn("end"),
                "unknown_parent": st.column_config.TextColumn(
                    "unknown parent token",
                    help="Fingerprint (first 10 characters) of the refresh token the orphan's first "
                    "refresh presented, which no logged notification issued",
                ),
                "cause": st.column_config.TextColumn("likely cause"),
                "evidence": st.column_config.TextColumn("evidence", width="large"),
            },
        )
        csv_download(shown, "orphan-chains.csv", key="or-table-csv")
        st.caption(
            "Orphan chains have no identity: the identity is known only from the login that started the "
            "session. The Identity drill-down lists orphans that started soon after one of a user's "
            "sessions ended as possible continuations."
        )


auto_refresh(render)
