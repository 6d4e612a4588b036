"""Identity drill-down: one user's sessions token by token, and why they dropped.

The identity is a selectbox bound to the URL (`?identity=...`, key "identity"), so a link from any other
page (or a copied URL) opens the same person; any identity can be typed, not only the ones listed. Panels:
the plain-words answer to "why did this user's session drop?" (`queries.identity.session_findings`), the
chains on a timeline (each access token's validity window as a bar, refreshes as ticks, late-refresh gaps,
forks and re-logins marked; click a chain to open its tree), the lineage tree of the chosen chain, and its
event table. All data comes from `queries.identity`; this page lays out.
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard.components import (
    auto_refresh,
    csv_download,
    empty_state,
    fmt_duration,
    fmt_int,
    md_literal,
    page_header,
    panel,
    plot,
    plural,
    stat_tile,
)
from dashboard.context import View, query
from dashboard.theme import COLORS, GRID, MUTED, style
from queries.identity import chain_by_short, identity_detail, identity_options, lineage_tree
from queries.lifetimes import identity_lifetimes
from queries.overview import store_counts

KIND_ORDER = ("forced_relogin", "fork", "orphan_guess", "late_refresh", "ended", "active")
KIND_BADGES = {
    "forced_relogin": ":red-badge[forced re-login]",
    "fork": ":orange-badge[fork]",
    "orphan_guess": ":violet-badge[possible continuation]",
    "late_refresh": ":orange-badge[late refresh]",
    "ended": ":gray-badge[ended]",
    "active": ":green-badge[active]",
}
KIND_SUMMARY = {
    "forced_relogin": "the user logged in again while the previous session's refresh token was unused and still "
    "valid: the app lost its tokens",
    "fork": "a refresh token was presented twice: two app instances racing, or a replayed (stolen) token",
    "orphan_guess": "an orphan chain started soon after a session ended: the receiver may have missed the "
    "notification that continued it (a guess, by time only)",
    "late_refresh": "the session went on, but the client held an expired access token until it refreshed",
    "ended": "the session stopped refreshing; the notifications do not say why",
    "active": "still running at the end of the data",
}
END_LABELS = {"active": "active", "ended": "ended", "forced_relogin": "forced re-login", "untimed": "untimed"}
_TIMELINE_KEY = "id-timeline"


def render(view: View) -> None:
    page_header("Identity drill-down", view, subtitle="One user's sessions, token by token")
    if not query(store_counts)["deliveries"]:
        empty_state(
            "No data yet",
            "Upload Tyk notification log exports (and an identity mapping) to follow a "
            "user's sessions, or load the demo data from the Overview.",
        )
        return
    options = query(identity_options, view.start, view.end)
    # a chain named without its identity (a link from the Orphaned tokens page): its identity's page, or, for an
    # orphan chain, which has none, the chain alone
    named = st.query_params.get("chain")
    lone = None
    if named and not (st.session_state.get("identity") or st.query_params.get("identity")):
        lone = query(chain_by_short, named)
        if not lone.empty and lone["identity"].iloc[0] is not None:
            st.session_state["identity"] = lone["identity"].iloc[0]
            lone = None
    # an identity from the URL or another page may lie outside the listed ones (other range, beyond the list)
    current = st.session_state.get("identity") or st.query_params.get("identity")
    if current and current not in options:
        options = [current, *options]
    who = st.selectbox(
        "Identity",
        options,
        index=None,
        key="identity",
        bind="query-params",
        accept_new_options=True,
        filter_mode="contains",
        placeholder=f"Search {fmt_int(len(options))} identities with sessions in this "
        "range, or type any identity",
        help="Identities come from a user field on the login's log record, or from an identity mapping file "
        "(auth code → user). Orphan chains have none.",
    )
    if not who:
        if lone is not None and not lone.empty:
            st.markdown(f"**Orphan chain {lone['chain'].iloc[0]}**: its root is a refresh whose parent notification "
                        "is not in the data, so no login, and no identity, leads to it.")
            _chain_panels(lone.drop(columns="identity"))
            return
        _pick_hint(view)
        return
    detail = query(identity_detail, who, view.start, view.end)
    overview, chains = detail["overview"], detail["chains"]
    if not overview["chains"]:
        empty_state(
            "Unknown identity",
            f"No session in the data belongs to **{md_literal(who)}**. Check the spelling; "
            "identities come from a user field in the log records or from an identity mapping file, "
            "which you can load on the Upload page.",
        )
        return
    if chains.empty:
        empty_state(
            "No sessions in this range",
            f"**{md_literal(who)}** has {plural(overview['chains'], 'session')} between "
            f"{overview['first_seen']:%Y-%m-%d %H:%M} and {overview['last_seen']:%Y-%m-%d %H:%M} UTC, "
            "none starting in this range: widen the time range in the sidebar.",
            upload_link=False,
        )
        return
    findings, events, ttl = detail["findings"], detail["events"], detail["ttl_s"]
    _tiles(chains, findings)
    _answer_panel(who, chains, findings)
    _timeline_panel(chains, events, findings, ttl)
    _chain_panels(chains)


# -- no identity yet ------------------------------------------------------------------------------------------


def _pick_hint(view: View) -> None:
    worst = query(identity_lifetimes, view.start, view.end, 15)
    with panel(
        "Where to start: identities with the most forced re-logins",
        key="id-start",
        link="lifetimes",
        link_label="All identities",
    ):
        if worst.empty:
            st.markdown(
                "No identified sessions in this range. Identities come from a user field in the log "
                "records or from an identity mapping file (Upload page); orphan chains have none."
            )
            return
        shown = worst[["identity", "chains", "forced_relogins", "late_refreshes", "forks", "last_seen"]]

        def pick() -> None:  # a callback: runs before the script, so it may set the bound widget's value
            rows = st.session_state["id-start-table"].selection.rows
            if rows:
                st.session_state["identity"] = str(shown.iloc[rows[0]]["identity"])

        st.dataframe(
            shown,
            hide_index=True,
            width="stretch",
            on_select=pick,
            selection_mode="single-row",
            key="id-start-table",
            column_config={
                "chains": st.column_config.NumberColumn("sessions"),
                "forced_relogins": st.column_config.NumberColumn("forced re-logins"),
                "late_refreshes": st.column_config.NumberColumn("late refreshes"),
                "last_seen": st.column_config.DatetimeColumn("last event (UTC)", format="YYYY-MM-DD HH:mm"),
            },
        )
        st.caption(
            "Pick an identity above, select a row here, or click one on the Session lifetimes or Refresh "
            "rates page."
        )


# -- tiles and the answer -------------------------------------------------------------------------------------


def _count(findings: pd.DataFrame, kind: str) -> int:
    return int((findings["kind"] == kind).sum()) if len(findings) else 0


def _tiles(chains: pd.DataFrame, findings: pd.DataFrame) -> None:
    forced, forks = _count(findings, "forced_relogin"), _count(findings, "fork")
    late, guesses = _count(findings, "late_refresh"), _count(findings, "orphan_guess")
    active = int((chains["end_state"] == "active").sum())
    cols = st.columns(6)
    with cols[0]:
        stat_tile(
            "Sessions",
            fmt_int(len(chains)),
            key="id-sessions",
            note=f"{active} still active",
            help="Chains of this identity starting in the range.",
        )
    with cols[1]:
        stat_tile(
            "Refreshes",
            fmt_int(int(chains["refreshes"].sum())),
            key="id-refreshes",
            note=f"{fmt_int(int(chains['events'].sum()))} events",
        )
    with cols[2]:
        stat_tile(
            "Forced re-logins",
            fmt_int(forced),
            key="id-forced",
            level="bad" if forced else "ok",
            note="app lost its tokens",
        )
    with cols[3]:
        stat_tile(
            "Late refreshes",
            fmt_int(late),
            key="id-late",
            level="warn" if late else "ok",
            note="expired token held",
        )
    with cols[4]:
        stat_tile(
            "Forks",
            fmt_int(forks),
            key="id-forks",
            level="bad" if forks else "ok",
            note="refresh token reused",
        )
    with cols[5]:
        stat_tile(
            "Possible continuations",
            fmt_int(guesses),
            key="id-guesses",
            level="warn" if guesses else "ok",
            note="a guess, by time",
        )


def _answer_panel(who: str, chains: pd.DataFrame, findings: pd.DataFrame) -> None:
    with panel("Why did this user's session drop?", key="id-answer"):
        serious = findings[findings["kind"].isin(("forced_relogin", "fork", "orphan_guess", "late_refresh"))]
        if serious.empty:
            st.markdown(
                f"Nothing in the data says a session of **{md_literal(who)}** dropped in this range: no forced "
                "re-login, no fork, no late refresh, and no orphan chain right after a session ended."
            )
        for kind in KIND_ORDER[:4]:
            part = findings[findings["kind"] == kind]
            if part.empty:
                continue
            n = len(part)
            if kind == "orphan_guess":  # the best guess: fewest other sessions ending in the same window
                pick, label = (
                    part.sort_values(["rivals", "time"], ascending=[True, False]).iloc[0],
                    "Best guess",
                )
            else:
                pick, label = part.iloc[0], "Latest"
            st.markdown(
                f"{KIND_BADGES[kind]} **{fmt_int(n)}×** — {KIND_SUMMARY[kind]}.  \n{label}: {pick['text']}"
            )
        if findings.empty:
            return
        with st.expander("The finding" if len(findings) == 1 else f"All {fmt_int(len(findings))} findings, newest first"):
            shown = findings[["time", "chain", "kind", "text"]]
            st.dataframe(
                shown,
                hide_index=True,
                width="stretch",
                height=320,
                column_config={
                    "time": st.column_config.DatetimeColumn("time (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                    "text": st.column_config.TextColumn("what the data says", width="large"),
                },
            )
            csv_download(shown, "identity-findings.csv", key="id-findings-csv")


# -- the timeline ---------------------------------------------------------------------------------------------


def _labels(chains: pd.DataFrame) -> dict[str, str]:
    return {
        c: f"{c} · {t:%m-%d %H:%M}" if not pd.isna(t) else c
        for c, t in zip(chains["chain"], chains["first_seen"], strict=True)
    }


def _timeline_panel(chains: pd.DataFrame, events: pd.DataFrame, findings: pd.DataFrame, ttl: float) -> None:
    labels = _labels(chains)
    order = [labels[c] for c in chains["chain"]]
    timed = events[events["time"].notna()]
    ms = ttl * 1000.0
    with panel("Sessions on a timeline: each access token's validity window", key="id-timeline-panel"):
        if timed.empty:
            st.caption("None of these sessions' events has a time (bare Tyk bodies, or an export whose time field "
                       "was not found): nothing to place on a timeline. The chains and their trees are below.")
            return
        fig = go.Figure()
        for kind in ("new", "refresh"):
            part = timed[timed["type"] == kind]
            if part.empty:
                continue
            fig.add_bar(
                base=part["time"],
                x=[ms] * len(part),
                y=part["chain"].map(labels),
                orientation="h",
                name=f"{kind} token valid",
                marker={"color": COLORS[kind], "opacity": 0.55, "line": {"width": 0}},
                customdata=list(zip(part["access_fp"], part["refresh_fp"].fillna("–"), strict=True)),
                hovertemplate="%{base|%Y-%m-%d %H:%M:%S} " + kind + "<br>access %{customdata[0]} · refresh "
                "%{customdata[1]}<extra></extra>",
            )
        late = timed[(timed["refresh_class"] == "late") & timed["parent_time"].notna()]
        if not late.empty:
            expired = late["parent_time"] + timedelta(seconds=ttl)
            fig.add_bar(
                base=expired,
                x=(late["time"] - expired).dt.total_seconds() * 1000,
                y=late["chain"].map(labels),
                orientation="h",
                name="expired, not yet refreshed (late)",
                width=0.35,
                marker={"color": COLORS["late"], "line": {"width": 0}},
                customdata=[fmt_duration(s) for s in (late["time"] - expired).dt.total_seconds()],
                hovertemplate="access token expired %{base|%Y-%m-%d %H:%M}; refreshed %{customdata} later"
                "<extra>late refresh</extra>",
            )
        fig.add_scatter(
            x=timed["time"],
            y=timed["chain"].map(labels),
            mode="markers",
            name="token request",
            marker={"symbol": "line-ns", "size": 12, "line": {"width": 2, "color": "#FFFFFF"}},
            opacity=0.8,
            hovertemplate="%{x|%Y-%m-%d %H:%M:%S}<extra>token request</extra>",
        )
        forked = timed[timed["forked"].fillna(False).astype(bool)]
        if not forked.empty:
            fig.add_scatter(
                x=forked["time"],
                y=forked["chain"].map(labels),
                mode="markers",
                name="fork",
                marker={
                    "symbol": "diamond",
                    "size": 12,
                    "color": COLORS["fork"],
                    "line": {"width": 1, "color": "#000000"},
                },
                customdata=forked["old_refresh_fp"],
                hovertemplate="%{x|%Y-%m-%d %H:%M:%S.%L}: refresh token %{customdata} presented "
                "again<extra>fork</extra>",
            )
        relogin = chains[(chains["end_state"] == "forced_relogin") & chains["next_start"].notna()]
        if not relogin.empty:
            fig.add_scatter(
                x=relogin["next_start"],
                y=relogin["chain"].map(labels),
                mode="markers",
                name="forced re-login",
                marker={"symbol": "x", "size": 11, "color": COLORS["forced_relogin"]},
                customdata=relogin["next_chain"],
                hovertemplate="%{x|%Y-%m-%d %H:%M}: logged in again (chain %{customdata}) with this "
                "refresh token unused<extra>forced re-login</extra>",
            )
        guesses = findings[findings["kind"] == "orphan_guess"]
        if not guesses.empty:
            fig.add_scatter(
                x=guesses["time"],
                y=guesses["chain"].map(labels),
                mode="markers",
                name="orphan started (guess)",
                marker={"symbol": "triangle-right", "size": 11, "color": COLORS["early"]},
                hovertemplate="%{x|%Y-%m-%d %H:%M}: an orphan chain started (possible continuation)"
                "<extra></extra>",
            )
        fig.update_layout(
            barmode="overlay",
            hovermode="closest",
            bargap=0.35,
            clickmode="event+select",
            legend={"y": 1.02, "yanchor": "bottom"},
        )
        fig.update_xaxes(type="date")
        fig.update_yaxes(categoryorder="array", categoryarray=order[::-1], gridcolor=GRID, automargin=True)
        style(fig, height=min(120 + 26 * len(order), 1400))
        fig.update_layout(legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0})
        st.plotly_chart(
            fig,
            width="stretch",
            config={"displayModeBar": False},
            key=_TIMELINE_KEY,
            on_select=_timeline_pick(chains),
            selection_mode="points",
        )
        st.caption(
            f"One row per session (chain id · start, oldest on top). Each bar is an access token's "
            f"{fmt_duration(ttl)} of validity from its token request; a gap between bars is time without a "
            "valid token. Click a row's bar to open that chain's tree below."
        )


def _timeline_pick(chains: pd.DataFrame):
    by_label = {v: k for k, v in _labels(chains).items()}

    def pick() -> None:  # a callback: it may set the chain selectbox before it is drawn
        points = st.session_state[_TIMELINE_KEY].selection.points
        if points and points[0].get("y") in by_label:
            st.session_state["chain"] = by_label[points[0]["y"]]

    return pick


# -- one chain: tree and events -------------------------------------------------------------------------------


def _default_chain(chains: pd.DataFrame) -> int:
    """The chain most worth a look: a fork, else the longest that ended in a forced re-login, else the longest
    with a late refresh, else the latest."""
    score = list(
        zip(
            chains["forks"] > 0,
            chains["end_state"] == "forced_relogin",
            chains["late_refreshes"] > 0,
            chains["events"],
            range(len(chains)),
            strict=True,
        )
    )
    return max(range(len(chains)), key=lambda i: score[i])


def _chain_panels(chains: pd.DataFrame) -> None:
    ids = list(chains["chain"])
    chosen = st.selectbox(
        "Chain",
        ids,
        index=_default_chain(chains),
        key="chain",
        bind="query-params",
        help="First 10 characters of the chain id (the id of its root event). Click a row "
        "on the timeline to pick it.",
    )
    row = chains[chains["chain"] == chosen].iloc[0]
    when = (f" from {row['first_seen']:%Y-%m-%d %H:%M} to {row['last_seen']:%Y-%m-%d %H:%M} UTC, "
            f"{fmt_duration(row['span_s'])} span" if pd.notna(row["first_seen"]) else ", none with a time")
    st.caption(
        f"Chain {row['chain']}: {plural(row['events'], 'event')}{when}, "
        f"{END_LABELS.get(row['end_state'], row['end_state'])}; {plural(row['forks'], 'fork')}, "
        f"{plural(row['late_refreshes'], 'late refresh', 'late refreshes')}."
    )
    tree = query(lineage_tree, row["chain_id"])
    _tree_panel(tree)
    _event_table(tree, row["chain"])


def _tree_panel(tree: pd.DataFrame) -> None:
    with panel("Lineage tree: who refreshed whom", key="id-tree"):
        timed = tree[tree["time"].notna()]
        if timed.empty:
            st.caption(
                "This chain's events have no time, so they cannot be placed on a time axis; see the table."
            )
            return
        pos = {
            e: (t, -lane) for e, t, lane in zip(timed["event_id"], timed["time"], timed["lane"], strict=True)
        }
        fig = go.Figure()
        for late, color, name in ((False, MUTED, "refreshed"), (True, COLORS["late"], "refreshed late")):
            xs, ys = [], []
            part = timed[(timed["refresh_class"] == "late") == late]
            for e, p in zip(part["event_id"], part["parent_id"], strict=True):
                if not isinstance(p, str) or p not in pos:
                    continue
                (x0, y0), (x1, y1) = pos[p], pos[e]
                xs += [x0, x0, x1, None]  # an elbow: down to the branch, then along it
                ys += [y0, y1, y1, None]
            if xs:
                fig.add_scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    name=name,
                    hoverinfo="skip",
                    line={"color": color, "width": 2 if late else 1.5},
                )
        forked = timed["forked"].fillna(False).astype(bool)
        for kind in ("new", "refresh"):
            part = timed[(timed["type"] == kind) & ~forked]
            _tree_nodes(fig, part, kind, COLORS[kind], "circle", 9)
        _tree_nodes(
            fig, timed[forked], "fork (same refresh token presented twice)", COLORS["fork"], "diamond", 13
        )
        lanes = int(timed["lane"].max()) + 1
        lo, hi = timed["time"].min(), timed["time"].max()
        pad = max((hi - lo) * 0.04, pd.Timedelta(minutes=10))  # a one-event chain still gets a readable axis
        fig.update_xaxes(range=[lo - pad, hi + pad])
        fig.update_yaxes(
            tickvals=[-i for i in range(lanes)],
            ticktext=["main line"] + [f"branch {i}" for i in range(1, lanes)],
            range=[-lanes + 0.5, 0.5],
            zeroline=False,
        )
        fig.update_layout(hovermode="closest")
        plot(style(fig, height=200 + 46 * lanes))
        st.caption(
            "Each dot is a token request; a line joins it to the event whose refresh token it presented. "
            "The session that went on stays on the main line; the losing side of a fork opens a branch. "
            "Orange lines are late refreshes (the access token had expired)."
        )


def _tree_nodes(fig: go.Figure, part: pd.DataFrame, name: str, color: str, symbol: str, size: int) -> None:
    if part.empty:
        return
    info = [
        f"{t:%Y-%m-%d %H:%M:%S.%f}"[:-3]
        + f" · {typ}<br>access {a} · refresh {r or '–'} · presented {o or '–'}"
        f"<br>{d} deliver{'y' if d == 1 else 'ies'}"
        + (f" · {fmt_duration(i)} after its parent ({c.replace('_', ' ')})" if isinstance(c, str) else "")
        for t, typ, a, r, o, d, i, c in zip(
            part["time"],
            part["type"],
            part["access_fp"],
            part["refresh_fp"],
            part["old_refresh_fp"],
            part["deliveries"],
            part["interval_s"],
            part["refresh_class"],
            strict=True,
        )
    ]
    fig.add_scatter(
        x=part["time"],
        y=-part["lane"],
        mode="markers",
        name=name,
        text=info,
        hovertemplate="%{text}<extra></extra>",
        marker={"color": color, "symbol": symbol, "size": size, "line": {"width": 1, "color": "#111217"}},
    )


def _event_table(tree: pd.DataFrame, chain: str) -> None:
    with panel(f"Events of chain {chain}", key="id-events"):
        shown = tree.assign(
            interval_min=tree["interval_s"] / 60,
            branch=tree["lane"],
        )[
            [
                "time",
                "type",
                "deliveries",
                "access_fp",
                "refresh_fp",
                "old_refresh_fp",
                "refresh_class",
                "interval_min",
                "depth",
                "branch",
                "forked",
            ]
        ]
        shown = shown.assign(**{c: shown[c].fillna("–") for c in ("access_fp", "refresh_fp", "old_refresh_fp")},
                             refresh_class=shown["refresh_class"].replace({"on_time": "on time"}).fillna("–"))
        st.dataframe(
            shown,
            hide_index=True,
            width="stretch",
            height=min(38 + 35 * len(shown), 460),
            column_config={
                "time": st.column_config.DatetimeColumn("time (UTC)", format="YYYY-MM-DD HH:mm:ss.SSS"),
                "deliveries": st.column_config.NumberColumn(
                    "deliveries",
                    help="More than 1: Tyk retried (the receiver answered non-200 or too slowly)",
                ),
                "access_fp": st.column_config.TextColumn(
                    "access token", help="Fingerprint, first 10 characters"
                ),
                "refresh_fp": st.column_config.TextColumn("refresh token (issued)"),
                "old_refresh_fp": st.column_config.TextColumn("refresh token (presented)"),
                "refresh_class": st.column_config.TextColumn("refresh"),
                "interval_min": st.column_config.NumberColumn("after parent (min)", format="%.1f"),
                "branch": st.column_config.NumberColumn("branch", help="0 = main line of the tree"),
            },
        )
        csv_download(shown, f"chain-{chain}-events.csv", key="id-events-csv")


auto_refresh(render)
