"""Ingest benchmark: speed and peak memory of `tokentrail ingest`, against a floor and a naive baseline.

    .venv/bin/python bench/ingest.py [--sizes 1000000,5000000] [--keep]

Every case runs in a fresh subprocess on a fresh DuckDB file under bench/out/db/, so its peak RSS is that
process's own high-water mark (from wait4's rusage, cross-checked by psutil sampling of the process tree)
and no case warms caches for the next one; the input file is read once beforehand so that every case
starts from the OS page cache. Seconds are wall time of the whole subprocess (interpreter start-up
included, as a user would see it). Misses of targets print as MISS; the script still exits 0, because it
measures and a CI box's noise should not fail a build. See bench/README.md for the cases and targets.

The cases run through this same file (`--worker CASE ...`) so the harness and the workers cannot drift.
Note the name clash: this file is `ingest.py` and Python puts bench/ first on sys.path when it runs a
script, which would shadow the engine package `ingest`; the lineage worker removes bench/ from sys.path
before importing it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# TOKENTRAIL_BENCH_OUT moves every output (logs, databases, figures) elsewhere: the test suite runs the
# benchmarks at a tiny size there, leaving the figures of a real run in bench/out/ alone.
OUT = Path(os.environ.get("TOKENTRAIL_BENCH_OUT") or BENCH_DIR / "out")


def _shown(p: Path) -> str:
    """A path as printed: relative to the repository when inside it."""
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


TARGETS = {
    "tokentrail_vs_floor": 2.5,  # (c)/(a) time at each N: at most
    "naive_vs_tokentrail": 2.0,  # (b)/(c) time at each N: at least
    "tokentrail_peak_rss_mb_5m": 1500,  # (c) peak RSS at 5M lines: below
    "networkx_vs_lineage": 15.0,  # networkx build+components / lineage rebuild: at least
    "scaling_slack": 1.2,  # (c) time ratio between sizes: below 1.2 x the size ratio (1M -> 5M: < 6)
}


# --------------------------------------------------------------------------------------------- workers
# Each prints one JSON object on stdout. They import only what their case needs.


def worker_floor(path: str, db: str) -> dict:
    import duckdb

    t0 = time.perf_counter()
    con = duckdb.connect(db)
    con.execute("CREATE TABLE t AS SELECT * FROM read_json(?, format='newline_delimited')", [path])
    rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.close()  # checkpoint: the table is in the file, as with the other cases
    return {"rows": rows, "inner_s": time.perf_counter() - t0}


def worker_naive(path: str, db: str) -> dict:
    import duckdb
    import pandas as pd

    t0 = time.perf_counter()
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            rec.update(rec.pop("body"))
            rows.append(rec)
    df = pd.DataFrame(rows)
    del rows
    con = duckdb.connect(db)
    con.register("df", df)
    con.execute("CREATE TABLE t AS SELECT * FROM df")
    n = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.close()
    return {"rows": n, "inner_s": time.perf_counter() - t0}


def _engine_imports():
    """Import the engine package, not this file (see the module docstring)."""
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
    sys.modules.pop("ingest", None)
    import importlib

    return importlib.import_module("ingest.store"), importlib.import_module("ingest.lineage")


def worker_lineage(db: str) -> dict:
    store_mod, lineage_mod = _engine_imports()
    store = store_mod.Store.open(db)
    try:
        t0 = time.perf_counter()
        with store.transaction() as cur:
            result = _call_rebuild(lineage_mod.rebuild, store, cur)
            seconds = time.perf_counter() - t0
        commit_s = time.perf_counter() - t0 - seconds
        cur = store.cursor()
        events = cur.execute("SELECT count(*) FROM lineage").fetchone()[0]
        chains = cur.execute("SELECT count(DISTINCT chain_id) FROM lineage").fetchone()[0]
    finally:
        store.close()
    # the figure is rebuild() itself; writing the rebuilt tables out at COMMIT is reported beside it
    out = {"rows": events, "inner_s": seconds, "commit_s": commit_s, "chains": chains}
    if isinstance(result, dict):
        out["result"] = {k: v for k, v in result.items() if isinstance(v, int | float | str)}
    return out


def _call_rebuild(rebuild, store, cur):
    """`rebuild` is being written alongside this bench: accept a Store or a cursor as its argument."""
    import inspect

    params = list(inspect.signature(rebuild).parameters)
    first = params[0] if params else ""
    if first in ("cur", "cursor", "con", "conn", "connection"):
        return rebuild(cur)
    return rebuild(store)


def worker_networkx(db: str) -> dict:
    import duckdb
    import networkx as nx

    con = duckdb.connect(db, read_only=True)
    t0 = time.perf_counter()
    # Ids are 120-bit integers, which DuckDB hands to Python one slow conversion at a time (626 s for 5M rows):
    # networkx gets their low 64 bits, through numpy. Those are as distinct as the ids for a graph of this size.
    def low(column: str) -> str:
        return f"({column} & 18446744073709551615)::UBIGINT"

    nodes = con.execute(f"SELECT {low('event_id')} AS n FROM lineage").fetchnumpy()["n"].tolist()
    cols = con.execute(
        f"SELECT {low('event_id')} AS a, {low('parent_id')} AS b FROM lineage WHERE parent_id IS NOT NULL"
    ).fetchnumpy()
    edges = list(zip(cols["a"].tolist(), cols["b"].tolist(), strict=True))
    fetch_s = time.perf_counter() - t0
    con.close()
    t1 = time.perf_counter()
    g = nx.Graph()
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    components = sum(1 for _ in nx.connected_components(g))
    seconds = time.perf_counter() - t1
    return {
        "rows": len(nodes),
        "edges": len(edges),
        "inner_s": seconds,
        "fetch_s": fetch_s,
        "chains": components,
    }


WORKERS = {
    "floor": worker_floor,
    "naive": worker_naive,
    "lineage": worker_lineage,
    "networkx": worker_networkx,
}


# ------------------------------------------------------------------------------------------- measuring


def measure(cmd: list[str], log_stem: Path, timeout_s: float) -> dict:
    """Run `cmd` in its own session; wall time, peak RSS (MB) and CPU seconds of it and its children."""
    import psutil

    log_stem.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_stem.with_suffix(".stdout"), log_stem.with_suffix(".stderr")
    sys0, own0 = psutil.cpu_times(), time.process_time()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, start_new_session=True)
        tree_peak, peak_at = 0, 0.0
        timeline: list[tuple[float, int]] = []  # (seconds, MB) every ~0.5 s: where the peak falls
        timed_out = False
        ps = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                elapsed = time.perf_counter() - t0
                break
            try:
                ps = ps or psutil.Process(proc.pid)
                rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                now = time.perf_counter() - t0
                if rss > tree_peak:
                    tree_peak, peak_at = rss, now
                if not timeline or now - timeline[-1][0] >= 0.5:
                    timeline.append((round(now, 2), rss // 2**20))
            except psutil.Error:
                pass
            if time.perf_counter() - t0 > timeout_s and not timed_out:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the session we started for this case only
            time.sleep(0.01 if time.perf_counter() - t0 < 2 else 0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen the child is reaped
    sys1, own1 = psutil.cpu_times(), time.process_time()
    # ru_maxrss is in KiB on Linux; it covers the child and the descendants it waited for
    peak_mb = max(usage.ru_maxrss * 1024, tree_peak) / 2**20
    cpu_s = usage.ru_utime + usage.ru_stime
    # CPU the rest of the machine used meanwhile (other people's tests on a shared box): the noise gauge
    busy = sum(
        getattr(sys1, f) - getattr(sys0, f) for f in ("user", "nice", "system", "irq", "softirq", "steal")
    )
    others = max(0.0, busy - cpu_s - (own1 - own0))
    ncpu = psutil.cpu_count() or 1
    res = {
        "seconds": elapsed,
        "peak_rss_mb": peak_mb,
        "maxrss_mb": usage.ru_maxrss / 1024,
        "tree_sampled_mb": tree_peak / 2**20,
        "peak_at_s": peak_at,
        "rss_timeline_mb": timeline,
        "cpu_s": cpu_s,
        "others_cpu_s": others,
        "others_busy_pct": 100 * others / (elapsed * ncpu) if elapsed else 0.0,
        "iowait_s": sys1.iowait - sys0.iowait,
        "exit": proc.returncode,
        "stdout": out_path.read_text(errors="replace"),
        "stderr_tail": _tail(err_path, 25),
    }
    if timed_out:
        res["error"] = f"timed out after {timeout_s:.0f} s"
    elif proc.returncode != 0:
        res["error"] = f"exit status {proc.returncode}: " + " | ".join(res["stderr_tail"].splitlines()[-3:])
    return res


def _tail(path: Path, n: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-n:])


def run_worker(case: str, args: list[str], log_stem: Path, timeout_s: float) -> dict:
    res = measure(
        [sys.executable, str(Path(__file__).resolve()), "--worker", case, *args], log_stem, timeout_s
    )
    if "error" not in res:
        try:
            res.update(json.loads(res["stdout"].strip().splitlines()[-1]))
        except (ValueError, IndexError):
            res["error"] = "the worker printed no result: " + res["stdout"][-200:]
    return res


def fresh_db(name: str) -> Path:
    db = OUT / "db" / f"{name}.duckdb"
    db.parent.mkdir(parents=True, exist_ok=True)
    for p in (db, Path(f"{db}.wal"), Path(f"{db}.key")):
        p.unlink(missing_ok=True)
    return db


def drop_db(db: Path) -> None:
    for p in (db, Path(f"{db}.wal"), Path(f"{db}.key")):
        p.unlink(missing_ok=True)


def warm_page_cache(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(16 * 2**20):
            pass


def find_tokentrail() -> tuple[str | None, str]:
    """The console script and whether `tokentrail ingest --help` works; else None and the reason."""
    exe = Path(sys.executable).parent / "tokentrail"
    found = str(exe) if exe.exists() else shutil.which("tokentrail")
    if not found:
        return None, "no tokentrail console script (run `make test` or `pip install -e .` in the repo)"
    try:
        r = subprocess.run([found, "ingest", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"`tokentrail ingest --help` failed: {e}"
    if r.returncode != 0:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"`tokentrail ingest --help` exited {r.returncode}: {last[0]}"
    return found, ""


def tokentrail_summary(exe: str, db: Path) -> dict | None:
    try:
        r = subprocess.run(
            [exe, "summary", "--db", str(db), "--json"], capture_output=True, text=True, timeout=600, cwd=REPO
        )
        return json.loads(r.stdout) if r.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


# --------------------------------------------------------------------------------------------- running


def bench_size(n: int, args: argparse.Namespace, exe: str | None, why_no_exe: str) -> dict:
    import notifications

    print(f"\n== N = {n:,} ==", flush=True)
    path, truth = notifications.cached(OUT, n, args.seed)
    size_mb = path.stat().st_size / 2**20
    print(
        f"input {_shown(path)}: {size_mb:,.0f} MB, {path.stat().st_size / n:.0f} bytes/line",
        flush=True,
    )
    logs = OUT / "logs"
    results: dict[str, dict] = {}
    timeout = args.timeout

    # --repeat K runs K rounds, each case once per round, in order: a host whose speed drifts over minutes
    # then slows the cases of one round alike, and the ratios are also taken round by round (see
    # compute_ratios). Per case the fastest round is reported: noise from a shared machine only adds time.
    tries: dict[str, list[dict | None]] = {}
    failed: set[str] = set()

    def step(case: str, fn, round_no: int) -> None:
        if case not in args.cases:
            return
        runs = tries.setdefault(case, [])
        runs.extend([None] * (round_no - len(runs)))  # rounds this case did not run in
        if case in failed:
            return
        print(f"  {case:<10} ...", end=" ", flush=True)
        res = fn()
        if "error" in res:
            skipped = res["error"].startswith("skipped")
            print(res["error"] if skipped else f"FAILED: {res['error']}", flush=True)
            failed.add(case)
            results[case] = res
            runs.append(None)
            return
        print(
            f"{_figure_s(case, res):.2f} s, {res['peak_rss_mb']:,.0f} MB, others busy {res['others_busy_pct']:.0f}%",
            flush=True,
        )
        runs.append(res)
        results[case] = res  # the latest: lineage rebuilds the database this round's tokentrail wrote

    def best(case: str) -> None:
        ok = [r for r in tries.get(case, []) if r is not None]
        if not ok:
            return
        res = min(ok, key=lambda r: _figure_s(case, r))
        rounds = tries[case]
        res["rounds_s"] = [None if r is None else _figure_s(case, r) for r in rounds]
        if case == "lineage":
            res["rounds_assign_s"] = [None if r is None else (r.get("result") or {}).get("chain_assignment_s")
                                      for r in rounds]
        if len(ok) > 1:
            res["all_seconds"] = [_figure_s(case, r) for r in ok]
            res["peak_rss_mb_max"] = max(r["peak_rss_mb"] for r in ok)
        results[case] = res

    def floor():
        warm_page_cache(path)
        db = fresh_db(f"floor-{n}")
        res = run_worker("floor", [str(path), str(db)], logs / f"floor-{n}", timeout)
        res["db_mb"] = _size_mb(db)
        if not args.keep:
            drop_db(db)
        return res

    def naive():
        warm_page_cache(path)
        db = fresh_db(f"naive-{n}")
        res = run_worker("naive", [str(path), str(db)], logs / f"naive-{n}", timeout)
        res["db_mb"] = _size_mb(db)
        if not args.keep:
            drop_db(db)
        return res

    tt_db = OUT / "db" / f"tokentrail-{n}.duckdb"

    def tokentrail():
        if not exe:
            return {"error": f"skipped: {why_no_exe}"}
        warm_page_cache(path)
        db = fresh_db(f"tokentrail-{n}")
        # --json only changes what is printed at the end: the report, with the engine's phase timings
        cmd = [exe, "ingest", str(path), "--db", str(db), "--json"]
        res = measure(cmd, logs / f"tokentrail-{n}", timeout)
        res["rows"] = n
        with contextlib.suppress(ValueError, AttributeError):
            report = json.loads(res["stdout"])
            res["phases"] = report.get("phases")
            res["engine_s"] = report.get("seconds")
        res["db_mb"] = _size_mb(db)
        if "error" not in res:
            summary = tokentrail_summary(exe, db)
            res["summary"] = summary
            res["check"] = check_against_truth(summary, truth)
        return res

    def lineage():
        if not exe:
            return {"error": f"skipped: {why_no_exe}"}
        if "error" in results.get("tokentrail", {"error": "not run"}) or not tt_db.exists():
            return {"error": "skipped: needs the database of a successful tokentrail run"}
        return run_worker("lineage", [str(tt_db)], logs / f"lineage-{n}", timeout)

    def networkx():
        if "error" in results.get("lineage", {"error": "not run"}):
            return {"error": "skipped: needs a successful lineage rebuild"}
        return run_worker("networkx", [str(tt_db)], logs / f"networkx-{n}", timeout)

    cases = [("floor", floor), ("naive", naive), ("tokentrail", tokentrail), ("lineage", lineage),
             ("networkx", networkx)]
    for round_no in range(args.repeat):
        if args.repeat > 1:
            print(f"  round {round_no + 1} of {args.repeat}", flush=True)
        for case, fn in cases:
            step(case, fn, round_no)
    for case, _fn in cases:
        best(case)
    tt = results.get("tokentrail", {})
    if tt.get("phases"):
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in tt["phases"].items())
        # whatever the phases do not cover: interpreter and imports, opening the store, COMMIT, exit
        rest = tt["seconds"] - sum(tt["phases"].values())
        phases += f", outside the phases {rest:.2f} s"
        print(f"  tokentrail phases{' (fastest round)' if args.repeat > 1 else ''}: {phases}", flush=True)
        where = _phase_at(tt)
        print(
            f"  tokentrail peak RSS {tt['tree_sampled_mb']:,.0f} MB at {tt['peak_at_s']:.1f} s{where}",
            flush=True,
        )
    if tt.get("check"):
        print("  check vs generator truth: " + ", ".join(tt["check"]), flush=True)
    if tt.get("stderr_tail"):
        print("  tokentrail stderr (last lines):", flush=True)
        for line in tt["stderr_tail"].splitlines()[-12:]:
            print(f"    | {line}", flush=True)
    if not args.keep:
        drop_db(tt_db)
    for res in results.values():
        res.pop("stdout", None)
    return {
        "n": n,
        "input": _shown(path),
        "input_mb": size_mb,
        "truth": truth,
        "cases": results,
    }


def _phase_at(tt: dict) -> str:
    """Which engine phase the sampled RSS peak fell in, assuming the phases start after the interpreter
    and imports and run back to back (the report's own total covers phases + COMMIT)."""
    if not tt.get("engine_s") or not tt.get("phases"):
        return ""
    # start-up ~ wall - engine - exit; exit (closing the file) is short, so this is an upper bound
    t = tt["seconds"] - tt["engine_s"]
    for name, secs in tt["phases"].items():
        if tt["peak_at_s"] <= t + secs:
            return f" (during {name}, approximately)"
        t += secs
    return " (after the phases: COMMIT or exit, approximately)"


def _figure_s(case: str, res: dict) -> float:
    """The time a case is judged by: the subprocess wall time, or the timed region for lineage/networkx."""
    return res["inner_s"] if case in ("lineage", "networkx") else res["seconds"]


def check_against_truth(summary: dict | None, truth: dict) -> list[str]:
    if summary is None:
        return ["`tokentrail summary --json` gave nothing to check"]
    out = []
    for key in ("deliveries", "events", "duplicates", "chains", "orphan_chains", "forks"):
        got, want = summary.get(key), truth.get(key)
        if got is None:
            out.append(f"{key}: not in summary")
        else:
            out.append(f"{key} {got:,}" + (" ok" if got == want else f" (generator: {want:,})"))
    return out


def _size_mb(p: Path) -> float | None:
    return p.stat().st_size / 2**20 if p.exists() else None


# ------------------------------------------------------------------------------------------- reporting

CASE_LABELS = {
    "floor": "(a) duckdb read_json floor",
    "naive": "(b) naive json.loads+pandas",
    "tokentrail": "(c) tokentrail ingest",
    "lineage": "lineage rebuild",
    "networkx": "networkx build+components",
}


def report(runs: list[dict]) -> dict:
    header = f"{'case':<30} {'N':>10} {'seconds':>9} {'rows/s':>11} {'peak RSS MB':>12} {'cpu s':>8} {'others %':>9}"
    print("\n" + header)
    print("-" * len(header))
    for run in runs:
        for case, res in run["cases"].items():
            label = CASE_LABELS[case]
            if "error" in res:
                print(
                    f"{label:<30} {run['n']:>10,} {'-':>9} {'-':>11} {'-':>12} {'-':>8} {'-':>9}  {res['error'][:70]}"
                )
                continue
            # lineage/networkx: the inner (timed-region) seconds are the figure; the subprocess adds I/O
            secs = _figure_s(case, res)
            rows = res.get("rows") or run["n"]
            res["rows_per_s"] = rows / secs if secs else None
            extra = f"  (+{res['fetch_s']:.2f} s SQL fetch)" if case == "networkx" else ""
            print(
                f"{label:<30} {run['n']:>10,} {secs:>9.2f} {rows / secs:>11,.0f} {res['peak_rss_mb']:>12,.0f} "
                f"{res['cpu_s']:>8.1f} {res['others_busy_pct']:>8.0f}%{extra}"
            )
    print(
        "seconds: wall time of the subprocess; for lineage and networkx, of the timed region only.\n"
        "cpu s: the subprocess's CPU time (2 cores: up to 2 x wall). others %: the machine's CPU used by other\n"
        "processes meanwhile; above ~10 % the seconds are inflated (rerun with --repeat 3 on a quiet machine)."
    )
    ratios = compute_ratios(runs)
    print("\nratio                                        N           value     target   verdict")
    for r in ratios:
        value = "-" if r["value"] is None else f"{r['value']:.2f}"
        rounds = ""
        if r.get("paired"):
            p = r["paired"]
            rounds = (f"  (median of {len(p)} rounds, {min(p):.2f}-{max(p):.2f}; "
                      f"fastest runs: {r['fastest_runs_value']:.2f})")
        print(f"{r['name']:<40} {r['n']:>11} {value:>10} {r['target']:>10}   {r['verdict']}{rounds}")
    return {"ratios": ratios}


def compute_ratios(runs: list[dict]) -> list[dict]:
    def secs(run, case):
        res = run["cases"].get(case)
        if not res or "error" in res:
            return None
        return _figure_s(case, res)

    def rounds(run, case, key="rounds_s"):
        res = run["cases"].get(case)
        return [] if not res or "error" in res else res.get(key) or []

    def pairs(a_rounds, b_rounds):
        return [a / b for a, b in zip(a_rounds, b_rounds, strict=False) if a is not None and b]

    def ratio(name, n, a, b, op, target, paired=()):
        value = a / b if a is not None and b else None
        extra = {}
        if len(paired) >= 2 and value is not None:
            # several rounds: judged on the median of the rounds' own ratios (each taken within minutes, so a
            # drifting host slows both sides alike); the ratio of the fastest runs is kept beside it
            extra = {"fastest_runs_value": value, "paired": paired, "judged_on": "median of the rounds' ratios"}
            value = statistics.median(paired)
        if value is None:
            verdict = "SKIP (a case did not run)"
        else:
            verdict = (
                "PASS"
                if (value <= target if op == "<=" else value >= target if op == ">=" else value < target)
                else "MISS"
            )
        return {"name": name, "n": n, "value": value, "target": f"{op} {target}", "verdict": verdict, **extra}

    out = []
    for run in runs:
        n = f"{run['n']:,}"
        out.append(
            ratio(
                "(c)/(a) tokentrail / floor",
                n,
                secs(run, "tokentrail"),
                secs(run, "floor"),
                "<=",
                TARGETS["tokentrail_vs_floor"],
                pairs(rounds(run, "tokentrail"), rounds(run, "floor")),
            )
        )
        out.append(
            ratio(
                "(b)/(c) naive / tokentrail",
                n,
                secs(run, "naive"),
                secs(run, "tokentrail"),
                ">=",
                TARGETS["naive_vs_tokentrail"],
                pairs(rounds(run, "naive"), rounds(run, "tokentrail")),
            )
        )
        out.append(
            ratio(
                "networkx / lineage rebuild",
                n,
                secs(run, "networkx"),
                secs(run, "lineage"),
                ">=",
                TARGETS["networkx_vs_lineage"],
                pairs(rounds(run, "networkx"), rounds(run, "lineage")),
            )
        )
        # networkx only finds components; rebuild() also writes per-event intervals and per-chain statistics.
        # Its chain-assignment part (issuer join + pointer jumping) is the like-for-like figure.
        lin = run["cases"].get("lineage") or {}
        assign = (lin.get("result") or {}).get("chain_assignment_s")
        out.append(
            ratio(
                "networkx / chain assignment (like for like)",
                n,
                secs(run, "networkx"),
                assign,
                ">=",
                TARGETS["networkx_vs_lineage"],
                pairs(rounds(run, "networkx"), rounds(run, "lineage", "rounds_assign_s")),
            )
        )
    five_m = next((r for r in runs if r["n"] == 5_000_000), None)
    rss_target = TARGETS["tokentrail_peak_rss_mb_5m"]
    tt5 = five_m and five_m["cases"].get("tokentrail")
    if tt5 and "error" not in tt5:
        mb = tt5["peak_rss_mb"]
        verdict = "PASS" if mb < rss_target else "MISS"
        out.append(
            {
                "name": "(c) peak RSS MB at 5M",
                "n": "5,000,000",
                "value": mb,
                "target": f"< {rss_target}",
                "verdict": verdict,
            }
        )
    else:
        out.append(
            {
                "name": "(c) peak RSS MB at 5M",
                "n": "5,000,000",
                "value": None,
                "target": f"< {rss_target}",
                "verdict": "SKIP (5M not run)",
            }
        )
    ordered = sorted(runs, key=lambda r: r["n"])
    for small, big in zip(ordered, ordered[1:], strict=False):
        k = big["n"] / small["n"]
        target = round(TARGETS["scaling_slack"] * k, 2)
        out.append(
            ratio(
                "(c) time scaling",
                f"{small['n'] // 1000:,}k->{big['n'] // 1000:,}k",
                secs(big, "tokentrail"),
                secs(small, "tokentrail"),
                "<",
                target,
            )
        )
    return out


def engine_files() -> dict[str, float]:
    """Modification times of the engine's sources: the figures belong to one version of them."""
    return {
        str(p.relative_to(REPO)): p.stat().st_mtime
        for pkg in ("ingest", "tokentrail")
        for p in sorted((REPO / pkg).glob("*.py"))
    }


def _cpu_model() -> str:
    """The CPU's model name: figures from different hosts differ (the same code measured 1.5-2x apart)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    import duckdb

    env = {
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # other work on the box skews every figure: a load average near the core count means a busy machine
        "loadavg_at_start": os.getloadavg(),
    }
    try:
        import psutil

        env["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return env


def exclusive_run():
    """Hold bench/out/.ingest-bench.lock for the whole run. Two runs at once share the database and log
    names under bench/out/ and, worse, slow each other down: a second run waits for the first."""
    import fcntl

    OUT.mkdir(parents=True, exist_ok=True)
    lock = open(OUT / ".ingest-bench.lock", "a+")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        print(
            f"waiting: another bench/ingest.py run ({holder}) holds bench/out/.ingest-bench.lock", flush=True
        )
        fcntl.flock(lock, fcntl.LOCK_EX)
    lock.truncate(0)
    lock.write(f"pid {os.getpid()}, started {time.strftime('%H:%M:%S')}\n")
    lock.flush()
    return lock


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Time `tokentrail ingest` against DuckDB's read_json floor and a naive pandas loader.",
        epilog="example: .venv/bin/python bench/ingest.py --sizes 100000   (a quick run)",
    )
    ap.add_argument("--sizes", default="1000000,5000000", help="comma-separated line counts (default: 1M,5M)")
    ap.add_argument("--keep", action="store_true", help="keep the DuckDB files under bench/out/db/")
    ap.add_argument("--seed", type=int, default=1, help="generator seed (files are cached per N and seed)")
    ap.add_argument("--cases", default=",".join(CASE_LABELS), help="subset of: " + ",".join(CASE_LABELS))
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every case (default 1): per case the fastest counts, per ratio the median of the rounds")
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="per-case limit in seconds")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        case, *rest = args.worker
        print(json.dumps(WORKERS[case](*rest)))
        return 0

    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - set(CASE_LABELS)
    if unknown:
        ap.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(CASE_LABELS)}")
    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sizes takes comma-separated integers, e.g. 100000,1000000 (got {args.sizes!r})")
    _lock = exclusive_run()  # held (and released) with the process
    exe, why = find_tokentrail()
    if not exe and {"tokentrail", "lineage", "networkx"} & set(args.cases):
        print(f"note: (c), lineage and networkx are skipped: {why}", flush=True)

    env = environment()
    print(f"host: {env['cpu']}, {env['cpus']} cpus, Python {env['python']}, DuckDB {env['duckdb']}", flush=True)
    if env["loadavg_at_start"][0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"note: the machine is busy (load {env['loadavg_at_start'][0]:.1f}): figures will be noisy",
            flush=True,
        )
    engine_before = engine_files()
    runs = [bench_size(n, args, exe, why) for n in sizes]
    engine_after = engine_files()
    changed = sorted(
        f for f in engine_before.keys() | engine_after.keys() if engine_before.get(f) != engine_after.get(f)
    )
    env["engine_files_changed_during_run"] = changed
    env["engine_mtime"] = time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(engine_after.values(), default=0))
    )
    summary = report(runs)
    results = {"environment": env, "targets": TARGETS, "runs": runs, **summary}
    OUT.mkdir(parents=True, exist_ok=True)
    dest = OUT / "ingest-results.json"
    dest.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nfigures written to {_shown(dest)}")
    if changed:
        print(f"note: the engine changed while the bench ran ({', '.join(changed)}): figures mix versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
