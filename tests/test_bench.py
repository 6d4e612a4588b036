"""The benchmarks still run: each at a tiny size, end to end, with its own checks (bench/ never runs in CI
otherwise, and a measuring tool that rotted unnoticed measures nothing). Figures at this size mean nothing;
what is asserted is that every case ran, the ingest matched the generator's truth, and every page, the Live
receiver page included, was timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser_support import ROOT

N = 3000  # lines: seconds, not minutes


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """Where the benchmarks write (TOKENTRAIL_BENCH_OUT): not bench/out/, which holds a real run's figures."""
    return tmp_path_factory.mktemp("bench-out")


def _run(*args: str, out: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENTRAIL_BENCH_OUT": str(out)}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def ingest_results(out) -> dict:
    real = ROOT / "bench" / "out" / "ingest-results.json"
    before = real.stat().st_mtime_ns if real.exists() else None
    _run("bench/ingest.py", "--sizes", str(N), "--repeat", "2", out=out, timeout=300)
    # a real run's figures in bench/out/ are left alone
    assert (real.stat().st_mtime_ns if real.exists() else None) == before
    return json.loads((out / "ingest-results.json").read_text())


def test_ingest_bench_runs_every_case_and_checks_the_truth(ingest_results):
    [run] = ingest_results["runs"]
    assert run["n"] == N
    for case in ("floor", "naive", "tokentrail", "lineage", "networkx"):
        res = run["cases"][case]
        assert "error" not in res, f"{case}: {res.get('error')}"
        assert res["rows"] > 0 and res["seconds"] > 0
    tt = run["cases"]["tokentrail"]
    # "deliveries 3,000 ok", ... one line per figure, each "ok" when it equals the generator's truth
    assert len(tt["check"]) == 6 and all(line.endswith(" ok") for line in tt["check"]), tt["check"]
    # the same chains, found by the engine and by networkx's connected components
    assert run["cases"]["lineage"]["chains"] == run["cases"]["networkx"]["chains"] == run["truth"]["chains"]
    ratios = {r["name"]: r for r in ingest_results["ratios"]}
    assert set(ratios) >= {"(c)/(a) tokentrail / floor", "networkx / lineage rebuild"}
    # two rounds: every case ran in each, and each ratio is judged on the median of the rounds' own ratios
    for case in ("floor", "naive", "tokentrail", "lineage", "networkx"):
        assert len(run["cases"][case]["all_seconds"]) == 2, case
    floor, tt = run["cases"]["floor"]["rounds_s"], run["cases"]["tokentrail"]["rounds_s"]
    ca = ratios["(c)/(a) tokentrail / floor"]
    assert ca["paired"] == pytest.approx([tt[0] / floor[0], tt[1] / floor[1]])
    assert ca["value"] == pytest.approx(sum(ca["paired"]) / 2)
    assert ca["fastest_runs_value"] == pytest.approx(min(tt) / min(floor))
    assert ingest_results["environment"]["cpu"]


@pytest.mark.browser
def test_pages_bench_times_every_page_and_the_live_receiver(ingest_results, out):
    # bench/pages.py reads the log bench/ingest.py generated for this size
    done = _run("bench/pages.py", "--sizes", str(N), "--repeat", "1", "--live-rate", "5", out=out, timeout=900)
    result = json.loads((out / "pages-results.json").read_text())
    [res] = result["results"]
    assert res["summary"]["chains"] == ingest_results["runs"][0]["truth"]["chains"]
    assert set(res["pages"]) == {"overview", "refresh-rates", "orphans", "lifetimes", "identity", "upload"}
    for name, row in res["pages"].items():
        for k in ("cold_s", "reload_s", "switch_s", "range_s"):
            assert row[k] > 0, f"{name}: {k} missing"
    live = res["live"]
    assert live["reload_s"] > 0 and live["posted"] > 0 and live["post_failures"] == 0
    assert len(live["fresh_all_s"]) == 5 and all(t > 0 for t in live["fresh_all_s"])
    assert "live" in done.stdout
