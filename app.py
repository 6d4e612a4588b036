"""tokentrail's dashboard: the app shell. Run with `tokentrail serve` (or `streamlit run app.py`).

The shell owns what every page shares: page config, the product name, the time-range and auto-refresh
controls in the sidebar (bound to the URL), the CSS, and the navigation. Pages live in `pages/` and are
declared here from `dashboard.components.PAGES`, inside `main()`, so `AppTest.from_file("app.py")` can run it.
"""

from __future__ import annotations

import contextlib

import streamlit as st
from streamlit.errors import StreamlitAPIException

from dashboard.components import PAGES, inject_css, live_status
from dashboard.context import get_store, shell, sidebar_controls
from ingest.store import StoreError
from tokentrail.config import default_db_path

# The wordmark: a chain of three tokens (the lineage) and the product name, as inline SVG for st.logo.
LOGO = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="176" height="32" viewBox="0 0 176 32">'
    '<path d="M6 22 L16 10 L26 22" stroke="#FF9830" stroke-width="2.5" fill="none"/>'
    '<circle cx="6" cy="22" r="4.5" fill="#73BF69"/><circle cx="16" cy="10" r="4.5" fill="#5794F2"/>'
    '<circle cx="26" cy="22" r="4.5" fill="#5794F2"/>'
    '<text x="38" y="23" font-family="Inter, Helvetica, Arial, sans-serif" font-size="19" font-weight="600" '
    'fill="#CCCCDC">tokentrail</text></svg>'
)
ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32" viewBox="0 0 32 32">'
    '<path d="M6 22 L16 10 L26 22" stroke="#FF9830" stroke-width="2.5" fill="none"/>'
    '<circle cx="6" cy="22" r="4.5" fill="#73BF69"/><circle cx="16" cy="10" r="4.5" fill="#5794F2"/>'
    '<circle cx="26" cy="22" r="4.5" fill="#5794F2"/></svg>'
)


ROOT_PAGE = "overview"  # the default page, served at the app root
ROOT_PAGE_PATH = "home"  # its url path for Streamlit's bookkeeping; never served, never linked


def _to_root() -> None:
    """Send a visitor of the root page's own path to the root, with the URL's parameters. Runs before the
    sidebar's widgets bind those parameters (`st.switch_page` cannot rewrite bound ones); should they be bound
    already, the alias page runs the Overview in place instead."""
    with contextlib.suppress(StreamlitAPIException):
        st.switch_page(PAGES[ROOT_PAGE].path, query_params=st.query_params.to_dict())


def main() -> None:
    with shell():
        _run()


def _run() -> None:
    st.set_page_config(
        page_title="tokentrail",
        page_icon=":material/timeline:",
        layout="wide",
        initial_sidebar_state="expanded",
    )
    st.logo(LOGO, size="large", icon_image=ICON)
    inject_css()
    pages = [
        st.Page(
            spec.path,
            title=spec.title,
            icon=spec.icon,
            url_path=ROOT_PAGE_PATH if name == ROOT_PAGE else spec.url_path,
            default=name == ROOT_PAGE,
        )
        for name, spec in PAGES.items()
    ]
    root = PAGES[ROOT_PAGE]
    # Streamlit serves the default page at the app root only: its own url path is reserved but never matched,
    # so `/overview` typed by hand (or bookmarked) showed "Page not found". This hidden page takes that path.
    alias = st.Page(root.path, title=root.title, icon=root.icon, url_path=root.url_path, visibility="hidden")
    nav = st.navigation({"Session health": pages[:5], "Data": [*pages[5:], alias]})
    if nav.url_path == alias.url_path:
        _to_root()
    try:
        get_store()
    except StoreError as e:
        st.error(f"The dashboard cannot open its database. {e}", icon=":material/database:")
        st.stop()
    sidebar_controls()
    with st.sidebar:
        st.caption(f"Database: `{default_db_path()}`")
        live_status()
    nav.run()


if __name__ == "__main__":
    main()
