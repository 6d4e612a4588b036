"""The `tokentrail` command: ingest, summary, chains, quarantine, demo, serve; live: receive, follow, replay.

The JSON outputs (`--json`) are a public interface (see DOMAIN.md): keys are only ever added.
Human output is a table on stdout; progress goes to stderr, as a bar when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tokentrail.config import DB_ENV, PROJECT_ROOT, default_db_path, demo_dir_for

EPILOG = """examples:
  tokentrail demo                                   build the demo database the dashboard opens on
  tokentrail ingest export.jsonl.gz loki.json --identities users.csv
  tokentrail summary --json
  tokentrail chains --identity alice@example.com
  tokentrail quarantine                             records that could not be read, and why
  tokentrail serve --port 8501                      the dashboard (http://127.0.0.1:8501)
  TOKENTRAIL_SHARED_SECRET=... tokentrail receive --port 8080 [--forward http://127.0.0.1:9000/notify]
                                                    receive Tyk's notifications live (the dashboard applies them)
  tokentrail follow                                 apply received notifications without a dashboard
  TOKENTRAIL_SHARED_SECRET=... tokentrail replay export.jsonl --to http://127.0.0.1:8080/ --rate 100

The database defaults to data/tokentrail.duckdb (or $TOKENTRAIL_DB); --db selects another.
"""


def _no_core_dumps() -> None:
    """A crash must not write this process's memory to a core file: it holds raw tokens (the batches being
    read, a notification being received). The limit is inherited by `serve`'s Streamlit process."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main(argv: list[str] | None = None) -> int:
    _no_core_dumps()
    parser = argparse.ArgumentParser(
        prog="tokentrail",
        description="Follow Tyk OAuth refresh-token lineage through notification logs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def db_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", type=Path, default=None, help=f"database file (default: ${DB_ENV} or data/tokentrail.duckdb)")

    p = sub.add_parser("ingest", help="load notification log exports", description="Load log exports of any platform "
                       "(JSON Lines, JSON, CSV/TSV, gzip/zip...) into the database and rebuild the chains.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    db_arg(p)
    p.add_argument("--identities", type=Path, metavar="CSVFILE", help="identity mapping: CSV with auth_code,user_id columns")
    p.add_argument("--access-ttl", type=int, metavar="SECONDS", help="access-token lifetime (default 3600, Tyk's oauth_token_expire)")
    p.add_argument("--timezone", metavar="ZONE",
                   help="zone of times the export wrote without one, e.g. Europe/Berlin (default UTC; times with a "
                        "zone or an offset, and epoch numbers, are exact whatever this says)")
    p.add_argument("--json", action="store_true", help="print the ingest report as JSON")

    p = sub.add_parser("summary", help="counts: deliveries, events, chains, orphans, forks...")
    db_arg(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("chains", help="the chains (sessions) of one identity")
    p.add_argument("--identity", required=True, metavar="USER")
    db_arg(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("quarantine", help="records that could not be read as notifications, with the reason")
    db_arg(p)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="write a simulated fleet's logs and load them (the dashboard's default data)")
    db_arg(p)
    p.add_argument("--days", type=int, default=5)
    p.add_argument("--users", type=int, default=150)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--force", action="store_true", help="replace an existing database")

    p = sub.add_parser("serve", help="start the dashboard")
    db_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8501)

    p = sub.add_parser(
        "receive", allow_abbrev=False, help="receive Tyk's notifications live (optionally relaying them to your service)",
        description="A Tyk-compatible notification receiver: point the API's oauth_on_keychange_url here. "
        "Deliveries are recorded durably (fingerprints only) in <db>.spool/ and applied to the database by its "
        "writer: the dashboard, or `tokentrail follow`. The shared secret comes from $TOKENTRAIL_SHARED_SECRET "
        "or --secret-file (never the command line).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    db_arg(p)
    p.add_argument("--secret-file", type=Path, metavar="PATH", help="file holding Tyk's notifications.shared_secret")
    p.add_argument("--forward", metavar="URL", help="relay each delivery to your existing service and answer Tyk with its status")
    p.add_argument("--forward-timeout", type=float, default=8.0, metavar="SECONDS",
                   help="how long to wait for the forwarded service (default 8; Tyk itself gives up at 10)")
    p.add_argument("--max-body", type=int, default=64 * 1024, metavar="BYTES", help="larger bodies get 413 (default 65536)")

    p = sub.add_parser("follow", help="apply live deliveries from the receiver's spool to the database (no dashboard)")
    db_arg(p)
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
    p.add_argument("--once", action="store_true", help="apply what is there, then exit")

    p = sub.add_parser("replay", allow_abbrev=False, help="send an export's notifications to a receiver, as Tyk would",
                       description="POST each notification of the exports, with Tyk's headers, in time order; "
                       "retry like Tyk (non-200: wait, 3 attempts). The secret comes from "
                       "$TOKENTRAIL_SHARED_SECRET or --secret-file.")
    p.add_argument("paths", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--to", required=True, metavar="URL")
    p.add_argument("--rate", type=float, default=50.0, metavar="N", help="notifications per second (default 50; 0: as fast as possible)")
    p.add_argument("--secret-file", type=Path, metavar="PATH")
    p.add_argument("--retry-wait", type=float, default=10.0, metavar="SECONDS", help="wait before a retry (Tyk: 10)")
    p.add_argument("--all-deliveries", action="store_true", help="send every record, Tyk's logged retries included")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    args = parser.parse_args(argv)
    db = (getattr(args, "db", None) or default_db_path()).expanduser()
    try:
        return _COMMANDS[args.command](args, db)
    except KeyboardInterrupt:
        print("interrupted: nothing was changed", file=sys.stderr)
        return 130
    except _UserError as e:
        print(f"tokentrail: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `tokentrail summary --json | head`
        return 0
    except Exception as e:  # a bug, not bad input: say so plainly; TOKENTRAIL_DEBUG=1 shows the traceback
        if os.environ.get("TOKENTRAIL_DEBUG"):
            raise
        if _out_of_memory(e):
            print(f"tokentrail: {e} Here: TOKENTRAIL_MEMORY_LIMIT=4GB tokentrail {args.command} ...", file=sys.stderr)
            return 1
        print(
            f"tokentrail: unexpected error ({type(e).__name__}: {e}). Nothing was changed: an ingest is one "
            "transaction. Please report it with the command and, if you can, the file that caused it "
            "(set TOKENTRAIL_DEBUG=1 for the traceback).",
            file=sys.stderr,
        )
        return 1


class _UserError(Exception):
    pass


def _out_of_memory(e: Exception) -> bool:
    store = sys.modules.get("ingest.store")  # loaded by then if it matters; importing it here would load duckdb
    return store is not None and isinstance(e, store.OutOfMemory)


def _open_store(db: Path, *, must_exist: bool = False, read_only: bool = False):
    from ingest.store import Store, StoreError

    if must_exist and not db.exists():
        raise _UserError(f"no database at {db}. Load data first: tokentrail ingest FILE --db {db} (or tokentrail demo)")
    try:
        return Store.open(db, read_only=read_only)
    except StoreError as e:
        raise _UserError(str(e)) from e


def cmd_ingest(args, db: Path) -> int:
    from ingest.pipeline import check_timezone, ingest, rejected_reasons

    try:
        zone = check_timezone(args.timezone)
    except ValueError as e:
        print(f"error: --timezone: {e}", file=sys.stderr)
        return 2
    store = _open_store(db, read_only=False)
    bar = _Progress()
    try:
        report = ingest(store, args.paths, identities=args.identities, progress=bar, access_ttl_s=args.access_ttl,
                        timezone=zone)
    finally:
        bar.close()
        store.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    rows = [
        [f.path, f.format or "-", f.records, f.new_deliveries, f.duplicate_deliveries, f.rejected, f.untimed]
        for f in report.files
    ]
    _table(["file", "format", "records", "new", "already stored", "rejected", "untimed"], rows)
    for f in report.files:
        if f.error:
            print(f"error: {f.error}", file=sys.stderr)
        if f.unreadable_times:
            print(f"note: {f.path}: {_plural(f.unreadable_times, 'record')} had a time that could not be read; "
                  "they count as untimed", file=sys.stderr)
        if f.zoneless_times and zone == "UTC":
            print(f"note: {f.path}: {_plural(f.zoneless_times, 'time')} without a zone {'was' if f.zoneless_times == 1 else 'were'} read as UTC; "
                  "if the export wrote local times, load it again into a fresh database with --timezone ZONE",
                  file=sys.stderr)
        elif f.zoneless_times:
            print(f"note: {f.path}: {_plural(f.zoneless_times, 'time')} without a zone {'was' if f.zoneless_times == 1 else 'were'} read as {zone}", file=sys.stderr)
        if f.note:
            print(f"note: {f.path}: {f.note}", file=sys.stderr)
        if f.rejected:
            print(f"note: {f.path}: {_plural(f.rejected, 'record')} rejected. {rejected_reasons(f)}. "
                  f"See: tokentrail quarantine --db {db}", file=sys.stderr)
    if report.identities:
        r = report.identities
        if r.error:
            print(f"error: {r.error}", file=sys.stderr)
        else:
            print(f"identities: {r.mapped} auth codes mapped from {r.path}"
                  + (f" (not UTF-8: read as {r.encoding})" if r.encoding == "windows-1252" else "")
                  + (f"; rows skipped (empty code or user) at lines {r.rejected_lines[:10]}" if r.rejected_lines else ""))
    print(f"done in {report.seconds:.1f}s -> {db}")
    return 0


def cmd_summary(args, db: Path) -> int:
    from queries.summary import summary

    store = _open_store(db, must_exist=True)
    data = summary(store)
    _note_pending_live(store, db)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _table(["metric", "value"], [[k, "-" if v is None else v] for k, v in data.items()])
    return 0


def _note_pending_live(store, db: Path) -> None:
    """A receiver may have recorded deliveries that no writer has applied yet: say so (on stderr)."""
    from queries.live import spool_snapshot

    snap = spool_snapshot(store)
    if snap.exists and snap.pending:
        print(f"note: {snap.pending} live deliveries recorded by `tokentrail receive` are not in these figures "
              f"yet; open the dashboard or run: tokentrail follow --once --db {db}", file=sys.stderr)


def cmd_chains(args, db: Path) -> int:
    from queries.summary import chains_for_identity

    store = _open_store(db, must_exist=True)
    data = chains_for_identity(store, args.identity)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if not data:
        print(f"no chains for identity {args.identity!r}", file=sys.stderr)
        return 0
    _table(
        ["chain", "first_seen", "last_seen", "events", "refreshes", "span_s", "end"],
        [[c["chain_id"], c["first_seen"], c["last_seen"], c["events"], c["refreshes"],
          None if c["span_s"] is None else round(c["span_s"]), c["end_state"]] for c in data],
    )
    return 0


def cmd_quarantine(args, db: Path) -> int:
    from queries.summary import quarantine

    store = _open_store(db, must_exist=True)
    data = quarantine(store, args.limit)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _table(["file", "record", "reason", "excerpt"], [[q["file"], q["record_no"], q["reason"], (q["excerpt"] or "")[:60]] for q in data])
    return 0


def cmd_demo(args, db: Path) -> int:
    from ingest.demo import write_demo
    from ingest.pipeline import ingest

    if db.exists():
        if not args.force:
            raise _UserError(f"{db} exists; use --force to replace it with the demo data")
        for p in (db, Path(str(db) + ".wal"), Path(str(db) + ".key")):
            p.unlink(missing_ok=True)
    out = demo_dir_for(db)
    print(f"writing demo logs to {out} ...", file=sys.stderr)
    paths = write_demo(out, days=args.days, users=args.users, seed=args.seed)
    logs = [p for p in paths if p.suffix != ".csv"]
    ids = next((p for p in paths if p.suffix == ".csv"), None)
    store = _open_store(db)
    bar = _Progress()
    try:
        report = ingest(store, logs, identities=ids, progress=bar)
    finally:
        bar.close()
        store.close()
    print(f"demo database ready: {db} ({sum(f.new_deliveries for f in report.files)} deliveries from {len(logs)} files)")
    return 0


def cmd_serve(args, db: Path) -> int:
    env = dict(os.environ)
    env[DB_ENV] = str(db.resolve())
    if not db.exists():
        if args.db is None and not os.environ.get(DB_ENV):
            # the embedded default: a newcomer's first look, at demo data
            print(f"{db} does not exist yet: building the demo data first", file=sys.stderr)
            rc = cmd_demo(argparse.Namespace(days=5, users=150, seed=7, force=False), db)
            if rc:
                return rc
        else:  # a database you named is yours: it starts empty (to watch a fleet arrive from zero)
            _open_store(db).close()
            print(f"{db} did not exist: created it, empty. Load logs on the Upload page or with "
                  f"`tokentrail ingest FILE --db {db}`; demo data: `tokentrail demo --db {db} --force`", file=sys.stderr)
    cmd = [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "app.py"),
           "--server.address", args.host, "--server.port", str(args.port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false"]
    print(f"tokentrail dashboard: http://{args.host}:{args.port}  (database {db})", file=sys.stderr)
    return _run_forwarding_signals(cmd, env=env, cwd=PROJECT_ROOT)


def _run_forwarding_signals(cmd: list[str], **kwargs) -> int:
    """Run `cmd` and pass SIGTERM (systemd, `kill`) on to it: Streamlit, left behind, would keep the port and
    the database. (Ctrl-C reaches both through the terminal's process group.)"""
    child = subprocess.Popen(cmd, **kwargs)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # the child got the same Ctrl-C: wait for it to stop
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


def _shared_secret(args) -> str:
    from live.secrets import SECRET_ENV, SecretError, load_secret

    try:
        return load_secret(args.secret_file)
    except SecretError as e:
        raise _UserError(f"{e} (set ${SECRET_ENV} or pass --secret-file PATH)") from e


def cmd_receive(args, db: Path) -> int:
    import uvicorn

    from ingest.store import StoreError, load_key
    from live.server import ReceiverSettings, create_app
    from live.spool import SpoolError, spool_dir_for

    secret = _shared_secret(args)
    try:
        key = load_key(db)
    except StoreError as e:
        raise _UserError(str(e)) from e
    spool = spool_dir_for(db)
    settings = ReceiverSettings(spool=spool, key=key, secret=secret, forward=args.forward,
                                forward_timeout=args.forward_timeout, max_body=args.max_body)
    from live.recorder import Recorder

    try:
        recorder = Recorder(spool, key)  # takes the spool's lock: one receiver per database
    except SpoolError as e:
        raise _UserError(str(e)) from e
    app = create_app(settings, recorder)
    print(f"tokentrail receiver: http://{args.host}:{args.port}/ (and /tyk/notify), metrics at /metrics; "
          f"spool {spool}" + (f"; relaying to {args.forward}" if args.forward else ""), file=sys.stderr)
    print("deliveries reach the database through its writer: the dashboard (tokentrail serve) or tokentrail follow",
          file=sys.stderr)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            loop="uvloop", http="httptools", lifespan="on", timeout_graceful_shutdown=15)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:  # e.g. the port is taken: uvicorn has said why
        recorder.close()
        raise _UserError(f"the receiver could not start on {args.host}:{args.port}")
    return 0


def cmd_follow(args, db: Path) -> int:
    from live.follower import Follower, apply_spool
    from live.spool import spool_dir_for

    store = _open_store(db)
    try:
        if args.once:
            applied = apply_spool(store)
            print(f"applied {applied.deliveries if applied else 0} live deliveries to {db}")
            return 0

        def show(a) -> None:
            print(f"{time.strftime('%H:%M:%S')} applied {a.deliveries} deliveries ({a.new_deliveries} new, "
                  f"{a.rejected} rejected) in {a.seconds:.2f}s", flush=True)

        follower = Follower(store, interval=args.interval, on_apply=show).start()
        print(f"following {spool_dir_for(db)} into {db} (Ctrl-C to stop)", file=sys.stderr)
        try:
            while True:
                time.sleep(3600)
        finally:
            follower.stop()
    finally:
        store.close()


def cmd_replay(args, db: Path) -> int:
    import asyncio

    from live.replay import ReplayReport, read_notifications, replay

    secret = _shared_secret(args)
    report = ReplayReport()
    bodies = read_notifications(args.paths, all_deliveries=args.all_deliveries, report=report)
    for err in report.errors:
        print(f"error: {err}", file=sys.stderr)
    if not bodies:
        raise _UserError("no Tyk notifications found in " + ", ".join(map(str, args.paths)))
    print(f"replaying {len(bodies)} notifications to {args.to} at "
          f"{'full speed' if args.rate <= 0 else f'{args.rate:g}/s'}", file=sys.stderr)
    bar = _Progress()
    try:
        asyncio.run(replay(bodies, args.to, secret, rate=args.rate, retry_wait=args.retry_wait, report=report,
                           progress=lambda d, t: bar("sending", d, t)))
    finally:
        bar.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _table(["notifications", "delivered", "retries", "lost", "skipped records", "seconds"],
               [[report.notifications, report.delivered, report.retried, report.lost, report.skipped,
                 round(report.seconds, 1)]])
        print("answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses.items())))
    return 0 if report.lost == 0 else 1


_COMMANDS = {
    "ingest": cmd_ingest,
    "summary": cmd_summary,
    "chains": cmd_chains,
    "quarantine": cmd_quarantine,
    "demo": cmd_demo,
    "serve": cmd_serve,
    "receive": cmd_receive,
    "follow": cmd_follow,
    "replay": cmd_replay,
}


class _Progress:
    """A progress bar on stderr when it is a terminal; otherwise silent."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = False

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        frac = min(1.0, done / total) if total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        sys.stderr.write(f"\r[{bar}] {frac:4.0%} {what[:40]:<40}")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _table(header: list[str], rows: list[list]) -> None:
    cells = [[str("" if c is None else c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
