"""How long the dashboard's writer takes to apply live deliveries to a large store, and a check at scale that
the incremental lineage update (`ingest.lineage.update`) leaves exactly what a full rebuild would.

It ingests the first N - K lines of the benchmark's notification file (bench/notifications.py, cached in
bench/out/), then sends the last K bodies through the live receiver's recorder in batches (as `tokentrail
receive` would record them) and applies each batch with `live.follower.apply_spool`. Finally it rebuilds the
lineage in full and compares both tables row for row.

    .venv/bin/python bench/live_apply.py                    # N = 1M, K = 10,000 in batches of 1,000
    .venv/bin/python bench/live_apply.py --lines 100000 --tail 5000 --batch 500
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--tail", type=int, default=10_000, help="lines delivered live, after the upload")
    ap.add_argument("--batch", type=int, default=1_000, help="deliveries per apply")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    import importlib.util

    from ingest import lineage
    from ingest.pipeline import ingest
    from ingest.store import Store
    from live.follower import apply_spool
    from live.recorder import Recorder, now_ns

    # bench/notifications.py by path: with bench/ on sys.path, bench/ingest.py would shadow the ingest package
    spec = importlib.util.spec_from_file_location("tt_bench_notifications", ROOT / "bench" / "notifications.py")
    notifications = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = notifications  # its dataclasses look themselves up there
    spec.loader.exec_module(notifications)
    source, _truth = notifications.cached(OUT, args.lines, args.seed)
    work = OUT / "live_apply"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    head, tail = work / "head.jsonl", []
    with open(source, "rb") as f, open(head, "wb") as h:
        for line in itertools.islice(f, args.lines - args.tail):
            h.write(line)
        tail = [json.dumps(json.loads(line)["body"]).encode() for line in f]

    store = Store.open(work / "store.duckdb")
    t0 = time.perf_counter()
    ingest(store, [head])
    print(f"uploaded {args.lines - args.tail:,} lines in {time.perf_counter() - t0:.1f} s; "
          f"{store.cursor().execute('SELECT count(*) FROM events').fetchall()[0][0]:,} events")
    rec = Recorder(work / "store.duckdb.spool", store.key)

    async def record(chunk):
        await asyncio.gather(*(rec.record(b, now_ns()) for b in chunk))

    times = []
    for k in range(0, len(tail), args.batch):
        asyncio.run(record(tail[k : k + args.batch]))
        t = time.perf_counter()
        apply_spool(store)
        times.append(time.perf_counter() - t)
    rec.close()
    cur = store.cursor()
    queries = ("SELECT * FROM lineage ORDER BY event_id", "SELECT * FROM chains ORDER BY chain_id")
    incremental = [cur.execute(q).fetchall() for q in queries]
    t = time.perf_counter()
    with store.transaction() as tx:
        lineage.rebuild(tx)
    full_s = time.perf_counter() - t
    full = [cur.execute(q).fetchall() for q in queries]
    store.close()
    same = incremental == full
    print(f"{len(times)} applies of {args.batch:,} live deliveries: median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s (a full lineage rebuild of this store, as an upload does: {full_s:.2f} s)")
    print(f"incremental lineage == full rebuild: lineage {len(full[0]):,} rows, chains {len(full[1]):,} rows: "
          f"{'IDENTICAL' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
