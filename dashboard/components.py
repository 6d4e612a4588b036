"""Building blocks every page uses, so that tiles, panels, links, empty states and downloads look and behave alike.

* `PAGES` is the one list of pages: `app.py` builds the navigation from it and `page_link` links by its keys,
  so a renamed file breaks in one place.
* `auto_refresh(render)` runs a page body inside `st.fragment(run_every=...)` when the view asks for it; the
  sidebar stays as it is and only the body reruns.
* `stat_tile` is Grafana's stat panel: a value coloured by thresholds, a sparkline, a note, a link to the page
  that explains it. It is an `st.metric`, so tests read it as one.
* `csv_download` is the only way a table leaves the dashboard: cells that a spreadsheet would run as a formula
  are defused, and columns that could hold raw credentials are refused.
"""

from __future__ import annotations

import html
import inspect
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from dashboard.context import View, current_view
from dashboard.theme import CSS, LEVEL_NAMED_COLORS

Level = Literal["ok", "warn", "bad", "neutral"]


@dataclass(frozen=True)
class PageSpec:
    path: str
    title: str
    url_path: str
    icon: str


PAGES: dict[str, PageSpec] = {
    "overview": PageSpec("pages/overview.py", "Overview", "overview", ":material/dashboard:"),
    "refresh_rates": PageSpec(
        "pages/refresh_rates.py", "Refresh rates", "refresh-rates", ":material/autorenew:"
    ),
    "orphans": PageSpec("pages/orphans.py", "Orphaned tokens", "orphans", ":material/link_off:"),
    "lifetimes": PageSpec("pages/lifetimes.py", "Session lifetimes", "lifetimes", ":material/timelapse:"),
    "identity": PageSpec("pages/identity.py", "Identity drill-down", "identity", ":material/person_search:"),
    "upload": PageSpec("pages/upload.py", "Upload", "upload", ":material/upload_file:"),
    "live": PageSpec("pages/live.py", "Live receiver", "live", ":material/sensors:"),
}

# Column names under which Tyk's raw credentials travel; a table with one of them must never be downloaded.
RAW_TOKEN_COLUMNS = frozenset(
    {"auth_code", "code", "new_oauth_token", "access_token", "refresh_token", "old_refresh_token", "token"}
)
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


# -- page furniture ------------------------------------------------------------------------------------------


def inject_css() -> None:
    """The Grafana look (panel backgrounds, threshold colours). Call once per run, before the page body."""
    st.html(CSS)


def page_header(title: str, view: View | None = None, *, subtitle: str | None = None) -> None:
    st.title(title, anchor=False)
    parts = [subtitle] if subtitle else []
    if view is not None:
        parts.append(range_caption(view))
    if parts:
        st.markdown(f'<p class="tt-subtitle">{" · ".join(parts)}</p>', unsafe_allow_html=True)


def range_caption(view: View) -> str:
    if view.range_key != "custom" and view.start and view.end:
        label = f"{view.label} ({view.start:%Y-%m-%d %H:%M} → {view.end:%Y-%m-%d %H:%M} UTC)"
    else:
        label = view.label
    return f"{label}, {buckets(view.bucket)}"


def buckets(interval: str) -> str:
    """A bucket interval as words: '15 minutes' -> '15-minute buckets', '1 hour' -> 'hourly buckets'."""
    n, _, unit = interval.partition(" ")
    unit = unit.rstrip("s")
    if n == "1":
        return {"hour": "hourly", "day": "daily", "week": "weekly", "minute": "1-minute"}.get(unit, f"1-{unit}") + " buckets"
    return f"{n}-{unit} buckets"


def page_link(
    page: str, label: str | None = None, *, icon: str | None = None, help: str | None = None
) -> None:
    """A link to one of `PAGES` by key, e.g. `page_link("orphans", "Why orphans happen")`."""
    spec = PAGES[page]
    st.page_link(spec.path, label=label or spec.title, icon=icon or spec.icon, help=help)


