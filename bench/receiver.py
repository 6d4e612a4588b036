"""Load benchmark of the live receiver (`tokentrail receive`), loopback only, bounded in count and time.

It starts the real receiver in a subprocess on a fresh database, then offers Tyk-like notifications (unique
tokens, sessions of refreshes, Tyk's headers, keep-alive connections) at fixed rates, open loop: each request
has a scheduled send time and its latency is measured from that time, so a receiver that falls behind shows
it (no coordinated omission). Each step runs `--seconds`; the run stops early once a step misses the target.

Afterwards it stops the receiver, applies the spool to the database (what the dashboard's writer does) and
checks that the store holds exactly the deliveries that were answered 200: zero lost, zero doubled.

    .venv/bin/python bench/receiver.py                         # steps 500,1000,2000,3000 /s, 10 s each
    .venv/bin/python bench/receiver.py --rates 1000 --seconds 30
    .venv/bin/python bench/receiver.py --relay        # relay mode, to a stand-in service answering 200

Target (issue 4): at least 1,000 notifications/s sustained with p99 under 50 ms, zero lost. Results go to
bench/out/receiver-results.json. The load generator shares the 2-core machine with the receiver; its own CPU
use is printed, since on loopback it competes with what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
SECRET = "bench-shared-secret"
TARGET_RATE, TARGET_P99_MS = 1000, 50.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bodies(n: int, tag: str) -> list[bytes]:
    """n notifications: sessions of 10 (a `new` with an auth code, then refreshes), Tyk's token shapes."""
    out = []
    for i in range(n):
        session, step = divmod(i, 10)
        rt = f"{tag}{session:07d}x{step:02d}RefreshTokenRandomPart0123456789"
        body = {
            "auth_code": f"{tag}{session:07d}AuthCodeRandomPart0123456789" if step == 0 else "",
            "new_oauth_token": f"NWY3ZjQ5ZTBkYjM3ZWMwMDAxNDc0YzA1{tag}{i:09d}8e6b1c3d4f5a6b7c8d9e0f1a2b",
            "refresh_token": rt,
            "old_refresh_token": "" if step == 0 else f"{tag}{session:07d}x{step - 1:02d}RefreshTokenRandomPart0123456789",
            "notification_type": "new" if step == 0 else "refresh",
        }
        out.append(json.dumps(body, separators=(",", ":")).encode())
    return out


