"""Page timings: how fast the dashboard's pages render in a real browser on a large store.

    .venv/bin/python bench/pages.py                      # 1M events, and 5M when its log file exists
    .venv/bin/python bench/pages.py --sizes 1000000      # one size
    .venv/bin/python bench/pages.py --build-only         # just build the databases (cached)

For each size it builds (once; cached as bench/out/db/pages-N.duckdb, with a `.ok` file holding its summary
written only after a complete ingest) a database with `tokentrail ingest` on the generated log
bench/out/notifications-N-s1.jsonl (`bench/notifications.py` writes those; `bench/ingest.py` generates them),
starts the dashboard on it (`streamlit run app.py`, 127.0.0.1, a free port) and drives Debian's Chromium with
Playwright, one page after another:

* **cold**: the first load of the page on the freshly started server (the store opens, no query is cached);
  reported, no target: the issue's targets apply after the first load;
* **reload**: the page opened again in a new browser tab (a new Streamlit session; query results cached), split
  into *connect* (navigation until the first script run starts: Chromium loads Streamlit's JavaScript and opens
  the websocket; the same for every page) and *run* (the script run and the drawing);
* **switch**: the page reached by a click in the sidebar from another page, in the same session (the drill-down
  is reached without an identity: a sidebar link carries no `?identity=`);
* **range**: the sidebar's "Range" changed from "All data" to "Last 24 hours" and then to "Last 7 days" (the
  slower of the two; each range is new for the page's own queries).

Then the **Live receiver** page, on a copy of the database (live deliveries change it) with `tokentrail receive`
running beside the dashboard:

* **live reload**: the page opened in a new tab while the receiver takes `--live-rate` deliveries a second and
  the dashboard applies its spool (reported with the spool lag seen meanwhile);
* **freshness**: with the page open at auto-refresh 5 s, a burst of 10 deliveries is posted and timed until the
  "Live deliveries" tile counts them (receiver -> spool -> the dashboard's follower -> the next refresh: about
  1 s of applying plus up to 5 s of waiting for the refresh; target < 7 s).

Each time runs from the navigation (or the click) until Streamlit's script run has finished and every chart and
table is drawn (tests/browser_support.py: connected, not running, nothing stale, no spinner, Plotly SVGs and
data-grid canvases present). Targets (docs: the dashboard issue): reload and switch < 2 s, range change < 1 s.
Misses print as MISS; the script exits 0 (it measures; a busy CI box should not fail a build). Results go to
bench/out/pages-results.json. Everything stays on the loopback interface.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# TOKENTRAIL_BENCH_OUT moves every output (logs, databases, figures) elsewhere: the test suite runs the
# benchmarks at a tiny size there, leaving the figures of a real run in bench/out/ alone.
OUT = Path(os.environ.get("TOKENTRAIL_BENCH_OUT") or BENCH_DIR / "out")
# bench/ingest.py would shadow the engine package `ingest` (Python puts bench/ first on sys.path)
sys.path[:] = [x for x in sys.path if Path(x or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(REPO))  # tests.browser_support


def _shown(p: Path) -> str:
    """A path as printed: relative to the repository when inside it."""
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


from tests.browser_support import (  # noqa: E402
    VIEWPORT,
    dashboard,
    launch,
    settle,
    wait_idle,
)

TARGETS = {"reload_s": 2.0, "switch_s": 2.0, "range_s": 1.0}
LIVE_TARGETS = {"reload_s": 2.0, "fresh_s": 7.0}  # fresh: about 1 s of applying + up to 5 s of auto-refresh
PAGES = [  # (name, url path, title shown in the page header, sidebar link text); the default page is at "/"
    ("overview", "", "Overview", "Overview"),
    ("refresh-rates", "refresh-rates", "Refresh rates", "Refresh rates"),
    ("orphans", "orphans", "Orphaned tokens", "Orphaned tokens"),
    ("lifetimes", "lifetimes", "Session lifetimes", "Session lifetimes"),
    ("identity", "identity", "Identity drill-down", "Identity drill-down"),
    ("upload", "upload", "Upload", "Upload"),
]
RANGE_STEPS = ("Last 24 hours", "Last 7 days")

# Counts script runs of the page from now on (a MutationObserver on the app root's run state).
_WATCH_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  window.__ttRuns = 0;
  if (window.__ttObserver) window.__ttObserver.disconnect();
  window.__ttObserver = new MutationObserver(records => {
    // a run seen starting, or ending (a quick run can start and end between two callbacks)
    for (const r of records)
      if (r.oldValue === 'running' || app.getAttribute('data-test-script-state') === 'running') window.__ttRuns += 1;
  });
  window.__ttObserver.observe(app, {attributes: true, attributeOldValue: true,
                                    attributeFilter: ['data-test-script-state']});
}"""


