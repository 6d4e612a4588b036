"""Test helpers: record writers, loading into a store, and naming fingerprints by their raw labels."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from ingest import fingerprint
from ingest.pipeline import ingest
from ingest.store import Store

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def cli_command() -> list[str]:
    """How to run the `tokentrail` command of this environment."""
    script = Path(sys.executable).with_name("tokentrail")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from tokentrail.cli import main; sys.exit(main())"]


CLI = cli_command()


def body(kind: str, access: str, refresh: str = "", old: str = "", code: str = "") -> dict:
    return {"auth_code": code, "new_oauth_token": access, "refresh_token": refresh,
            "old_refresh_token": old, "notification_type": kind}


def record(at: str | None, b: dict, **extra) -> dict:
    rec = {"received_at": at, **extra, "body": b} if at else {**extra, "body": b}
    return rec


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def fp(store: Store, value: str) -> int:
    """The store's fingerprint of a raw value (the test knows the key; the database never does)."""
    return fingerprint.fp(store.key, value)


def load(store: Store, records: list[dict], name: str = "input.jsonl", identities: bytes | None = None):
    ids = ("identities.csv", io.BytesIO(identities)) if identities is not None else None
    return ingest(store, [(name, io.BytesIO(jsonl(records)))], identities=ids)


def chains_by_label(store: Store, labels: list[str]) -> list[dict]:
    """Chains with their events named by access-token label, comparable across keys and runs."""
    name = {fp(store, t): t for t in labels}
    cur = store.cursor()
    rows = cur.execute(
        """
        SELECT c.chain_id, c.orphan, c.identity, c.refreshes, c.forks, c.late_refreshes, c.end_state,
               c.span_s, c.cycle_broken, list(e.access_token_fp ORDER BY e.access_token_fp) AS members,
               any_value(r.access_token_fp) AS root
        FROM chains c JOIN lineage l USING (chain_id) JOIN events e USING (event_id)
        JOIN events r ON r.event_id = c.chain_id
        GROUP BY ALL
        """
    ).fetchall()
    out = []
    for _cid, orphan, identity, refreshes, forks, late, end, span, cyc, members, root in rows:
        out.append({
            "root": name.get(root, root), "events": sorted(name.get(m, m) for m in members), "orphan": orphan,
            "identity": identity, "refreshes": refreshes, "forks": forks, "late_refreshes": late,
            "end_state": end, "span_s": span, "cycle_broken": cyc,
        })
    return sorted(out, key=lambda c: c["root"])
