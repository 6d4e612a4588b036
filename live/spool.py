"""The spool: an append-only, fsync'd log of received deliveries, between the receiver and the store's writer.

Why a spool: DuckDB allows one read-write process per database file, and that process is the dashboard (or
`tokentrail follow`). The receiver must answer Tyk within milliseconds and must never lose an acknowledged
delivery, whatever the writer is doing, so it never opens the database: it appends to the spool, and the
store's single writer (`live.follower`) ingests the spool incrementally through the same merge and lineage as
an upload.

Layout of `<db>.spool/`:

* `00000001-20261204T220501Z.jsonl`, ... segments, in creation order (the number decides; the time is for
  people). Every receiver start opens a new segment, and a segment is closed for good when a newer one exists,
  so a segment is only ever appended to by one process. A line is one delivery: the stage row of
  `ingest.normalize` (fingerprints, never raw tokens; a masked excerpt for rejected bodies), as JSON.
* `receiver.lock`: held (flock) by the one receiver writing here.
* `writer-state.json`: written by the writer after each apply: what it has applied and the store's counts, for
  the receiver's `/metrics`.

Durability: a batch of lines is written with one `write` and made durable with one `fsync` (group commit), and
only then does the receiver answer 200. A crash can leave a torn last line (never acknowledged, so Tyk
retries it); readers stop at the last complete line of the newest segment and skip a torn tail of an older one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SEGMENT_BYTES = 64 * 1024 * 1024
STATE_FILE = "writer-state.json"
LOCK_FILE = "receiver.lock"
_SEGMENT = re.compile(r"^(\d{8})-[0-9TZ]+\.jsonl$")

# The columns of a spool line, in order: the stage row of ingest.normalize without its per-run source id.
LINE_FIELDS = (
    "record_no", "received_at", "reason", "excerpt", "quarantine_id", "notification_type", "auth_code_fp",
    "access_token_fp", "refresh_token_fp", "old_refresh_token_fp", "identity", "event_id", "delivery_id",
    "upstream_status",
)


class SpoolError(Exception):
    """The spool cannot be used; the message says why."""


def spool_dir_for(db_path: str | os.PathLike) -> Path:
    return Path(str(db_path) + ".spool")


def segments(spool: Path) -> list[Path]:
    """The spool's segments, oldest first."""
    try:
        names = [p for p in spool.iterdir() if _SEGMENT.match(p.name)]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda p: p.name)