def request(body: bytes) -> bytes:
    return (
        b"POST /tyk/notify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"User-Agent: Tyk-Gatewy-Notifications\r\nX-Tyk-Shared-Secret: " + SECRET.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def _worker(port: int, queue: asyncio.Queue, results: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (item := await queue.get()) is not None:
            scheduled, index, payload = item
            writer.write(payload)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            done = time.perf_counter()
            status = int(status_line.split()[1]) if status_line else 0
            results.append((index, status, done - scheduled))
    finally:
        writer.close()


async def offer(port: int, payloads: list[bytes], rate: float, connections: int) -> tuple[list, float]:
    queue: asyncio.Queue = asyncio.Queue()
    results: list = []
    workers = [asyncio.create_task(_worker(port, queue, results)) for _ in range(connections)]
    start = time.perf_counter()
    for i, payload in enumerate(payloads):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((scheduled, i, payload))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return results, time.perf_counter() - start


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="500,1000,2000,3000", help="offered notifications/s per step")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each step")
    ap.add_argument("--connections", type=int, default=32, help="keep-alive connections (Tyk's goroutines)")
    ap.add_argument("--keep-going", action="store_true", help="run every step even after a miss")
    ap.add_argument("--relay", action="store_true", help="relay mode: --forward to a stand-in service (uvicorn, 200)")
    ap.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        return _serve_upstream(args.serve_upstream)

    from ingest.store import Store
    from live.follower import apply_spool

    work = OUT / "receiver"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db = work / "bench.duckdb"
    port = free_port()
    env = dict(os.environ, TOKENTRAIL_SHARED_SECRET=SECRET)
    log = open(work / "receiver.log", "wb")  # noqa: SIM115 - closed at the end
    extra, upstream = [], None
    if args.relay:
        up_port = free_port()
        upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(up_port)], cwd=ROOT,
                                    stdout=log, stderr=subprocess.STDOUT)
        extra = ["--forward", f"http://127.0.0.1:{up_port}/notify"]
    proc = subprocess.Popen([sys.executable, "-m", "tokentrail", "receive", "--db", str(db), "--port", str(port),
                             *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            print((work / "receiver.log").read_text()[-2000:])
            return 1
        time.sleep(0.1)

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    server = psutil.Process(proc.pid)
    me = psutil.Process()
    steps, sent_ok = [], 0
    if args.relay:
        time.sleep(1.0)  # the stand-in service starts in parallel; the first request would find it down
    print(("relay mode: every delivery is forwarded to a stand-in service on this machine\n" if args.relay else "")
          + f"receiver pid {proc.pid} on 127.0.0.1:{port}; {os.cpu_count()} cores; "
          f"{args.connections} keep-alive connections; {args.seconds:g} s per step")
    print(f"{'offered/s':>9} {'achieved/s':>10} {'200s':>7} {'other':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7} {'recv cpu%':>9} {'load cpu%':>9}  result")
    for n_step, rate in enumerate(float(r) for r in args.rates.split(",")):
        n = int(rate * args.seconds)
        payloads = [request(b) for b in bodies(n, f"s{n_step}")]
        server.cpu_percent(), me.cpu_percent()
        results, elapsed = asyncio.run(offer(port, payloads, rate, args.connections))
        recv_cpu, load_cpu = server.cpu_percent(), me.cpu_percent()
        ok = [lat for _, status, lat in results if status == 200]
        other = len(results) - len(ok)
        sent_ok += len(ok)
        p50, p99, worst = pct(ok, 50) * 1e3, pct(ok, 99) * 1e3, max(ok, default=0) * 1e3
        achieved = len(ok) / elapsed
        good = other == 0 and p99 < TARGET_P99_MS and achieved >= 0.97 * rate
        steps.append({"offered_per_s": rate, "achieved_per_s": round(achieved, 1), "ok": len(ok), "other": other,
                      "p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "max_ms": round(worst, 2),
                      "receiver_cpu_pct": recv_cpu, "load_cpu_pct": load_cpu, "kept_up": good})
        print(f"{rate:9.0f} {achieved:10.1f} {len(ok):7d} {other:6d} {p50:7.2f} {p99:7.2f} {worst:7.1f} "
              f"{recv_cpu:9.0f} {load_cpu:9.0f}  {'ok' if good else 'FELL BEHIND'}")
        if not good and not args.keep_going:
            break
    rss_mb = server.memory_info().rss / 1e6
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    if upstream is not None:
        upstream.terminate()
        upstream.wait(30)
    log.close()

    t0 = time.perf_counter()
    store = Store.open(db)
    applied = apply_spool(store)
    apply_s = time.perf_counter() - t0
    deliveries, events = store.cursor().execute(
        "SELECT (SELECT count(*) FROM deliveries), (SELECT count(DISTINCT event_id) FROM deliveries)"
    ).fetchall()[0]
    store.close()
    lost = sent_ok - deliveries
    best = max((s for s in steps if s["kept_up"]), key=lambda s: s["achieved_per_s"], default=None)
    verdict = best is not None and best["offered_per_s"] >= TARGET_RATE and lost == 0
    print()
    print(f"answered 200: {sent_ok}; in the store after applying the spool: {deliveries} deliveries, {events} events "
          f"-> lost {lost}, doubled {max(0, deliveries - sent_ok)}")
    print(f"spool apply (the dashboard writer's catch-up, merge + lineage): {applied.deliveries if applied else 0} "
          f"deliveries in {apply_s:.2f} s")
    print(f"receiver peak-ish RSS {rss_mb:.0f} MB")
    if best:
        print(f"best sustained step: {best['achieved_per_s']:.0f}/s with p99 {best['p99_ms']:.1f} ms "
              f"(target >= {TARGET_RATE}/s, p99 < {TARGET_P99_MS:g} ms, zero lost): {'PASS' if verdict else 'MISS'}")
    else:
        print("no step kept up: MISS")
    (OUT / ("receiver-relay-results.json" if args.relay else "receiver-results.json")).write_text(json.dumps(
        {"relay": args.relay, "steps": steps, "answered_200": sent_ok, "stored_deliveries": deliveries, "lost": lost,
         "apply_seconds": apply_s, "receiver_rss_mb": rss_mb, "pass": verdict}, indent=2))
    return 0


def _serve_upstream(port: int) -> int:
    """The user's own service, for relay mode: answers every POST with 200 (uvicorn, one process)."""
    import uvicorn

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
