"""The store's side of live mode: apply the receiver's spool to the database, incrementally, exactly once.

`apply_spool` reads the complete spool lines after the store's cursor and feeds them to `ingest.pipeline.ingest`
as a `StagedInput` (the same merge, dedup and lineage as an upload), moving the cursor inside the same
transaction: after a crash either both the data and the cursor moved or neither did, so nothing is lost or
doubled (and a re-applied line would be a known delivery anyway). Then it publishes the store's counts for
the receiver's `/metrics`.

`Follower` runs `apply_spool` every second on a thread of whichever process owns the database: the dashboard
(started with its store) or `tokentrail follow` (headless). DuckDB allows one read-write process per file,
so the receiver itself never opens the database.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pajson

from ingest import fingerprint
from ingest.pipeline import IngestReport, StagedInput, ingest
from ingest.store import Store, set_meta
from live.spool import (
    LINE_FIELDS,
    Chunk,
    Cursor,
    cursor_after,
    read_pending,
    remove_applied,
    spool_dir_for,
    write_state,
)

log = logging.getLogger("tokentrail.follower")

CURSOR_KEY = "spool_cursor"
_STRING_FIELDS = [f for f in LINE_FIELDS if f not in ("record_no", "received_at", "upstream_status")]
SCHEMA = pa.schema(
    [("record_no", pa.int64()), ("received_at", pa.timestamp("us")), ("upstream_status", pa.int32())]
    + [(f, pa.string()) for f in _STRING_FIELDS]
)


@dataclass
class Applied:
    deliveries: int  # lines applied (valid and rejected)
    new_deliveries: int
    rejected: int
    seconds: float
    report: IngestReport | None


def apply_spool(store: Store, spool: Path | None = None, *, max_bytes: int = 256 * 1024 * 1024) -> Applied | None:
    """Apply what the spool holds beyond the store's cursor; None when there is nothing new."""
    spool = spool or spool_dir_for(store.path)
    if not spool.exists():
        return None
    started = time.perf_counter()
    cursor = Cursor.from_json(store.get_meta(CURSOR_KEY))
    chunks = list(read_pending(spool, cursor, max_bytes))
    if not chunks:
        return None
    new_cursor = cursor_after(chunks, cursor)
    inputs = [StagedInput(f"live:{c.segment.name}", [_table(c)]) for c in chunks if c.data]
    for c in chunks:
        if c.torn_bytes:
            log.warning("%s ends in a torn line (%d bytes, never acknowledged): skipped", c.segment, c.torn_bytes)
    report = None
    if inputs:
        report = ingest(store, inputs, incremental=True,
                        before_commit=lambda cur: set_meta(cur, CURSOR_KEY, new_cursor.to_json()))
    else:
        with store.transaction() as cur:
            set_meta(cur, CURSOR_KEY, new_cursor.to_json())
    remove_applied(spool, new_cursor)
    publish_state(store, spool, new_cursor)
    files = report.files if report else []
    return Applied(
        deliveries=sum(f.records for f in files),
        new_deliveries=sum(f.new_deliveries for f in files),
        rejected=sum(f.rejected for f in files),
        seconds=time.perf_counter() - started,
        report=report,
    )


_PARSE = pajson.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore")


def _table(chunk: Chunk) -> pa.Table:
    try:
        return pajson.read_json(io.BytesIO(chunk.data), parse_options=_PARSE).select(SCHEMA.names)
    except pa.ArrowInvalid:
        return _table_line_by_line(chunk)


def _table_line_by_line(chunk: Chunk) -> pa.Table:
    """A damaged line (a disk fault; the receiver only writes whole JSON lines) must not stop the spool:
    good lines load, a damaged one goes to the quarantine with its place in the spool."""
    tables = []
    for i, line in enumerate(chunk.data.splitlines()):
        try:
            tables.append(pajson.read_json(io.BytesIO(line + b"\n"), parse_options=_PARSE).select(SCHEMA.names))
        except pa.ArrowInvalid:
            log.warning("%s: damaged spool line %d after byte %d: quarantined", chunk.segment, i + 1, chunk.start)
            tables.append(pa.Table.from_pylist([{
                "record_no": -(i + 1),
                "reason": f"damaged spool line {i + 1} after byte {chunk.start} of {chunk.segment.name}",
                # an id of its place in the spool (not a secret: hashed with no key)
                "quarantine_id": fingerprint.text(fingerprint.fp(fingerprint.SCHEME_PREFIX,
                                                                 f"spool:{chunk.segment.name}:{chunk.start}:{i}")),
            }], schema=SCHEMA))
    return pa.concat_tables(tables)


def publish_state(store: Store, spool: Path, cursor: Cursor) -> None:
    """The store's counts and the cursor, for the receiver's /metrics (the receiver cannot open the database)."""
    cur = store.cursor()
    deliveries, events = cur.execute(
        "SELECT (SELECT count(*) FROM deliveries), (SELECT count(*) FROM events)"
    ).fetchall()[0]
    chains, orphans, forks = cur.execute(
        "SELECT count(*), count(*) FILTER (orphan), coalesce(sum(forks), 0) FROM chains"
    ).fetchall()[0]
    rejected = cur.execute("SELECT count(*) FROM quarantine").fetchall()[0][0]
    write_state(
        spool,
        {
            "cursor": {"segment": cursor.segment, "offset": cursor.offset},
            "store": {
                "deliveries": deliveries, "events": events, "chains": chains, "orphan_chains": orphans,
                "forks": int(forks), "rejected": rejected,
            },
        },
    )


class Follower:
    """Applies the spool every `interval` seconds on a daemon thread, until `stop()`."""

    def __init__(self, store: Store, spool: Path | None = None, *, interval: float = 1.0, on_apply=None):
        self.store = store
        self.spool = spool or spool_dir_for(store.path)
        self.interval = interval
        self.on_apply = on_apply
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokentrail-follower", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            wait = self.interval
            try:
                applied = apply_spool(self.store, self.spool)
            except Exception as e:  # keep following: a later apply may succeed (e.g. disk space freed)
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("applying the live spool failed; retrying")
                wait = min(30.0, self.interval * 5)
                continue
            self.last_error = None
            if applied:
                # a large store makes each apply (its lineage rebuild) longer: do not apply back to back
                wait = max(self.interval, applied.seconds)
                if self.on_apply:
                    self.on_apply(applied)