class SpoolWriter:
    """Appends lines durably. Not thread-safe: one thread (the receiver's recorder) owns it."""

    def __init__(self, spool: Path, segment_bytes: int = SEGMENT_BYTES):
        self.spool = spool
        self.segment_bytes = segment_bytes
        spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = os.open(spool / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolError(
                f"another tokentrail receiver is already writing to {spool}; run one receiver per database"
            ) from None
        self._fd = -1
        self.segment: Path | None = None
        self.lines = 0  # complete lines in the current segment
        self.size = 0
        self._open_segment()

    def _open_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        existing = segments(self.spool)
        seq = int(_SEGMENT.match(existing[-1].name).group(1)) + 1 if existing else 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.segment = self.spool / f"{seq:08d}-{stamp}.jsonl"
        self._fd = os.open(self.segment, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        _fsync_dir(self.spool)  # the new name itself must survive a crash
        self.lines = 0
        self.size = 0

    def next_record_no(self) -> int:
        return self.lines + 1

    def rotate_if_full(self) -> None:
        if self.size >= self.segment_bytes:
            self._open_segment()

    def append(self, data: bytes, lines: int) -> None:
        """Write `lines` complete lines and make them durable (one write, one fsync)."""
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self.lines += lines
        self.size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reading (the writer's side) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """How far the store has applied the spool: everything before `offset` of `segment` and all older
    segments. Stored in the database, in the same transaction as the data it covers."""

    segment: str = ""
    offset: int = 0

    def to_json(self) -> str:
        return json.dumps({"segment": self.segment, "offset": self.offset})

    @classmethod
    def from_json(cls, text: str | None) -> Cursor:
        if not text:
            return cls()
        d = json.loads(text)
        return cls(d.get("segment", ""), int(d.get("offset", 0)))


@dataclass
class Chunk:
    segment: Path
    start: int
    data: bytes  # complete lines only
    torn_bytes: int = 0  # a torn tail skipped (an older segment's last, never acknowledged line)

    @property
    def end(self) -> int:
        return self.start + len(self.data) + self.torn_bytes


def read_pending(spool: Path, cursor: Cursor, max_bytes: int = 256 * 1024 * 1024) -> Iterator[Chunk]:
    """The complete lines after `cursor`, oldest first, up to about `max_bytes`."""
    segs = segments(spool)
    budget = max_bytes
    for i, seg in enumerate(segs):
        if seg.name < cursor.segment:
            continue
        start = cursor.offset if seg.name == cursor.segment else 0
        newest = i == len(segs) - 1
        try:
            with open(seg, "rb") as f:
                f.seek(start)
                data = f.read(budget)
                more = bool(f.read(1))
        except FileNotFoundError:  # applied and removed meanwhile
            continue
        cut = data.rfind(b"\n") + 1
        torn = 0
        if not more and cut < len(data) and not newest:
            torn = len(data) - cut  # a closed segment ends in a torn line: skip it
        if cut or torn:
            yield Chunk(seg, start, data[:cut], torn)
            budget -= cut
        if more or budget <= 0:
            return


def cursor_after(chunks: list[Chunk], cursor: Cursor) -> Cursor:
    if not chunks:
        return cursor
    last = chunks[-1]
    return Cursor(last.segment.name, last.end)


def remove_applied(spool: Path, cursor: Cursor) -> int:
    """Delete segments wholly before the cursor (never the newest one: a receiver may be writing it)."""
    removed = 0
    segs = segments(spool)
    for seg in segs[:-1]:
        if seg.name < cursor.segment:
            with contextlib.suppress(FileNotFoundError):
                seg.unlink()
                removed += 1
    return removed


# -- what waits in the spool (the receiver's /metrics, the dashboard's Live page and badge, `summary`) ---------

RECEIVING_S = 120  # a receiver counts as receiving while its newest segment was written this recently
_EXACT_BYTES = 16 * 1024 * 1024  # backlogs up to this size are counted line by line, larger ones estimated


@dataclass(frozen=True)
class SpoolSnapshot:
    exists: bool  # a receiver has used this spool
    segments: int = 0
    bytes: int = 0
    last_write: float | None = None  # epoch seconds: when the receiver last recorded a delivery (segment mtime)
    pending: int = 0  # deliveries recorded but not yet applied to the store
    pending_estimated: bool = False  # `pending` estimated from the byte count (a very long backlog)
    oldest_pending_s: float | None = None  # age of the oldest unapplied delivery
    applied_at: float | None = None  # epoch seconds: the writer's last published apply

    def receiving(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.last_write is not None and now - self.last_write < RECEIVING_S


def snapshot(spool: Path, cursor: Cursor) -> SpoolSnapshot:
    """The spool against a cursor (the store's own, or the one its writer last published). Reads file sizes
    and only the unapplied tail, so it is cheap enough for every scrape and every auto-refresh tick."""
    if not spool.exists():
        return SpoolSnapshot(exists=False)
    segs, total, last_write = 0, 0, None
    parts: list[tuple[Path, int, int]] = []  # (segment, from offset, pending bytes)
    for seg in segments(spool):
        try:
            st = seg.stat()
        except FileNotFoundError:  # applied and removed meanwhile
            continue
        segs += 1
        total += st.st_size
        if st.st_size:  # a receiver opens an empty segment at start: that is not a delivery
            last_write = st.st_mtime if last_write is None else max(last_write, st.st_mtime)
        if seg.name < cursor.segment:
            continue
        start = cursor.offset if seg.name == cursor.segment else 0
        if st.st_size > start:
            parts.append((seg, start, st.st_size - start))
    pending_bytes = sum(n for _, _, n in parts)
    estimated = pending_bytes > _EXACT_BYTES
    if estimated:
        seg, start, _ = parts[0]
        with open(seg, "rb") as f:
            f.seek(start)
            sample = f.read(1 << 20)
        pending = round(pending_bytes / (len(sample) / max(1, sample.count(b"\n"))))
    else:
        pending = sum(count_lines(seg, start) for seg, start, _ in parts)
    state = read_state(spool) or {}
    return SpoolSnapshot(
        exists=True, segments=segs, bytes=total, last_write=last_write, pending=pending,
        pending_estimated=estimated, oldest_pending_s=_age_of_line(*parts[0][:2]) if pending else None,
        applied_at=state.get("updated_at"),
    )


def _age_of_line(seg: Path, offset: int) -> float | None:
    """Seconds since the delivery of the spool line at `offset` was received."""
    try:
        with open(seg, "rb") as f:
            f.seek(offset)
            received = json.loads(f.readline()).get("received_at")
        t = datetime.fromisoformat(received.replace("Z", "+00:00"))
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return max(0.0, time.time() - t.timestamp())


def count_lines(path: Path, start: int = 0) -> int:
    n = 0
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        f.seek(start)
        while block := f.read(1 << 20):
            n += block.count(b"\n")
    return n


# -- the writer's published state (for /metrics) ---------------------------------------------------------------


def write_state(spool: Path, state: dict) -> None:
    if not spool.exists():
        return
    state = dict(state, updated_at=time.time())
    tmp = spool / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, spool / STATE_FILE)


def read_state(spool: Path) -> dict | None:
    try:
        return json.loads((spool / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