# -------------------------------------------------------------------------------------------- databases


def log_file(n: int, seed: int) -> Path:
    return OUT / f"notifications-{n}-s{seed}.jsonl"


def build_db(n: int, seed: int, timeout: float) -> tuple[Path, dict]:
    """The database of N generated lines, built once with the real CLI; its summary."""
    src = log_file(n, seed)
    db = OUT / "db" / f"pages-{n}.duckdb"
    ok = db.with_suffix(".duckdb.ok")
    if db.exists() and ok.exists():
        return db, json.loads(ok.read_text())
    if not src.exists():
        raise FileNotFoundError(
            f"{src} is missing: generate it with `.venv/bin/python bench/ingest.py --sizes {n} --cases floor`"
        )
    db.parent.mkdir(parents=True, exist_ok=True)
    for p in (db, db.with_suffix(".duckdb.wal"), db.with_suffix(".duckdb.key"), ok):
        p.unlink(missing_ok=True)
    exe = shutil.which("tokentrail", path=str(Path(sys.executable).parent)) or "tokentrail"
    print(f"building {db.name} from {src.name} (once; minutes for millions of lines)...", flush=True)
    t0 = time.perf_counter()
    subprocess.run(
        [exe, "ingest", str(src), "--db", str(db), "--json"],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=timeout,
    )
    built = time.perf_counter() - t0
    out = subprocess.run(
        [exe, "summary", "--db", str(db), "--json"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads(out.stdout)
    summary["build_s"] = round(built, 1)
    ok.write_text(json.dumps(summary, indent=1))
    print(f"  built in {built:.0f} s: {summary['events']:,} events, {summary['chains']:,} chains", flush=True)
    return db, summary


def busiest_identity(db: Path) -> str | None:
    """The identity with the most chains (the drill-down's worst case), read before the dashboard opens the file."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(
            "SELECT identity FROM chains WHERE identity IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    return row[0] if row else None


# -------------------------------------------------------------------------------------------- timings


def _page_url(base: str, path: str, identity: str | None) -> str:
    if path == "identity" and identity:
        from urllib.parse import urlencode

        return f"{base}/{path}?{urlencode({'identity': identity})}"
    return f"{base}/{path}"


def _header(page, title: str):
    return page.locator("h1").filter(has_text=title)


_STATE_JS = """() => { const a = document.querySelector('[data-testid="stApp"]');
                        return a ? a.getAttribute('data-test-script-state') : null; }"""


def timed_goto(page, url: str, title: str, timeout: float, split: dict | None = None) -> float:
    """Seconds from navigation until the page is drawn. `split` gets the part before the first script run
    starts (`connect_s`: the browser loads Streamlit's bundle and opens the websocket) and the rest (`run_s`)."""
    t0 = time.perf_counter()
    page.goto(url, wait_until="commit", timeout=timeout * 1000)
    started = None
    deadline = t0 + timeout
    while started is None and time.perf_counter() < deadline:
        if page.evaluate(_STATE_JS) in ("running", "notRunning"):
            started = time.perf_counter()
        else:
            time.sleep(0.01)
    _header(page, title).first.wait_for(timeout=timeout * 1000)
    wait_idle(page, timeout=timeout)
    took = time.perf_counter() - t0
    _check(page, url)
    if split is not None and started is not None:
        split["connect_s"], split["run_s"] = started - t0, took - (started - t0)
    return took


def _check(page, where: str) -> None:
    """A timing of a broken page means nothing: stop on an exception box or a dialog ("Page not found")."""
    problems = page.locator('[data-testid="stException"], [role="dialog"]').all_inner_texts()
    if problems:
        raise RuntimeError(f"{where}: {problems}")


def _wait_run(page, timeout: float) -> None:
    page.wait_for_function("() => window.__ttRuns > 0", timeout=timeout * 1000, polling=10)
    wait_idle(page, timeout=timeout)


def timed_switch(page, link: str, title: str, timeout: float) -> float:
    page.evaluate(_WATCH_JS)
    nav = page.locator('[data-testid="stSidebarNav"] a').filter(has_text=link).first
    t0 = time.perf_counter()
    nav.click(timeout=timeout * 1000)
    _header(page, title).first.wait_for(timeout=timeout * 1000)
    _wait_run(page, timeout)
    took = time.perf_counter() - t0
    _check(page, f"switch to {title}")
    return took


def timed_range(page, label: str, timeout: float) -> float:
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first
    box.click(timeout=timeout * 1000)
    option = page.locator('[role="option"]').filter(has_text=label).first
    option.wait_for(timeout=timeout * 1000)
    page.evaluate(_WATCH_JS)
    t0 = time.perf_counter()
    option.click(timeout=timeout * 1000)
    _wait_run(page, timeout)
    took = time.perf_counter() - t0
    _check(page, f"range {label}")
    return took


def bench_size(n: int, db: Path, summary: dict, args) -> dict:
    from playwright.sync_api import sync_playwright

    identity = busiest_identity(db)
    log = OUT / "logs" / f"pages-{n}-server.log"
    rows: dict[str, dict] = {name: {} for name, *_ in PAGES}
    with dashboard(db, log, timeout=args.timeout) as base, sync_playwright() as p:
        browser = launch(p)
        try:
            ctx = browser.new_context(viewport=VIEWPORT)
            # cold: every page once, in a fresh session each, on the fresh server
            for name, path, title, _ in PAGES:
                page = ctx.new_page()
                rows[name]["cold_s"] = timed_goto(page, _page_url(base, path, identity), title, args.timeout)
                page.close()
                print(f"  {name}: cold {rows[name]['cold_s']:.2f} s", flush=True)
            # reload: again, query results cached
            for name, path, title, _ in PAGES:
                best, best_split = None, {}
                for _ in range(args.repeat):
                    page = ctx.new_page()
                    split: dict = {}
                    t = timed_goto(page, _page_url(base, path, identity), title, args.timeout, split)
                    page.close()
                    if best is None or t < best:
                        best, best_split = t, split
                rows[name]["reload_s"] = best
                rows[name]["reload_connect_s"] = best_split.get("connect_s")
                rows[name]["reload_run_s"] = best_split.get("run_s")
                print(f"  {name}: reload {best:.2f} s ({best_split})", flush=True)
            # switch: sidebar clicks within one session (identity: the selection lives in the session)
            page = ctx.new_page()
            timed_goto(page, _page_url(base, "identity", identity), "Identity drill-down", args.timeout)
            order = PAGES[1:] + PAGES[:1]
            for _ in range(args.repeat):
                for name, _path, title, link in order:
                    t = timed_switch(page, link, title, args.timeout)
                    rows[name]["switch_s"] = min(rows[name].get("switch_s", t), t)
            page.close()
            print(
                "  switches: " + ", ".join(f"{k} {r['switch_s']:.2f} s" for k, r in rows.items()), flush=True
            )
            # range: each page in a new session at "All data", then the range steps (new ranges for its queries)
            for name, path, title, _ in PAGES:
                page = ctx.new_page()
                timed_goto(page, _page_url(base, path, identity), title, args.timeout)
                settle(page, timeout=args.timeout)
                times = [timed_range(page, label, args.timeout) for label in RANGE_STEPS]
                rows[name]["range_steps_s"] = dict(zip(RANGE_STEPS, times, strict=True))
                rows[name]["range_s"] = max(times)
                print(f"  {name}: range " + ", ".join(f"{t:.2f} s" for t in times), flush=True)
                page.close()
            ctx.close()
        finally:
            browser.close()
    for r in rows.values():
        r["pass"] = {k: r[k] < v for k, v in TARGETS.items() if k in r}
    return {"n": n, "db": str(db), "identity": identity, "summary": summary, "pages": rows}


# -------------------------------------------------------------------------------------------- live page


def _live_count(page) -> int | None:
    from tests.browser_support import metric_values

    try:
        return int(metric_values(page)["Live deliveries"].replace(",", ""))
    except (KeyError, ValueError):  # not drawn yet, or being redrawn
        return None


class _Poster:
    """Posts chained Tyk notifications to the receiver at `rate` a second, in a thread, until stopped."""

    def __init__(self, rx, rate: float, tag: str):
        import threading

        self.rx, self.rate, self.tag, self.sent, self.failed = rx, rate, tag, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tests.live_support import notification

        t0 = time.perf_counter()
        while not self._stop.is_set():
            i = self.sent
            body = notification(i, kind="new" if i % 50 == 0 else "refresh", tag=self.tag)
            try:
                ok = self.rx.post(body).status_code == 200
            except Exception:  # noqa: BLE001 - counted, the bench goes on
                ok = False
            self.sent += 1
            self.failed += not ok
            delay = t0 + self.sent / self.rate - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def bench_live(n: int, db: Path, args) -> dict:
    """The Live receiver page with `tokentrail receive` running on a copy of `db` (see the module docstring)."""
    from playwright.sync_api import sync_playwright

    from tests.live_support import notification, receiver

    copy = OUT / "db" / f"pages-{n}-live.duckdb"
    for suffix in ("", ".key"):
        shutil.copyfile(str(db) + suffix, str(copy) + suffix)
    shutil.rmtree(str(copy) + ".spool", ignore_errors=True)
    log = OUT / "logs" / f"pages-{n}-live-server.log"
    out: dict = {"rate_per_s": args.live_rate}
    try:
        with receiver(copy) as rx, dashboard(copy, log, timeout=args.timeout) as base, sync_playwright() as p:
            browser = launch(p)
            try:
                ctx = browser.new_context(viewport=VIEWPORT)
                url = f"{base}/live?refresh=5s"
                # the first delivery makes the page show live data rather than its how-to-start panel
                if rx.post(notification(0, kind="new", tag="first")).status_code != 200:
                    raise RuntimeError(f"live: the receiver refused a notification (log: {rx.log})")
                page = ctx.new_page()
                timed_goto(page, url, "Live receiver", args.timeout)
                page.close()
                with _Poster(rx, args.live_rate, "load") as poster:
                    best, lags = None, []
                    for _ in range(max(2, args.repeat)):
                        page = ctx.new_page()
                        t = timed_goto(page, url, "Live receiver", args.timeout)
                        page.close()
                        best = t if best is None else min(best, t)
                        lags.append(rx.metrics().get("tokentrail_spool_lag_deliveries", float("nan")))
                out.update(reload_s=best, spool_lag_max=max(lags), posted=poster.sent, post_failures=poster.failed)
                print(f"  live: reload {best:.2f} s under {args.live_rate:g} deliveries/s "
                      f"(spool lag seen: {', '.join(f'{x:g}' for x in lags)})", flush=True)
                # freshness: bursts of 10 on the open page, each timed until the tile counts it
                page = ctx.new_page()
                timed_goto(page, url, "Live receiver", args.timeout)
                settle(page, timeout=args.timeout)
                fresh = []
                for k in range(5):
                    deadline = time.perf_counter() + args.timeout
                    before = None
                    while before is None and time.perf_counter() < deadline:
                        before = _live_count(page)
                        time.sleep(0.1)
                    t0 = time.perf_counter()
                    for i in range(10):
                        rx.post(notification(i, kind="new" if i == 0 else "refresh", tag=f"burst{k}"))
                    seen = before
                    while (seen is None or seen < before + 10) and time.perf_counter() < deadline:
                        time.sleep(0.05)
                        seen = _live_count(page)
                    if seen is None or seen < before + 10:
                        raise RuntimeError(f"live: a burst of 10 did not show within {args.timeout:g} s")
                    fresh.append(time.perf_counter() - t0)
                page.close()
                fresh.sort()
                out.update(fresh_s=fresh[len(fresh) // 2], fresh_max_s=fresh[-1], fresh_all_s=fresh)
                print("  live: freshness " + ", ".join(f"{x:.1f}" for x in fresh) + " s", flush=True)
                ctx.close()
            finally:
                browser.close()
    finally:
        for suffix in ("", ".key", ".wal"):
            Path(str(copy) + suffix).unlink(missing_ok=True)
        shutil.rmtree(str(copy) + ".spool", ignore_errors=True)
    out["pass"] = {k: out[k] < v for k, v in LIVE_TARGETS.items() if out.get(k) is not None}
    return out


def print_table(result: dict) -> None:
    s = result["summary"]
    print(
        f"\n{result['n']:,} lines: {s['events']:,} events, {s['chains']:,} chains, {s['deliveries']:,} deliveries "
        f"(identity drill-down on {result['identity']})"
    )
    print(
        f"{'page':<15} {'cold s':>8} {'reload s':>9} {'<2 s':>5} {'(connect':>9} {'+ run)':>7} "
        f"{'switch s':>9} {'<2 s':>5} {'range s':>8} {'<1 s':>5}"
    )
    for name, r in result["pages"].items():
        ok = r["pass"]

        def mark(k: str, ok=ok) -> str:
            return "PASS" if ok[k] else "MISS"

        print(
            f"{name:<15} {r['cold_s']:>8.2f} {r['reload_s']:>9.2f} {mark('reload_s'):>5} "
            f"{r['reload_connect_s'] or 0:>9.2f} {r['reload_run_s'] or 0:>7.2f} {r['switch_s']:>9.2f} "
            f"{mark('switch_s'):>5} {r['range_s']:>8.2f} {mark('range_s'):>5}"
        )
    live = result.get("live")
    if live:
        verdict = {k: "PASS" if v else "MISS" for k, v in live["pass"].items()}
        print(
            f"{'live':<15} {'':>8} {live['reload_s']:>9.2f} {verdict['reload_s']:>5}   under "
            f"{live['rate_per_s']:g} deliveries/s (spool lag <= {live['spool_lag_max']:g}); freshness median "
            f"{live['fresh_s']:.1f} s, max {live['fresh_max_s']:.1f} s {verdict['fresh_s']} (< {LIVE_TARGETS['fresh_s']:g} s)"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes", help="comma-separated line counts (default: 1000000, and 5000000 if generated)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="reloads and switches per page; the fastest counts")
    ap.add_argument("--timeout", type=float, default=120, help="seconds for any one wait in the browser")
    ap.add_argument("--build-timeout", type=float, default=1800, help="seconds for building one database")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--live-rate", type=float, default=20, help="deliveries a second during the live page's reloads")
    ap.add_argument("--no-live", action="store_true", help="skip the Live receiver page")
    args = ap.parse_args()
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",") if x]
    else:
        sizes = [1_000_000] + ([5_000_000] if log_file(5_000_000, args.seed).exists() else [])

    results = []
    for n in sizes:
        db, summary = build_db(n, args.seed, args.build_timeout)
        if args.build_only:
            continue
        result = bench_size(n, db, summary, args)
        if not args.no_live:
            result["live"] = bench_live(n, db, args)
        print_table(result)
        results.append(result)
    if args.build_only:
        return 0
    print(
        f"\ntargets: reload and switch < {TARGETS['reload_s']:g} s, range change < {TARGETS['range_s']:g} s "
        "(cold = first load on a fresh server: no target)"
    )
    out = OUT / "pages-results.json"
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "targets": TARGETS,
                "live_targets": LIVE_TARGETS,
                "results": results,
            },
            indent=1,
            default=str,
        )
    )
    print(f"wrote {_shown(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
