"""Driving the real dashboard in Debian's Chromium: start `streamlit run app.py`, wait for Streamlit to finish
rendering, take full-page screenshots. Used by tests/test_browser.py and bench/pages.py.

Streamlit renders in steps: the websocket connects, the script runs (the app root carries
`data-test-script-state="running"`), elements of the previous run are greyed out meanwhile (`data-stale="true"`),
and Plotly charts and data grids draw after their element arrives. `settle()` waits for all of that, and for
the state to hold for a moment, so a screenshot or an assertion never sees a half-drawn page.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWPORT = {"width": 1600, "height": 1000}
MISSING_CHROMIUM = (
    f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium. Install it with "
    "`apt-get install -y chromium` (`make test` does it when run as root); never `playwright install`."
)

# JavaScript run in the page: is Streamlit done? Connected, script not running, nothing stale, no spinner,
# every visible Plotly chart drawn and every visible data grid painted.
_IDLE_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) return 'no app';
  if (app.getAttribute('data-test-connection-state') !== 'CONNECTED') return 'connecting';
  if (app.getAttribute('data-test-script-state') !== 'notRunning') return 'script ' + app.getAttribute('data-test-script-state');
  if (document.querySelector('[data-stale="true"]')) return 'stale elements';
  if (document.querySelector('[data-testid="stSpinner"], [data-testid="stSkeleton"]')) return 'spinner';
  const shown = e => e.checkVisibility();  // a chart in a collapsed expander is never drawn
  for (const c of document.querySelectorAll('[data-testid="stPlotlyChart"]'))
    if (shown(c) && !c.querySelector('.main-svg')) return 'plotly chart not drawn';
  for (const g of document.querySelectorAll('[data-testid="stDataFrame"]'))
    if (shown(g) && !g.querySelector('canvas')) return 'data grid not drawn';
  return '';
}"""


def require_chromium() -> str:
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(MISSING_CHROMIUM)
    return CHROMIUM


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:  # noqa: S310 (loopback only)
            return r.read().decode().strip() == "ok"
    except OSError:
        return False


@contextlib.contextmanager
def dashboard(db: Path, log_path: Path, *, port: int | None = None, timeout: float = 60) -> Iterator[str]:
    """Run the dashboard on `db` (loopback, a free port) and yield its base URL; stop it on exit.

    Its output goes to `log_path`; when it does not come up in `timeout` seconds the error carries the log's tail.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    env = {**os.environ, "TOKENTRAIL_DB": str(db), "PYTHONUNBUFFERED": "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited with {proc.returncode}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the dashboard did not answer {url}/_stcore/health in {timeout:.0f} s:\n"
                    f"{log_tail(log_path)}"
                )
            time.sleep(0.25)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def launch(playwright):
    return playwright.chromium.launch(executable_path=require_chromium(), args=CHROMIUM_ARGS)


def settle(page, *, timeout: float = 30, quiet: float = 0.4) -> float:
    """Wait until Streamlit has finished the current run and drawn everything, and stayed so for `quiet` s.

    Returns the seconds waited. Call it after the page shows something the new run renders (a URL, a text), so
    it cannot mistake the end of the previous run for the end of this one.
    """
    start = time.monotonic()
    deadline = start + timeout
    idle_since = None
    state = "?"
    while True:
        state = page.evaluate(_IDLE_JS)
        now = time.monotonic()
        if state:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= quiet:
            return idle_since - start
        if now > deadline:
            raise TimeoutError(f"Streamlit did not settle in {timeout:.0f} s ({state})")
        time.sleep(0.05)


def wait_idle(page, *, timeout: float = 30) -> float:
    """Like `settle` without the quiet period: the moment the page first looks done (for timings)."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        state = page.evaluate(_IDLE_JS)
        if not state:
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise TimeoutError(f"Streamlit did not finish in {timeout:.0f} s ({state})")
        time.sleep(0.02)


def content_height(page) -> int:
    """Height of the main column's content (Streamlit scrolls inside it, not the document)."""
    return int(
        page.evaluate(
            """() => Math.max(...['[data-testid="stMain"]', '[data-testid="stAppViewContainer"]',
                                  '[data-testid="stMainBlockContainer"]']
                .map(s => document.querySelector(s)).filter(Boolean).map(e => e.scrollHeight),
                document.documentElement.scrollHeight)"""
        )
    )


def full_page_screenshot(page, path: Path, *, max_height: int = 9000) -> None:
    """Screenshot of the whole page: the viewport grows to the content's height, then shrinks back.

    Playwright's `full_page=True` only sees the document, and Streamlit scrolls an inner container."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size or VIEWPORT
    height = min(max(content_height(page), size["height"]), max_height)
    try:
        if height > size["height"]:
            page.set_viewport_size({"width": size["width"], "height": height})
            time.sleep(0.3)  # charts re-lay out on resize
            settle(page, timeout=15, quiet=0.3)
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)


def metric_values(page) -> dict[str, str]:
    """`st.metric` label -> displayed value, for every metric on the page."""
    out = {}
    for m in page.locator('[data-testid="stMetric"]').all():
        label = m.locator('[data-testid="stMetricLabel"]').inner_text().strip()
        out[label] = m.locator('[data-testid="stMetricValue"]').inner_text().strip()
    return out


def exceptions(page) -> list[str]:
    """Texts of the Streamlit exception boxes on the page (should be none)."""
    return page.locator('[data-testid="stException"]').all_inner_texts()