def auto_refresh(render: Callable[..., None], *, view: View | None = None) -> None:
    """Render a page body, inside a fragment that reruns every `view.refresh_s` seconds when auto-refresh is on.

    `render` takes the current `View` (or nothing); the fragment re-reads it on every tick, so a relative range
    follows data uploaded meanwhile (from another browser tab) without rerunning the whole page.
    """
    takes_view = bool(inspect.signature(render).parameters)
    first = view or current_view()

    def body() -> None:
        v = current_view()
        render(v) if takes_view else render()

    if first.refresh_s:
        st.fragment(body, run_every=first.refresh_s)()
    else:
        body()


def empty_state(
    title: str,
    message: str,
    *,
    upload_link: bool = True,
    command: str | None = None,
    demo_button: str | None = None,
    snippets: Sequence[tuple[str, str, str]] = (),
) -> None:
    """What to do when there is nothing to show: a sentence, a link to the Upload page, optionally a command
    and a button that loads the demo data (`demo_button` is its widget key). `snippets` are more code blocks
    after the command, each `(sentence before it, code, language)`."""
    with st.container(border=True, key=f"tt-empty-{_slug(title)}"):
        st.markdown(f"**{title}**")
        st.markdown(message)
        if command:
            st.code(command, language="bash")
        for text, code, language in snippets:
            if text:
                st.markdown(text)
            if code:
                st.code(code, language=language)
        if upload_link or demo_button:
            with st.container(horizontal=True, vertical_alignment="center", gap="medium"):
                if demo_button:
                    load_demo_button(key=demo_button)
                if upload_link:
                    page_link("upload", "Upload log exports")


def no_data_in_range(view: View) -> None:
    empty_state(
        "No data in this range",
        f"Nothing happened in **{view.label.lower()}**: widen the time range in "
        "the sidebar, or upload a log export that covers it.",
    )


# -- stat tiles ----------------------------------------------------------------------------------------------


def threshold_level(value: float | None, warn: float, bad: float, *, higher_is_worse: bool = True) -> Level:
    """Grafana thresholds: `ok` below `warn`, `warn` from `warn`, `bad` from `bad` (reversed when lower is worse)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "neutral"
    if higher_is_worse:
        return "bad" if value >= bad else "warn" if value >= warn else "ok"
    return "bad" if value <= bad else "warn" if value <= warn else "ok"


def stat_tile(
    label: str,
    value: str,
    *,
    key: str,
    level: Level = "neutral",
    note: str | None = None,
    series: Iterable[float | None] | None = None,
    help: str | None = None,
    link: str | None = None,
    link_label: str | None = None,
) -> None:
    """One stat panel: value coloured by `level`, `note` under it in the same colour, a sparkline, a page link."""
    points = (
        [] if series is None else [float(v) for v in series if v is not None and not math.isnan(float(v))]
    )
    with st.container(key=f"tt-tile-{level}-{key}"):
        st.metric(
            label,
            value,
            delta=note,
            delta_color=LEVEL_NAMED_COLORS[level],
            delta_arrow="off",
            help=help,
            chart_data=points if len(points) > 1 else None,
            chart_type="area",
        )
        if link:
            page_link(link, link_label)


def panel(title: str, *, key: str, link: str | None = None, link_label: str | None = None):
    """A bordered panel with a title row and an optional link; use as `with panel(...):`."""
    box = st.container(key=f"tt-panel-{key}")
    with box:
        left, right = st.columns([3, 2], vertical_alignment="center")
        left.markdown(f'<p class="tt-panel-title">{title}</p>', unsafe_allow_html=True)
        if link:
            with right, st.container(horizontal=True, horizontal_alignment="right"):
                page_link(link, link_label)
    return box


def plot(fig) -> None:
    st.plotly_chart(fig, width="stretch", config={"displayModeBar": False, "displaylogo": False})


# -- formatting ----------------------------------------------------------------------------------------------


def fmt_int(n: int | float | None) -> str:
    return "–" if n is None else f"{int(n):,}"


def fmt_pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def fmt_duration(seconds: float | None) -> str:
    """Short human duration: 45s, 12m, 2h 48m, 3d 4h."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    if math.isinf(seconds):
        return "∞" if seconds > 0 else "-∞"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes}m"
    if minutes < 24 * 60:
        h, m = divmod(minutes, 60)
        return f"{h}h {m}m" if m else f"{h}h"
    d, h = divmod(round(seconds / 3600), 24)
    return f"{d}d {h}h" if h else f"{d}d"


