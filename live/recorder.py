"""The receiver's recorder: received bodies -> stage rows (fingerprints only) -> durable spool lines.

One thread owns the spool and an in-memory DuckDB. Requests queue their bodies; the thread takes everything
queued, turns each body into its stage row, appends the lines with one write and one fsync, then answers every
waiting request (group commit: under load, one fsync covers many deliveries, so throughput grows with
concurrency while each request waits at most about one batch).

Two ways to a stage row, one result:

* the **fast path** (`fast_row`, plain Python, ~20 us): a well-formed Tyk body, which is nearly every delivery.
  It accepts only what the ingest's SQL certainly accepts, and computes exactly what that SQL computes (keyed
  fingerprints, event and delivery ids); tests/test_live_recorder.py checks the two against each other;
* everything else goes through the very SQL the ingest uses (`ingest.normalize`: validation with reasons,
  fingerprints, masked excerpts) in the in-memory DuckDB. Planning that SQL costs ~13 ms a batch, which is
  why it is not the common path.

The raw body lives only in memory (the request, the Arrow batch, DuckDB's in-memory expressions); what reaches
disk is the stage row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from ingest import fingerprint
from ingest.fingerprint import text_sql
from ingest.normalize import STAGE_COLUMNS, install_macros, normalize_sql
from ingest.pipeline import SLOW_RELATION, locate_rows
from live.spool import LINE_FIELDS, SpoolWriter

MAX_BATCH = 2048
log = logging.getLogger("tokentrail.receiver")
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9+/_=-]{16,}")  # what tt_mask (ingest.normalize) masks in excerpts


@dataclass
class Receipt:
    """What the recorder did with one delivery."""

    reason: str | None  # why it is not a notification (then it went to the quarantine), else None
    event_id: str | None
    duplicate: bool  # the same notification was recorded moments ago (a Tyk retry)


@dataclass
class _Item:
    body: bytes
    received_ns: int
    upstream_status: int | None
    future: Future


class Recorder:
    def __init__(self, spool: Path, key: str, *, segment_bytes: int | None = None, dedup_window: int = 100_000):
        kwargs = {} if segment_bytes is None else {"segment_bytes": segment_bytes}
        self.writer = SpoolWriter(spool, **kwargs)
        self.key = key
        # No temporary directory: this connection parses raw bodies, and DuckDB writes what it offloads (with
        # whatever its reused memory held) to that directory. Its batches are small; were one ever too big,
        # it fails (Tyk retries) instead of writing tokens to disk.
        self._con = duckdb.connect(":memory:", config={"threads": 1, "temp_directory": ""})
        self._con.execute("SET TimeZone = 'UTC'")
        install_macros(self._con)
        self._con.execute(f"CREATE TEMP TABLE stage ({STAGE_COLUMNS})")
        self._queue: list[_Item] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._recent: OrderedDict[str, None] = OrderedDict()  # event ids recently recorded (retries)
        self._dedup_window = dedup_window
        self.recorded = 0  # deliveries durably recorded by this process
        self._thread = threading.Thread(target=self._run, name="tokentrail-recorder", daemon=True)
        self._thread.start()

    # -- request side ------------------------------------------------------------------------------------------

    async def record(self, body: bytes, received_ns: int, upstream_status: int | None = None) -> Receipt:
        """Durably record one delivery; returns once it is fsync'd (raises if it could not be)."""
        fut: Future = Future()
        with self._cv:
            if self._stopping:
                raise RuntimeError("the recorder is shutting down")
            self._queue.append(_Item(body, received_ns, upstream_status, fut))
            self._cv.notify()
        return await asyncio.wrap_future(fut)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)
        self.writer.close()
        self._con.close()

    # -- the recorder thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue and self._stopping:
                    return
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                receipts = self._record(batch)
            except BaseException as e:  # the whole batch failed: none of it is acknowledged (503: Tyk retries)
                # Said once per batch, and masked: an error message may quote a value of the body.
                log.error("recording %d deliveries failed (%s: %s); they get 503 and Tyk will retry them",
                          len(batch), type(e).__name__, _TOKEN_LIKE.sub("***", str(e))[:300])
                for item in batch:
                    item.future.set_exception(e)
                continue
            for item, receipt in zip(batch, receipts, strict=True):
                item.future.set_result(receipt)

    def _record(self, batch: list[_Item]) -> list[Receipt]:
        self.writer.rotate_if_full()
        first = self.writer.next_record_no()
        recs: list[dict | None] = [fast_row(self.key, first + i, it.body, it.received_ns) for i, it in enumerate(batch)]
        slow = [(first + i, it) for i, (it, rec) in enumerate(zip(batch, recs, strict=True)) if rec is None]
        if slow:
            for record_no, rec in zip((n for n, _ in slow), self._slow_rows(slow), strict=True):
                recs[record_no - first] = rec
        lines, receipts = [], []
        for item, rec in zip(batch, recs, strict=True):
            rec["upstream_status"] = item.upstream_status
            rec["received_at"] = rec["received_at"] or iso_us(item.received_ns)  # rejected ones too (spool lag)
            lines.append(json.dumps(rec, separators=(",", ":")))
            event_id = rec["event_id"] if rec["reason"] is None else None
            receipts.append(Receipt(rec["reason"], event_id, self._seen(event_id)))
        self.writer.append(("\n".join(lines) + "\n").encode(), len(lines))
        self.recorded += len(lines)
        return receipts

    def _slow_rows(self, items: list[tuple[int, _Item]]) -> list[dict]:
        """Stage rows by the ingest's own SQL (anything the fast path does not accept)."""
        rows = []
        for record_no, item in items:
            try:
                text, err = item.body.decode("utf-8"), None
            except UnicodeDecodeError as e:
                text, err = item.body.decode("utf-8", errors="replace"), f"invalid UTF-8 at byte {e.start} of the body"
            rows.append((record_no, text, err))
        table = locate_rows(rows)
        # The event time is the receipt time (the body has none), whatever the body says.
        times = [iso_us(item.received_ns) for _, item in items]
        table = table.set_column(table.schema.get_field_index("time_raw"), "time_raw", pa.array(times, pa.string()))
        table = table.set_column(
            table.schema.get_field_index("identity_raw"), "identity_raw", pa.nulls(len(items), pa.string())
        )
        con, params = self._con, {"key": self.key, "source_id": 1}
        con.register("tt_slow", table)
        try:
            con.execute(f"INSERT INTO stage {normalize_sql(SLOW_RELATION)}", params)
            # A quarantine id must not repeat across segments: make it depend on the segment too.
            con.execute(
                f"UPDATE stage SET quarantine_id = tt_fp($key, $segment || '|' || {text_sql('quarantine_id')}) "
                "WHERE quarantine_id IS NOT NULL",
                {"key": self.key, "segment": self.writer.segment.name},
            )
            fields = [f for f in LINE_FIELDS if f not in ("received_at", "upstream_status")]
            ids = {"quarantine_id", "auth_code_fp", "access_token_fp", "refresh_token_fp", "old_refresh_token_fp",
                   "event_id", "delivery_id"}
            columns = [f"{text_sql(f)} AS {f}" if f in ids else f for f in fields]
            out = con.execute(
                f"SELECT {', '.join(columns)}, strftime(received_at, '%Y-%m-%dT%H:%M:%S.%fZ') "
                "FROM stage ORDER BY record_no"
            ).fetchall()
        finally:
            con.execute("DELETE FROM stage")
            con.unregister("tt_slow")
        return [dict(zip([*fields, "received_at"], values, strict=True)) for values in out]

    def _seen(self, event_id: str | None) -> bool:
        if event_id is None:
            return False
        if event_id in self._recent:
            self._recent.move_to_end(event_id)
            return True
        self._recent[event_id] = None
        if len(self._recent) > self._dedup_window:
            self._recent.popitem(last=False)
        return False


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_us(ns: int) -> str:
    return (_EPOCH + timedelta(microseconds=ns // 1000)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the fast path: a mirror of ingest.normalize for well-formed bodies ----------------------------------------

_FIELDS = ("notification_type", "auth_code", "new_oauth_token", "refresh_token", "old_refresh_token")
# tt_value's "no value" markers
_NO_VALUE = frozenset(("", "-", "'-", "\\N", "null", "NULL", "None", "(null)", "N/A", "n/a", "undefined"))


# What DuckDB's trim() removes: the Unicode space separators (not tabs or newlines).
_SPACES = " \u00a0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B)) + "\u202f\u205f\u3000"


def _value(s: str | None) -> str | None:
    """tt_value(): long strings as they are; short ones trimmed of spaces, markers of "no value" -> None."""
    if s is None:
        return None
    if len(s.encode()) > 12:
        return s
    t = s.strip(_SPACES)
    return None if t in _NO_VALUE else t


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys")
    return dict(pairs)


def fast_row(key: str, record_no: int, body: bytes, received_ns: int) -> dict | None:
    """The stage row of a well-formed Tyk body, exactly as ingest.normalize would make it; None when the body
    is anything else (the caller then uses that SQL itself)."""
    try:
        d = json.loads(body, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError):
        return None
    if not isinstance(d, dict) or "notification_type" not in d or any(k not in _FIELDS for k in d):
        return None
    values = [d.get(f) for f in _FIELDS]
    if not all(v is None or isinstance(v, str) for v in values) or values[0] is None:
        return None
    ntype = values[0].lower()
    if ntype not in ("new", "refresh"):
        return None
    auth_code, access, refresh, old = (_value(v) for v in values[1:])
    if access is None or (ntype == "refresh" and old is None):
        return None
    fps = [fingerprint.fp(key, v) for v in (auth_code, access, refresh, old)]
    event_id = fingerprint.event_id(ntype, *fps)
    text = [None if f is None else fingerprint.text(f) for f in fps]
    return {
        "record_no": record_no, "reason": None, "excerpt": None, "quarantine_id": None,
        "notification_type": ntype, "auth_code_fp": text[0], "access_token_fp": text[1],
        "refresh_token_fp": text[2], "old_refresh_token_fp": text[3], "identity": None,
        "event_id": fingerprint.text(event_id),
        "delivery_id": fingerprint.text(fingerprint.delivery_id(event_id, received_ns // 1000)),
        "received_at": iso_us(received_ns),
    }


def now_ns() -> int:
    return time.time_ns()
