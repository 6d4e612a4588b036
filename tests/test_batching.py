"""Reading and staging in pieces: a file read in many small chunks, staged in many small groups, loads exactly as
the same file read and staged in one piece. The pieces change which rows the learned layout takes and which go
through the per-record path, where each piece starts and ends, and how many statements run; none of it may
change a delivery, an event, a quarantined record or a chain."""

from __future__ import annotations

import codecs
import io
import json

import pyarrow as pa
import pytest

from ingest import formats, pipeline
from ingest.pipeline import ingest
from ingest.store import Store
from tests.helpers import DATA, body, record

LINE_FIXTURES = ("truncated_json.jsonl", "wrong_types.jsonl", "unknown_type.jsonl", "missing_token.jsonl",
                 "empty_line.jsonl", "bad_encoding.jsonl", "no_notification.jsonl")


def _mixed_log() -> bytes:
    """Receiver JSON Lines sessions, with every kind of bad line and lines of another layout (plain text with
    the body inline) spread through them."""
    out: list[bytes] = []
    extras = [
        *(line for name in LINE_FIXTURES for line in (DATA / "bad" / name).read_bytes().splitlines()),
        *(DATA / "exports" / "receiver_text.log").read_bytes().splitlines(),
    ]
    for s in range(40):
        code, r0, r1 = f"code-{s:03d}-Qw8eRt5yUi2oPa7s", f"rt0-{s:03d}-Mn4Bv7Cx1Za9Sd3Fg6", f"rt1-{s:03d}-Ty2Gh5Jk8Lm1Nb4Vc"
        at = f"2026-12-03T{8 + s % 10:02d}:{s:02d}:00.250000Z"
        later = f"2026-12-03T{9 + s % 10:02d}:{s:02d}:30.500000Z"
        rows = [record(at, body("new", f"at0-{s:03d}-NWU5ZDk1NDRhMWRj", r0, code=code), user_id=f"user{s % 7}"),
                record(later, body("refresh", f"at1-{s:03d}-NWU5ZDk1NDRhMWRj", r1, old=r0))]
        if s % 5 == 0:  # Tyk's retry: the same body delivered again
            rows.append(rows[-1])
        out += [json.dumps(r).encode() for r in rows]
        if s < len(extras):
            out.append(extras[s])
    out += extras[40:]
    return b"\n".join(out) + b"\n"


def _state(store: Store) -> dict[str, list]:
    q = {
        "deliveries": "SELECT delivery_id, event_id, received_at, identity, record_no FROM deliveries",
        "events": "SELECT * FROM events",
        "quarantine": "SELECT quarantine_id, record_no, reason, excerpt FROM quarantine",
        "lineage": "SELECT * FROM lineage",
        "chains": "SELECT * FROM chains",
    }
    return {name: sorted(store.con.execute(sql).fetchall(), key=repr) for name, sql in q.items()}


def _counts(report) -> list[tuple]:
    return [(f.records, f.new_deliveries, f.duplicate_deliveries, f.rejected, f.untimed, f.unreadable_times)
            for f in report.files]


def test_a_file_read_and_staged_in_small_pieces_loads_as_in_one_piece(monkeypatch):
    data = _mixed_log()
    whole = Store.open(":memory:")
    whole_report = ingest(whole, [("mixed.jsonl", io.BytesIO(data))])

    groups: list[int] = []
    grouped = pipeline._grouped

    def counting(batches, max_bytes=None):
        for table in grouped(batches, max_bytes):
            groups.append(len(table))
            yield table

    monkeypatch.setattr(formats, "CHUNK_BYTES", 700)  # a few lines a read
    monkeypatch.setattr(pipeline, "STAGE_GROUP_BYTES", 3000)  # a few reads a group
    monkeypatch.setattr(pipeline, "_grouped", counting)
    pieces = Store.open(":memory:")
    pieces.key = whole.key  # same fingerprints, so the two stores can be compared row by row
    pieces_report = ingest(pieces, [("mixed.jsonl", io.BytesIO(data))])

    assert len(groups) >= 10, groups
    assert sum(groups) == whole_report.files[0].records
    assert _counts(pieces_report) == _counts(whole_report)
    state = _state(whole)
    assert len(state["quarantine"]) >= len(LINE_FIXTURES)
    assert len(state["events"]) >= 80
    assert _state(pieces) == state


def _table(numbers: list[int], large: bool = False) -> pa.Table:
    kind = pa.large_string() if large else pa.string()
    return pa.table({"record_no": pa.array(numbers, pa.int64()), "raw": pa.array([f"r{n}" for n in numbers], kind),
                     "err": pa.nulls(len(numbers), pa.string())})


def test_groups_reach_the_size_keep_order_and_never_mix_schemas():
    tables = [_table([1, 2]), _table([3, 4]), _table([5]), _table([6, 7], large=True), _table([8])]  # [8] is a string column again
    size = tables[0].nbytes + tables[1].nbytes  # the first two fill a group
    got = list(pipeline._grouped(iter(tables), size))
    assert [g.column("record_no").to_pylist() for g in got] == [[1, 2, 3, 4], [5], [6, 7], [8]]
    assert got[2].schema.field("raw").type == pa.large_string()


def test_a_read_error_still_stages_the_group_read_before_it():
    def batches():
        yield _table([1, 2])
        yield _table([3])
        raise formats.ReadError("x.log: the file ends early")

    got = pipeline._grouped(batches(), 1 << 30)
    assert next(got).column("record_no").to_pylist() == [1, 2, 3]
    with pytest.raises(formats.ReadError, match="ends early"):
        next(got)


class _Trickle(io.RawIOBase):
    """A stream that hands out at most `step` bytes a read, as a pipe or a decompressor may."""

    def __init__(self, data: bytes, step: int):
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.step, len(self.data) - self.pos)
        b[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


@pytest.mark.parametrize("chunk", [5, 64, 1 << 20])
@pytest.mark.parametrize("step", [3, 1 << 20])
def test_lines_come_out_whole_and_numbered_however_the_file_is_cut(monkeypatch, chunk, step):
    lines = [b'{"a": 1}', b"x" * 150, b"", b'{"b": "\xc3\xa9t\xc3\xa9"}\r', b"last, with no newline"]
    data = codecs.BOM_UTF8 + b"\n".join(lines)
    monkeypatch.setattr(formats, "CHUNK_BYTES", chunk)  # lines longer than a chunk; a mark cut in two
    tables = list(formats._read_lines("t.log", _Trickle(data, step)))
    got = pa.concat_tables(tables)
    assert got.column("record_no").to_pylist() == [1, 2, 3, 4, 5]
    assert [r.rstrip("\n") for r in got.column("raw").to_pylist()] == [line.decode() for line in lines]