def md_literal(text: str) -> str:
    """`text` (a user's name, from the data or the URL) as a markdown code span: shown as written, never as a
    link, an email link, colour, maths or emphasis."""
    text = str(text).replace("\n", " ")
    if "`" not in text:
        return f"`{text}`"
    # a fence longer than any run of backticks inside, and a space each side (CommonMark strips one)
    fence = "`" * (max(len(run) for run in re.findall("`+", text)) + 1)
    return f"{fence} {text} {fence}"


def plot_label(text: str, width: int = 36) -> str:
    """`text` as a plotly label: HTML-escaped (plotly reads `<b>` in labels as markup) and, past `width`
    characters, shortened in the middle."""
    text = str(text)
    if len(text) > width:
        head = (width - 1) * 2 // 3
        text = text[:head] + "…" + text[-(width - 1 - head):]
    return html.escape(text, quote=False)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40] or "x"


# -- downloads -----------------------------------------------------------------------------------------------


def defuse_cell(value: object) -> object:
    """A text cell a spreadsheet would evaluate (=, +, -, @, tab, CR first) gets a leading quote (OWASP)."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def safe_csv(df: pd.DataFrame) -> bytes:
    """CSV bytes for a download: formula cells defused, raw-credential columns refused."""
    raw = sorted(c for c in df.columns if str(c).lower() in RAW_TOKEN_COLUMNS)
    if raw:
        raise ValueError(f"refusing to export raw credential columns: {', '.join(map(str, raw))}")
    out = df.copy()
    out.columns = [defuse_cell(str(c)) for c in out.columns]
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(defuse_cell)
    return out.to_csv(index=False).encode("utf-8")


def csv_download(
    df: pd.DataFrame, file_name: str, *, label: str = "Download CSV", key: str | None = None
) -> None:
    st.download_button(
        label,
        safe_csv(df),
        file_name=file_name,
        mime="text/csv",
        icon=":material/download:",
        key=key or f"tt-csv-{_slug(file_name)}",
        on_click="ignore",
    )


def table(
    df: pd.DataFrame,
    *,
    file_name: str | None = None,
    height: int | Literal["auto"] = "auto",
    column_config: dict | None = None,
    hide: Sequence[str] = (),
) -> None:
    """A dataframe with its CSV download under it."""
    shown = df.drop(columns=[c for c in hide if c in df.columns])
    st.dataframe(shown, hide_index=True, width="stretch", height=height, column_config=column_config)
    if file_name:
        csv_download(shown, file_name)


# -- demo data -----------------------------------------------------------------------------------------------


def load_demo_button(*, key: str) -> None:
    """A button that simulates a fleet (ingest.demo) and loads its logs through the normal ingest."""
    if not st.button("Load the demo data", key=key, icon=":material/science:", type="primary"):
        return
    import tempfile
    from pathlib import Path

    from dashboard.context import get_store, invalidate
    from ingest.demo import write_demo
    from ingest.pipeline import ingest

    with (
        st.spinner("Simulating five days of a Tyk fleet and loading its logs..."),
        tempfile.TemporaryDirectory(prefix="tokentrail-demo-") as tmp,
    ):
        paths = write_demo(Path(tmp))
        logs = [p for p in paths if p.suffix != ".csv"]
        ids = next((p for p in paths if p.suffix == ".csv"), None)
        ingest(get_store(), logs, identities=ids)
    invalidate()
    st.rerun()


# -- links into the identity drill-down (used by every page that lists identities) ---------------------------

_VIEW_PARAMS = ("range", "from", "to", "refresh")  # the view's URL parameters a drill-down link carries along


def identity_link(identity: str) -> str:
    """A relative URL that opens the drill-down on `identity`, keeping the current range and refresh."""
    return _drill_down_link({"identity": identity})


def chain_link(chain: str) -> str:
    """A relative URL that opens the drill-down on one chain (by its short id): its identity's page, or the chain
    alone when it is an orphan."""
    return _drill_down_link({"chain": chain})


def _drill_down_link(params: dict) -> str:
    keep = {k: v for k, v in st.query_params.to_dict().items() if k in _VIEW_PARAMS}
    return f"./{PAGES['identity'].url_path}?" + urlencode({**params, **keep})


def open_identity(identity: str) -> None:
    """Switch to the drill-down on `identity`, through session state (the bound widget's value) and the URL.

    `st.switch_page` refuses query params that are bound to a widget (the range picker is), so only the
    identity travels in the URL; the range stays in the session."""
    st.session_state["identity"] = identity
    try:
        st.switch_page(PAGES["identity"].path, query_params={"identity": identity})
    except StreamlitAPIException:  # "identity" still bound from an earlier visit: session state carries it
        st.switch_page(PAGES["identity"].path)


def require_data(purpose: str) -> bool:
    """False (after showing what to do) when the store holds no delivery with a time: none at all (all rejected,
    perhaps: the quarantine is on the Upload page), or only untimed ones (bare Tyk bodies)."""
    from dashboard.context import data_bounds, query
    from queries.overview import store_counts

    if data_bounds()[1] is not None:
        return True
    counts = query(store_counts)
    if counts["deliveries"]:
        empty_state(
            "No times in the data",
            f"The database holds {plural(counts['deliveries'], 'delivery', 'deliveries')} "
            f"({plural(counts['events'], 'event')} in {plural(counts['chains'], 'chain')}), none with a time: "
            f"bare Tyk bodies, or an export whose time field was not found. {purpose.capitalize()} need the time "
            "each notification arrived: load an export that carries it (the receiver's own log, or a log "
            "platform's export). The Overview and the Identity drill-down show the chains as they are.",
        )
        return False
    rejected = counts["rejected"]
    empty_state(
        "No data yet" if not rejected else "Every record was rejected",
        f"Upload Tyk notification log exports to see {purpose}, or load the demo data from the Overview."
        if not rejected else
        f"Nothing loaded as a notification: {plural(rejected, 'record')} rejected, kept in the quarantine. The "
        "Upload page lists them with the file, the line and the reason (a log with no Tyk notification in it, or "
        "a shape tokentrail does not read yet).",
    )
    return False


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 event', '2 events', '1 delivery', '3 deliveries'."""
    return f"{fmt_int(n)} {word if n == 1 else many or word + 's'}"


def live_status() -> None:
    """In the sidebar, when a live receiver writes to this database's spool: how fresh the data is.

    A fragment of its own (every 5 s), so it stays current with auto-refresh off."""
    from dashboard.context import get_store
    from live.spool import spool_dir_for
    from queries.live import spool_snapshot

    spool = spool_dir_for(get_store().path)
    if not spool.exists():
        return

    @st.fragment(run_every=5)
    def badge() -> None:
        import time

        now = time.time()
        snap = spool_snapshot(get_store(), spool)  # the same reading as the Live receiver page's tiles
        last, applied = snap.last_write, snap.applied_at
        follower = getattr(get_store(), "follower", None)
        error = getattr(follower, "last_error", None)
        receiving = snap.receiving(now)
        label = ":green-badge[Live]" if receiving and not error else ":gray-badge[Live: idle]"
        parts = [label]
        if last is not None:
            parts.append(f"last delivery {fmt_duration(now - last)} ago")
        if applied is not None:
            parts.append(f"applied {fmt_duration(max(0.0, now - applied))} ago")
        st.caption(" · ".join(parts), help="Deliveries from `tokentrail receive` are applied to this database "
                   "by the dashboard about every second. Turn on auto-refresh to watch the pages follow.")
        if error:
            st.caption(f":red-badge[Live apply failing] {error}")

    badge()
