"""Live receiver: what `tokentrail receive` is receiving, whether this dashboard keeps up, and (relay mode) what
the user's own service answered.

Figures of the database come aggregated from `queries.live` (cached per data version: every spool apply is an
ingest run); the receiver's state and the spool's backlog are read from the spool's files on every run
(`queries.live.spool_snapshot`), so with auto-refresh on the tiles follow the receiver within seconds.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import replace
from datetime import UTC, datetime

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard.components import (
    auto_refresh,
    empty_state,
    fmt_duration,
    fmt_int,
    fmt_pct,
    page_header,
    panel,
    plot,
    plural,
    stat_tile,
    table,
    threshold_level,
)
from dashboard.context import View, bucket_for, get_store, query
from dashboard.theme import COLORS, style
from queries.live import (
    MAX_RECENT,
    RECEIVING_S,
    SpoolSnapshot,
    recent,
    recent_rejected,
    series,
    spool_snapshot,
    tiles,
)

# Share of relayed deliveries the user's service did not accept (warn from, bad from): each one makes Tyk retry,
# and three in a row lose the notification for the service.
RELAY_FAILED_RATE = (0.01, 0.05)
# Age of the oldest delivery recorded but not yet applied (s): the dashboard applies about every second.
SPOOL_LAG_S = (30, 300)

# Buckets for live data only minutes old (a receiver just started); longer spans get the dashboard's buckets.
_SHORT_BUCKETS = ((120, "5 seconds"), (600, "15 seconds"), (1800, "30 seconds"))
MIN_BUCKETS = (
    30  # the chart's time axis shows at least this many buckets, so one bucket is one bar, not a wall
)

OUTCOMES = (  # (series column, legend, colour)
    ("accepted", "accepted (200)", COLORS["accepted"]),
    ("refused", "refused (other status)", COLORS["refused"]),
    ("no_answer", "no answer", COLORS["no_answer"]),
    ("not_relayed", "received (not relayed)", COLORS["not_relayed"]),
    ("rejected", "rejected body", COLORS["rejected"]),
)


def render(view: View) -> None:
    store = get_store()
    spool = spool_snapshot(store)
    t = query(tiles, view.start, view.end)
    chart_start, chart_end, bucket = _chart_window(view, t)
    page_header(
        "Live receiver",
        replace(view, bucket=bucket),
        subtitle="Tyk's notifications as tokentrail's own receiver records them",
    )
    if not spool.exists and not t["live_total"] and not t["rejected_total"]:
        _how_to_start("Live mode is not running", store.path)
        return

    now = time.time()
    follower_error = getattr(getattr(store, "follower", None), "last_error", None)
    _tiles(t, spool, now, follower_error)
    if follower_error:
        st.error(
            f"Applying the receiver's spool to this database keeps failing: {follower_error}. Deliveries stay "
            "safe in the spool and are applied once it works again.",
            icon=":material/sync_problem:",
        )
    if not t["live_total"] and not t["rejected_total"]:
        if spool.pending:
            st.info(
                f"The receiver has recorded {plural(spool.pending, 'delivery', 'deliveries')}; this dashboard "
                "applies them to its database within seconds. Turn on auto-refresh in the sidebar to watch.",
                icon=":material/hourglass_top:",
            )
        else:
            _how_to_start("Waiting for the first delivery", store.path, waiting=True)
        return
    if not (t["deliveries"] or t["rejected"]):
        last = t["last_live_at"]
        st.info(
            f"No live deliveries in **{view.label.lower()}**"
            + (f"; the last one arrived {last:%Y-%m-%d %H:%M:%S} UTC" if last else "")
            + ". Widen the time range in the sidebar.",
            icon=":material/schedule:",
        )
    else:
        _chart(query(series, chart_start, chart_end, bucket), bucket)
        _recent(view)
    with st.expander("Connecting Tyk to the receiver"):
        _instructions(store.path)


def _chart_window(view: View, t: dict) -> tuple[datetime | None, datetime | None, str]:
    """The chart's `[start, end)` and bucket: the view's range, but starting no earlier than the first live
    record (live data begin when a receiver first ran, often minutes ago, while the range may span days of
    uploaded history), with a bucket fitted to what is left."""
    firsts = [x for x in (t["first_live_at"], t["first_rejected_at"]) if x is not None]
    start, end = view.start, view.end
    if firsts and (start is None or start < min(firsts)):
        start = min(firsts)
    elif end is not None and start is not None:
        return start, end, view.bucket
    hi = end or t["last_live_at"]
    if start is None or hi is None or hi <= start:
        return start, end, view.bucket
    span = (hi - start).total_seconds()
    return start, end, next((b for limit, b in _SHORT_BUCKETS if span <= limit), None) or bucket_for(span)


def _tiles(t: dict, spool: SpoolSnapshot, now: float, follower_error: str | None) -> None:
    cols = st.columns(5)
    receiving = spool.receiving(now)
    with cols[0]:
        if not spool.exists:
            value, level, note = "no spool", "neutral", "no receiver writes here"
        else:
            value = "receiving" if receiving else "idle"
            level = "ok" if receiving else "warn"
            note = (
                f"last record {fmt_duration(now - spool.last_write)} ago"
                if spool.last_write is not None
                else "nothing recorded yet"
            )
        stat_tile(
            "Receiver",
            value,
            key="receiver",
            level=level,
            note=note,
            help="From the spool the receiver writes (`<db>.spool/`): receiving while its newest segment was "
            f"written in the last {RECEIVING_S // 60} minutes. A fleet with active users refreshes "
            "constantly, so a long idle spell usually means the receiver is stopped or Tyk does not reach it.",
        )
    with cols[1]:
        last = t["last_live_at"]
        age = None if last is None else max(0.0, now - last.replace(tzinfo=UTC).timestamp())
        stat_tile(
            "Last live delivery",
            "–" if age is None else f"{fmt_duration(age)} ago",
            key="last",
            level="neutral" if age is None else "ok" if age < RECEIVING_S else "warn",
            note="none applied yet" if last is None else f"{last:%Y-%m-%d %H:%M:%S} UTC",
            help="The newest live delivery in this database (receipt time), whatever the time range.",
        )
    with cols[2]:
        stat_tile(
            "Live deliveries",
            fmt_int(t["deliveries"]),
            key="deliveries",
            level="neutral",
            note=f"{plural(t['retries'], 'Tyk retry', 'Tyk retries')} · {fmt_int(t['rejected'])} rejected",
            help="Deliveries received live in the range. A Tyk retry is a delivery of a notification already "
            "received (the answer was not 200, or came after 10 s). Rejected: bodies that were not Tyk "
            "notifications (kept in the quarantine, counted when applied).",
        )
    with cols[3]:
        if not spool.exists:
            value, level, note = "–", "neutral", "no spool"
        else:
            oldest = spool.oldest_pending_s
            value = ("~" if spool.pending_estimated else "") + fmt_int(spool.pending)
            level = "bad" if follower_error else threshold_level(oldest if spool.pending else 0, *SPOOL_LAG_S)
            applied = (
                f"applied {fmt_duration(max(0.0, now - spool.applied_at))} ago"
                if spool.applied_at is not None
                else "never applied"
            )
            note = f"oldest waits {fmt_duration(oldest)} · {applied}" if spool.pending and oldest else applied
        stat_tile(
            "Spool lag",
            value,
            key="lag",
            level=level,
            note=note,
            help="Deliveries the receiver has recorded (durably, in the spool) that this dashboard has not "
            "applied to the database yet. It applies about every second; a backlog grows while the "
            f"dashboard is stopped and drains when it runs. Amber when the oldest waits {SPOOL_LAG_S[0]} s, "
            f"red from {SPOOL_LAG_S[1] // 60} min or when applying fails.",
        )
    with cols[4]:
        if t["relayed"]:
            stat_tile(
                "Accepted by your service",
                fmt_pct(t["accepted_rate"]),
                key="relay",
                level=threshold_level(t["failed_rate"], *RELAY_FAILED_RATE),
                note=f"{fmt_int(t['refused'])} refused · {fmt_int(t['no_answer'])} no answer",
                help="Relay mode (`--forward`): the share of relayed deliveries your service answered with 200. "
                "Refused: any other status (Tyk retries those 10 s later, 3 attempts in all); no answer: "
                "timeout or unreachable. Amber from "
                f"{RELAY_FAILED_RATE[0]:.0%} not accepted, red from {RELAY_FAILED_RATE[1]:.0%}.",
            )
        else:
            stat_tile(
                "Relay",
                "off",
                key="relay",
                level="neutral",
                note="no relayed deliveries in range",
                help="Start the receiver with `--forward http://your-service/notify` to relay each delivery to "
                "your existing service: Tyk then gets your service's answer, and this tile shows how "
                "many your service accepted.",
            )


def _chart(s, bucket: str) -> None:
    with panel(f"Live deliveries per {bucket}, by what your service answered", key="live-deliveries"):
        step = pd.Timedelta(bucket)
        fig = go.Figure()
        shown = [(col, name, color) for col, name, color in OUTCOMES if s[col].sum() > 0] or [OUTCOMES[3]]
        for col, name, color in shown:
            fig.add_bar(  # each bar covers its bucket, from the bucket's start (the time hover shows)
                x=s["bucket"],
                y=s[col],
                name=name,
                marker_color=color,
                width=step.total_seconds() * 850,
                offset=0,
            )
        end = s["bucket"].max() + step
        fig.update_xaxes(range=[min(s["bucket"].min(), end - MIN_BUCKETS * step), end])
        fig.update_layout(barmode="stack", legend_traceorder="normal")
        plot(style(fig, height=300))


def _recent(view: View) -> None:
    df = query(recent, view.start, view.end, MAX_RECENT)
    with panel(f"Most recent live deliveries (newest {MAX_RECENT} of the range)", key="live-recent"):
        shown = df.drop(columns=["upstream_status"]).assign(
            identity=df["identity"].fillna("–"),
            refresh_fp=df["refresh_fp"].fillna("–"),
            old_refresh_fp=df["old_refresh_fp"].fillna("–"),
        )
        table(
            shown,
            file_name="tokentrail-live-deliveries.csv",
            height=min(38 + 35 * len(shown), 420),
            column_config={
                "received_at": st.column_config.DatetimeColumn(
                    "received (UTC)", format="YYYY-MM-DD HH:mm:ss.SSS"
                ),
                "notification_type": st.column_config.TextColumn("type"),
                "event": st.column_config.TextColumn("event", help="Event id, first 10 characters"),
                "access_fp": st.column_config.TextColumn(
                    "access token", help="Fingerprint, first 10 characters"
                ),
                "refresh_fp": st.column_config.TextColumn("refresh token (issued)"),
                "old_refresh_fp": st.column_config.TextColumn("refresh token (presented)"),
                "retry": st.column_config.CheckboxColumn(
                    "Tyk retry", help="The same notification had been delivered before"
                ),
                "upstream": st.column_config.TextColumn(
                    "your service", help="What your service answered the relay: a status, or no answer"
                ),
                "orphan_chain": st.column_config.CheckboxColumn(
                    "orphan chain", help="Its chain starts with a refresh whose parent was never seen"
                ),
            },
        )
    rejected = query(recent_rejected, view.start, view.end)
    if not rejected.empty:
        with st.expander(f"Rejected live bodies in the range (newest {len(rejected)})"):
            st.caption(
                "Bodies the receiver answered 400: not a Tyk notification. Token-like values are masked."
            )
            table(
                rejected,
                file_name="tokentrail-live-rejected.csv",
                column_config={
                    "applied_at": st.column_config.DatetimeColumn(
                        "applied (UTC)", format="YYYY-MM-DD HH:mm:ss"
                    ),
                },
            )


def _instructions(db: str) -> None:
    cmd, tyk = _commands(db)
    st.code(cmd, language="bash")
    st.markdown("In your Tyk API definition:")
    st.code(tyk, language="json")
    st.caption(_METRICS_NOTE)


_METRICS_NOTE = (
    "Prometheus: scrape `http://<host>:8080/metrics` (deliveries by answer, relay failures, spool lag); "
    "liveness: `/healthz`."
)


def _commands(db: str) -> tuple[str, str]:
    cmd = (
        "export TOKENTRAIL_SHARED_SECRET='<the shared_secret of your API definition>'\n"
        "# this dashboard's database (the receiver writes to <database>.spool/ beside it):\n"
        f"export TOKENTRAIL_DB={shlex.quote(str(db))}\n"
        "tokentrail receive --port 8080\n"
        "# or relay each delivery to your existing service, and record what it answers:\n"
        "tokentrail receive --port 8080 --forward http://your-service/notify\n"
        "# add --host 0.0.0.0 when Tyk runs on another host"
    )
    tyk = (
        '"notifications": {\n'
        '  "shared_secret": "<the same secret>",\n'
        '  "oauth_on_keychange_url": "http://<host>:8080/tyk/notify"\n'
        "}"
    )
    return cmd, tyk


def _how_to_start(title: str, db: str, *, waiting: bool = False) -> None:
    cmd, tyk = _commands(db)
    lead = (
        "The receiver's spool exists but nothing has arrived yet. Check that your API definition points "
        "Tyk's notifications at the receiver, with the same shared secret:"
        if waiting
        else "tokentrail can receive Tyk's OAuth notifications itself, as they happen: run its receiver on this "
        "database and point your API's `oauth_on_keychange_url` at it. Each delivery is recorded durably "
        "(fingerprints only) and appears here within seconds. In relay mode (`--forward URL`) the receiver "
        "passes every delivery on to your existing service and answers Tyk with that service's status: you "
        "keep your service, and see here what it answered."
    )
    empty_state(
        title,
        lead,
        upload_link=False,
        command=None if waiting else cmd,
        snippets=[("Then, in your Tyk API definition:", tyk, "json"), (_METRICS_NOTE, "", "")],
    )


auto_refresh(render)
