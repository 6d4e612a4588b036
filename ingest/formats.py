"""Read log exports of any shape into batches of raw records, in bounded memory.

A file is recognised by its content, never by its name: compression first (gzip, bzip2, xz, zip; a zip's
members are read one by one as sources of their own), then the text layout:

* ``jsonl``: one JSON value per line (also "text" lines that carry a JSON body after a prefix);
* ``json-array`` / ``json-object`` / ``json-stream``: a JSON document. The records are the items of the array
  that holds the notifications (found by sampling: ``hits.hits``, ``events``, ``data``, Loki's
  ``data.result[].values``, ...), streamed with ijson so a large document never becomes one Python object.
  A top-level array of objects (``gcloud logging read --format=json``, ``jq -s``), or objects in an array
  reached by keys alone (Elasticsearch ``hits.hits``, CloudWatch ``events``, Datadog ``data``, in one document
  or in pages back to back), is not parsed here at all: a vectorised scan of its bytes cuts it into its items,
  whose text goes on as records, as lines do, and an item that is not valid JSON is a record the quarantine
  keeps instead of the end of the read;
* ``csv`` / ``tsv``: a header row and one record per row (a record becomes a JSON object of its columns);
* ``splunk-xml``: Splunk's XML search results (Splunk Web "Export" -> XML, REST ``output_mode=xml``): one
  record per ``<result>``, a JSON object of its ``<field k=...>`` values, parsed incrementally. Any other XML
  document is not a log export.

A row that a platform writes as a list of ``{"field": ..., "value": ...}`` pairs (CloudWatch Logs Insights
``GetQueryResults``) becomes the JSON object of those pairs.

Every reader yields `Batch`es of `(record_no, text, error)`: record numbers are 1-based lines for
line-oriented formats, rows for CSV and item positions for JSON documents. A record that cannot even be
decoded carries an ``error`` (bad UTF-8) instead of being dropped. Anything that is not a log export at all
raises `NotALogExport` with the file's name.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import io
import itertools
import json
import lzma
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from xml.etree import ElementTree

import ijson
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
from ijson.common import ObjectBuilder

from ingest.locate import IDENTITY_KEYS, NOTIFICATION_FIELDS

BATCH_RECORDS = 100_000
CHUNK_BYTES = 16 << 20
SAMPLE_BYTES = 1 << 20

# Signals that a JSON document's part holds a Tyk notification.
NOTIFICATION_MARKERS = ("notification_type", "new_oauth_token", "old_refresh_token")

_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"\x7fELF": "an executable",
    b"SQLite format 3": "an SQLite database",
    b"DUCK": "a DuckDB database",
    # compressions and archives this reader does not unpack: say how to get at the logs
    b"\x28\xb5\x2f\xfd": "Zstandard-compressed: decompress it first (zstd -d FILE), or compress with gzip",
    b"\x04\x22\x4d\x18": "LZ4-compressed: decompress it first (lz4 -d FILE), or compress with gzip",
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive: unpack it first, or pack the logs as zip or tar.gz",
    b"Rar!\x1a\x07": "a RAR archive: unpack it first, or pack the logs as zip or tar.gz",
}


class ReadError(Exception):
    """A file could not be read as a log export; the message names the file."""


class NotALogExport(ReadError):
    pass


class Batch:
    """Records built one by one (CSV rows, JSON document items); `table()` turns them into an Arrow batch."""

    def __init__(self) -> None:
        self.record_nos: list[int] = []
        self.texts: list[str] = []
        self.errors: list[str | None] = []

    def add(self, record_no: int, text: str, error: str | None = None) -> None:
        self.record_nos.append(record_no)
        self.texts.append(text)
        self.errors.append(error)

    def __len__(self) -> int:
        return len(self.record_nos)

    def table(self) -> pa.Table:
        return pa.table(
            {
                "record_no": pa.array(self.record_nos, pa.int64()),
                "raw": pa.array(self.texts, pa.string()),
                "err": pa.array(self.errors, pa.string()),
            }
        )


@dataclass
class Source:
    """One readable unit: a file, or one member of a zip archive. Batches are Arrow tables with columns
    record_no (int64), raw (string; a line keeps its line ending) and err (string: why it cannot be decoded)."""

    name: str
    format: str
    batches: Iterator[pa.Table]
    note: str | None = None  # why a skipped archive member was skipped


def open_sources(name: str, raw: BinaryIO, on_bytes: Callable[[int], None] | None = None) -> Iterator[Source]:
    """Yield the readable sources in `raw` (a binary file object), each with its detected format.

    `on_bytes(n)` is called with the number of compressed bytes consumed so far, for progress bars.
    """
    head = raw.read(8)
    raw.seek(0)
    compression = _compression(head)
    if compression:
        label, decompress = compression
        yield from _text_sources(name, label, decompress(_Counting(raw, on_bytes)))
    elif head[:4] == b"PK\x03\x04":
        try:
            archive = zipfile.ZipFile(raw)
        except zipfile.BadZipFile as e:
            raise NotALogExport(f"{name}: a damaged zip archive ({e})") from e
        members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
        if not members:
            raise NotALogExport(f"{name}: the zip archive is empty")
        logs, skipped = 0, []
        for member in members:
            member_name = f"{name}!{member.filename}"
            with archive.open(member) as f:
                try:
                    # members may be compressed themselves (a zipped CloudWatch S3 export: one .gz per stream)
                    for source in _member_sources(member_name, "zip", _Seekless(f)):
                        logs += 1
                        yield source
                except NotALogExport as e:
                    if len(members) == 1:
                        raise
                    # A zip export may carry a manifest or a README beside the logs; skip that member only.
                    skipped.append(str(e))
                    yield Source(member_name, "skipped", iter(()), _skipped_why(member_name, e))
        if on_bytes:
            on_bytes(raw.seek(0, io.SEEK_END))
        if not logs:
            why = f" ({skipped[0]})" if len(skipped) == 1 else ""
            raise NotALogExport(f"{name}: the zip archive holds no log export{why}")
    else:
        yield from _text_sources(name, "", _Counting(raw, on_bytes))


# Stream compressions, by their magic bytes: (label, a reader of the decompressed bytes).
_COMPRESSIONS: tuple[tuple[bytes, str, Callable[[BinaryIO], BinaryIO]], ...] = (
    (b"\x1f\x8b", "gzip", lambda f: io.BufferedReader(_Gunzip(f), 1 << 20)),
    (b"BZh", "bzip2", bz2.BZ2File),
    (b"\xfd7zXZ\x00", "xz", lzma.LZMAFile),
)


def _compression(head: bytes) -> tuple[str, Callable[[BinaryIO], BinaryIO]] | None:
    return next(((label, reader) for magic, label, reader in _COMPRESSIONS if head.startswith(magic)), None)


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """`size` bytes, or fewer only at the end of the stream (a raw stream's read may return less)."""
    parts, got = [], 0
    while got < size:
        part = stream.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


# Every notification names at least one of these fields, in any shape (JSON keys, flattened CSV headers, logfmt).
_NOTIFICATION_NAMES = re.compile("|".join(NOTIFICATION_FIELDS).encode(), re.IGNORECASE)


def _text_sources(name: str, compression: str, stream: BinaryIO, member: bool = False) -> Iterator[Source]:
    """The source in a (decompressed) stream. `member`: a member of a zip or tar archive, where a README or a
    manifest may lie beside the logs: one that holds no notification field name at all (and fits in the sample,
    so all of it was looked at) is not a log export, and its archive skips it instead of quarantining its lines.
    A file of its own is read whatever it holds: every line that is not a notification is quarantined."""
    decompressed = stream
    try:
        sample = _read_up_to(stream, SAMPLE_BYTES)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise NotALogExport(f"{name}: cannot decompress ({compression}): {e}") from e
    if not sample and _cut_short(stream):
        raise NotALogExport(f"{name}: the gzip file ends before any of its data (cut off in a copy or an upload?)")
    if sample[257:262] == b"ustar":  # a tar archive (`tar czf logs.tar.gz /var/log/hook/`), maybe compressed
        yield from _tar_sources(name, compression, _Rewound(sample, stream))
        return
    prefix = f"{compression}/" if compression else ""
    encoding = _utf16(sample)
    if encoding:  # e.g. PowerShell's `>` redirection writes UTF-16: read it as the UTF-8 it stands for
        stream = _Transcoded(_Rewound(sample, stream), encoding)
        sample = _read_up_to(stream, SAMPLE_BYTES)
        prefix += "utf-16/"
    fmt = sniff(name, sample)
    if fmt in _CSV_FORMATS and not encoding and _code_page(sample):
        # a CSV export opened and saved again in Excel on Windows: its code page, not UTF-8 (`amélie` in one byte
        # a letter). Only a CSV, and only when nothing in it is UTF-8: a log with a bad line is not re-read.
        stream = _Transcoded(_Rewound(sample, stream), "cp1252")
        sample = _read_up_to(stream, SAMPLE_BYTES)
        prefix += "windows-1252/"
    if member and len(sample) < SAMPLE_BYTES and not _NOTIFICATION_NAMES.search(sample):
        raise NotALogExport(f"{name}: not a log export: no Tyk notification in it (a README or a manifest?)")
    yield Source(name, prefix + fmt, _then_whole(name, _READERS[fmt](name, _Rewound(sample, stream)), decompressed))


def _then_whole(name: str, batches: Iterator[pa.Table], stream: BinaryIO) -> Iterator[pa.Table]:
    """The batches, and then an error if the compressed file was cut short: what it held before the cut has
    loaded by then (the cut record itself is quarantined as truncated)."""
    yield from batches
    if _cut_short(stream):
        raise ReadError(f"{name}: the gzip file ends early (cut off in a copy or an upload?); the records before the "
                        "cut were read")


def _tar_sources(name: str, compression: str, stream: BinaryIO) -> Iterator[Source]:
    """Each regular file of a tar archive, read as it streams past (no seeking, no extraction to disk); members
    may be compressed themselves (a logrotate directory: hook.log, hook.log.1.gz). Members that are not log
    exports (a README, a manifest) are skipped; an archive holding none is not a log export."""
    label = "tar" + {"gzip": ".gz", "bzip2": ".bz2", "xz": ".xz"}.get(compression, "")
    logs, skipped = 0, []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                member_name = f"{name}!{member.name}"
                content = archive.extractfile(member)
                try:
                    for source in _member_sources(member_name, label, content):
                        logs += 1
                        yield source
                except NotALogExport as e:
                    skipped.append(str(e))
                    yield Source(member_name, "skipped", iter(()), _skipped_why(member_name, e))
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise ReadError(f"{name}: the tar archive ends early or is damaged: {e}") from e
    if not logs:
        why = f" ({skipped[0]})" if len(skipped) == 1 else ""
        raise NotALogExport(f"{name}: the tar archive holds no log export{why}")


def _skipped_why(member_name: str, e: NotALogExport) -> str:
    """The reason a member was skipped, without the member's name in front (the report row names it)."""
    why = str(e).removeprefix(f"{member_name}: ")
    return f"skipped: {why}"


def _member_sources(name: str, label: str, content: BinaryIO) -> Iterator[Source]:
    head = content.read(8)
    stream = _Rewound(head, content)
    compression = _compression(head)
    if compression:
        inner, decompress = compression
        yield from _text_sources(name, f"{label}/{inner}", decompress(stream), member=True)
    else:
        yield from _text_sources(name, label, stream, member=True)


_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xf4][\x80-\xbf]")
_HIGH_RUN = re.compile(rb"[\x80-\xff]+")
# Windows-1252's letters: Š Œ Ž š œ ž Ÿ, and À-ÿ but × and ÷
_CP1252_LETTERS = re.compile(rb"[\x8a\x8c\x8e\x9a\x9c\x9e\x9f\xc0-\xd6\xd8-\xf6\xf8-\xff]{1,3}")


def _code_page(sample: bytes) -> bool:
    """Text in Windows-1252 rather than UTF-8: no UTF-8 sequence of more than one byte, and every run of bytes
    that are not ASCII one to three letters beside an ASCII letter (`am\xe9lie`, `M\xfcller`, `Jos\xe9`). Others
    (`\xe9\xff` between spaces) are damage: the file is read as UTF-8 and their records are quarantined."""
    try:
        sample.decode("utf-8")
        return False
    except UnicodeDecodeError as e:
        if e.start >= len(sample) - 3 and e.reason == "unexpected end of data":
            return False  # the sample ends inside a character: UTF-8 after all
    if _UTF8_MULTIBYTE.search(sample):
        return False

    def in_a_word(m: re.Match) -> bool:
        before, after = sample[m.start() - 1 : m.start()], sample[m.end() : m.end() + 1]
        return bool(_CP1252_LETTERS.fullmatch(m.group(0))) and (before.isalpha() or after.isalpha())

    return all(in_a_word(m) for m in _HIGH_RUN.finditer(sample))


def _utf16(sample: bytes) -> str | None:
    """'utf-16' for text with a UTF-16 byte order mark; 'utf-16-le'/'utf-16-be' for mostly-ASCII UTF-16 without
    one (every other byte zero); else None."""
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not sample.startswith(codecs.BOM_UTF32_LE):
        return "utf-16"
    probe = sample[:4096]
    if len(probe) < 16:
        return None
    odd, even = probe[1::2], probe[0::2]
    if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.05 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.9 * len(even) and odd.count(0) < 0.05 * len(odd):
        return "utf-16-be"
    return None


def sniff(name: str, sample: bytes) -> str:
    """Return the text layout of a sample: jsonl, json-array, json-object, json-stream, splunk-xml, yaml,
    aws-text, csv, csv; (semicolons), tsv or text."""
    if sample.startswith(codecs.BOM_UTF8):
        sample = sample[3:]
    if not sample.strip():
        raise NotALogExport(f"{name}: the file is empty: not a log export")
    for magic, what in _MAGIC.items():
        if sample.startswith(magic):
            raise NotALogExport(f"{name}: not a log export: it is {what}")
    if sample.startswith(b"__CURSOR="):  # before the binary check: its framing of binary fields holds NUL bytes
        return "journal-export"
    probe = sample[:65536]
    # (a run of NUL bytes is a hole a crash left in a log being written, not binary data: looked past)
    solid = _NUL_HOLE.sub(b"", probe)
    if not solid.strip() or b"\x00" in solid or _binary_ratio(solid) > 0.1:
        raise NotALogExport(f"{name}: not a log export: it looks like binary data")
    text = probe.decode("utf-8", errors="replace")
    stripped = text.lstrip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if stripped.startswith("<?xml") or stripped.startswith("<results"):
        if "<!DOCTYPE" in text or "<!ENTITY" in text:
            raise NotALogExport(f"{name}: not a log export: an XML document with a DTD (not read, for safety)")
        if re.search(r"<results[\s>]", text):
            return "splunk-xml"
        raise NotALogExport(
            f"{name}: not a log export: an XML document that is not Splunk search results (<results><result>); "
            "export the logs as JSON, CSV or plain text"
        )
    if stripped[:1] == "{" and len(lines) > 1 and lines[0].strip() == "{" and _RUBY_MEMBER.match(lines[1]):
        return "text-multiline"  # Ruby hashes over lines (Logstash's rubydebug): read by the fields' names
    if stripped[:1] in "{[":
        complete = [ln.strip() for ln in lines[:3]] if len(probe) < 65536 or len(lines) > 3 else []
        if len(complete) >= 2 and _is_json(complete[0]) and _is_json(complete[1]):
            if records_prefix(complete[0].encode()):
                # each line a whole answer holding a list of records (`curl ...; echo` page after page, compact):
                # read as documents back to back, or all but the first record of each line would be lost
                return "json-stream"
            return "jsonl"
        one_line_answer = len(lines) == 1 and stripped[0] == "{" and len(lines[0]) > 2048  # not a lone record
        if (len(lines) == 1 and stripped[0] == "{" and len(probe) < 65536 and not one_line_answer
                and not _is_json(lines[0].strip())):
            return "jsonl"  # the whole file is one record, broken (cut off, hand-edited): it is quarantined
        if _json_prefix_ok(sample):
            if stripped[0] == "[":  # several arrays back to back (exports joined with `cat`) are read as a stream;
                # anything else after an array is an error the report names
                return "json-stream" if _only_arrays(sample) else "json-array"
            return "json-stream" if _json_values(sample) > 1 else "json-object"
        if _splits_as_array(sample):  # an array of objects with a broken item (`"code": <redacted>`): the others load
            return "json-array"
        if lines and (lines[0].strip() in ("{", "[") or one_line_answer):
            # A document that breaks somewhere in the sample, pretty-printed (as every CLI writes one) or on one
            # line (as `curl` saves an API's answer): read as a document, its records up to the break load (or
            # all but the broken one, when the scan takes the shape) and the break is reported with its record
            # number. Read as text, each of its lines would be a record of its own, all of them quarantined.
            if stripped[0] == "[":
                return "json-array"
            return "json-stream" if _json_values(sample) > 1 else "json-object"
        if _spans_lines(lines[:2000]):  # "[17-Nov-2026 09:15:02 UTC] Array" and PHP's print_r on the lines after
            return "text-multiline"
        return "text"  # e.g. "[2026-12-04 10:00:00] INFO ..." or a JSON Lines file with a broken line
    if _is_yaml_stream(lines[:40]):
        return "yaml"
    if lines and (lines[0].startswith("EVENTS\t") or any(ln.startswith("RESULTS\t") for ln in lines[:3])):
        return "aws-text"
    dialect = _csv_dialect(lines[:400])
    if dialect:
        return dialect
    if _spans_lines(lines[:2000]):
        return "text-multiline"
    return "text"


# The start of a log line: a time (ISO-like, Go's log package, classic syslog, bracketed, PHP's error_log, after
# Ruby's Logger's severity letter, java.util.logging's `Nov 17, 2026 8:01:33 AM`), an epoch number, or Rails's
# `Started POST "/hook" for ... at <time>` (in development its request's other lines carry no time).
_RECORD_START = re.compile(
    r"^(?:[DIWEFA], )?\[?(?:\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}|\d{4}/\d{2}/\d{2} \d{2}:\d{2}|[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}"
    r"|\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}|[A-Z][a-z]{2} \d{1,2}, \d{4} \d{1,2}:\d{2}:\d{2} [AP]M\b|\d{10,19}\b"
    r'|Started [A-Z]+ "[^"]*" for \S+ at \d{4}-)'
)
# A notification's field names, as JSON writes them or an object printer (`notificationType`, `NewOAuthToken`)
_FIELD_NAME = re.compile(r"(?i)notification_?type|new_?o_?auth_?token|old_?refresh_?token")
_TYPE_NAME = re.compile(r"(?i)notification_?type")
# java.util.logging's message line, under its time line
_JUL_MESSAGE = re.compile(r"^(?:SEVERE|WARNING|INFO|CONFIG|FINE|FINER|FINEST): ")


# A member of a Ruby hash printed over lines: `    "auth_code" => "...",` (Logstash's rubydebug)
_RUBY_MEMBER = re.compile(r'^\s+"[^"]+" => ')


def _spans_lines(lines: list[str]) -> bool:
    """Text whose records span several lines: each begins with a time, and a notification's own field names sit
    on lines of their own, as fragments of an object (`"notification_type": "new",`: `aws logs tail --format
    json` pretty-prints a JSON message under its time and stream; Node's util.inspect, Python's pprint). Lines that only continue a record (a stack
    trace), or lines that are records of their own (JSON Lines after a line of text), are read line by line."""
    if not any(_RECORD_START.match(ln) for ln in lines[:50]):  # (a server's banner may come first)
        return False
    marked = [ln for ln in lines if not _RECORD_START.match(ln) and _FIELD_NAME.search(ln)]
    # A line that continues a record is indented (Phoenix's `  Parameters: %{...}`), java.util.logging's message
    # line after its time line, or a fragment of an object: one field, at most one brace (`{'auth_code': ...,`
    # from Python's pprint). A line with a whole notification, not indented, is a record of its own.
    return bool(marked) and all(ln[:1] in " \t" or _JUL_MESSAGE.match(ln)
                                or not ("{" in ln and "}" in ln or len(_FIELD_NAME.findall(ln)) >= 2)
                                for ln in marked)


_YAML_KEY = re.compile(r"^\s*(- )?[A-Za-z_@][\w@.\-/]*:(\s|$)")


_YAML_BLOCK_KEY = re.compile(r"^[A-Za-z_@][\w@.\-/]*:\s*$")


def _is_yaml_stream(lines: list[str]) -> bool:
    """YAML documents each opened by `---`: what `gcloud logging read` prints unless told --format=json; or one
    document holding a list of records: the AWS CLI's `--output yaml` (`events:` then `- eventId: ...`)."""
    if not lines:
        return False
    if lines[0].rstrip() == "---":
        # every unindented line is a key or a document start; indented ones are nested values or folded text
        top = [ln for ln in lines[1:-1] if ln.strip() and not ln[0].isspace() and ln.rstrip() != "---"]
        return len(top) >= 2 and all(_YAML_KEY.match(ln) for ln in top)
    if len(lines) < 3 or not _YAML_BLOCK_KEY.match(lines[0]) or not lines[1].startswith(("- ", "  ")):
        return False
    top = [ln for ln in lines[1:-1] if not ln[0].isspace() and not ln.startswith("- ")]
    return all(_YAML_KEY.match(ln) for ln in top)


_NUL_HOLE = re.compile(rb"\x00{16,}")


def _binary_ratio(probe: bytes) -> float:
    bad = sum(1 for b in probe if b < 9 or 13 < b < 32)
    return bad / max(1, len(probe))


def _is_json(s: str) -> bool:
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


def _json_prefix_ok(sample: bytes) -> bool:
    """True when the sample is the start of a JSON document (it may be cut off at the sample's end)."""
    try:
        for _ in ijson.parse(io.BytesIO(sample), multiple_values=True):
            pass
    except ijson.IncompleteJSONError as e:
        return "incomplete" in str(e).lower() or "premature" in str(e).lower()
    except ijson.JSONError:
        return False
    return True


_SCALARS = ("string", "number", "boolean", "null")


def _top_values(sample: bytes, most: int | None = None, *, ended: bool = False) -> list[str]:
    """The kinds of the top-level JSON values in the sample, as ijson names the events that start them
    (start_map, start_array, string...) or, `ended`, that end them (only values complete in the sample count),
    up to `most`."""
    events = ("end_map", "end_array", *_SCALARS) if ended else ("start_map", "start_array", *_SCALARS)
    kinds: list[str] = []
    try:
        for prefix, event, _ in ijson.parse(io.BytesIO(sample), multiple_values=True):
            if prefix == "" and event in events:
                kinds.append(event)
                if most is not None and len(kinds) >= most:
                    break
    except ijson.JSONError:
        pass
    return kinds


def _only_arrays(sample: bytes) -> bool:
    """More than one top-level value in the sample, and every one of them an array."""
    kinds = _top_values(sample)
    return len(kinds) > 1 and all(k == "start_array" for k in kinds)


def _json_values(sample: bytes) -> int:
    """How many complete top-level values the sample holds: 0, 1, or 2 for more."""
    return len(_top_values(sample, most=2, ended=True))


# Excel's delimiter hint, the first line of CSV files saved for (or by) it: sep=;
_SEP_HINT = re.compile(r'^"?sep=(.)"?$')
_BY_DELIMITER = {"\t": "tsv", ",": "csv", ";": "csv;"}
_CSV_FORMATS = frozenset(_BY_DELIMITER.values())


def _csv_dialect(lines: list[str]) -> str | None:
    if lines and lines[0].startswith("#TYPE "):  # PowerShell 5's Export-Csv: the object's type, then the header
        lines = lines[1:]
    if lines and (hint := _SEP_HINT.match(lines[0].strip())):
        return _BY_DELIMITER.get(hint.group(1))
    if len(lines) < 2:
        return None
    for delim, fmt in (("\t", "tsv"), (",", "csv"), (";", "csv")):
        header = next(csv.reader([lines[0]], delimiter=delim))
        if len(header) < 2 or any(len(h) > 80 or "{" in h for h in header):
            continue
        # whole records, not lines: a quoted cell may hold a pretty-printed JSON message over many lines
        try:
            rows = list(itertools.islice(csv.reader(lines[1:], delimiter=delim), 5))
        except csv.Error:
            continue
        if rows and sum(len(r) == len(header) for r in rows) >= max(1, len(rows) - 1):
            return fmt if delim != ";" else "csv;"
    return None


# -- readers -------------------------------------------------------------------------------------------------


# Grafana Explore's "Download logs" (txt) starts with a summary, then blank lines: part of the format, not records.
_PREAMBLE = re.compile(r"^(Common labels|Line limit|Total bytes processed|Total lines processed|Summary|Query):")
# The header of a text table (Elasticsearch SQL's `format=txt`, OpenSearch PPL's raw format): column names
# between pipes, maybe a rule of dashes under them.
_TABLE_HEADER = re.compile(r"^ *[@\w.]+(?: *\| *[@\w.]+)+ *\r?\n?$")
_TABLE_RULE = re.compile(r"^[-=+| ]{3,}\r?\n?$")


def _read_lines(name: str, stream: BinaryIO) -> Iterator[pa.Table]:
    """Line-oriented files, split by numpy and wrapped as Arrow arrays without a Python object per line."""
    record_no = 0
    tail = b""
    first = True  # until the first line is seen: a byte-order mark, Grafana's preamble
    bom_checked = False
    while True:
        data, end = _next_chunk(name, stream, tail, f"line {record_no}")
        if end == len(tail):
            break
        start = 0
        if not bom_checked:
            bom_checked = True
            if data.startswith(codecs.BOM_UTF8):
                start = 3
        cut = data.rfind(b"\n", 0, end)
        if cut < start:
            tail = bytes(memoryview(data)[start:end])
            continue
        tail = bytes(memoryview(data)[cut + 1 : end])
        table = _lines_table(memoryview(data)[start : cut + 1], record_no)  # a view: no copy of the chunk
        lines = len(table)
        if first and _starts_with_preamble(table.column("raw")[0].as_py() or ""):
            table = _drop_preamble(table)
        first = False
        record_no += lines
        if len(table):
            yield table
    if tail:
        table = _lines_table(tail + b"\n", record_no)
        if first and _starts_with_preamble(table.column("raw")[0].as_py() or ""):
            table = _drop_preamble(table)
        if len(table):
            yield table


def _next_chunk(name: str, stream: BinaryIO, carried: bytes, after: str) -> tuple[bytearray, int]:
    """A new buffer holding `carried` (the unfinished record of the chunk before) and then up to CHUNK_BYTES read
    from the stream; returns it and where its data ends. Read into, rather than joined to the carried bytes
    afterwards (`tail + chunk`): that copy, into fresh memory, cost more than the read itself (1.9 s of CPU for a
    2 GB file against 0.4 s), on the thread that shares two cores with DuckDB. The buffer is new each time
    because the batches made from the one before are still being staged."""
    data = bytearray(len(carried) + CHUNK_BYTES)
    data[: len(carried)] = carried
    try:
        return data, _fill(stream, memoryview(data), len(carried))
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise ReadError(f"{name}: the file ends early or is damaged after {after}: {e}") from e


def _fill(stream: BinaryIO, buf: memoryview, pos: int) -> int:
    """Read into `buf` from `pos` until it is full or the stream ends; returns where the data ends."""
    while pos < len(buf):
        n = stream.readinto(buf[pos:])
        if not n:
            break
        pos += n
    return pos


def _lines_table(body: bytes | memoryview, before: int) -> pa.Table:
    """`body` holds whole lines, each ending in a newline. Values keep their line ending (JSON ignores it)."""
    ends = np.flatnonzero(np.frombuffer(body, np.uint8) == 10)
    offsets = np.empty(len(ends) + 1, np.int64)
    offsets[0] = 0
    offsets[1:] = ends + 1
    return _records_table(body, offsets, before, "line")


def _records_table(body, offsets: np.ndarray, before: int, what: str) -> pa.Table:
    """Records that lie back to back in `body`, record i at offsets[i]:offsets[i + 1], numbered from before + 1."""
    count = len(offsets) - 1
    raw = pa.Array.from_buffers(pa.large_binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(body)])
    # Arrow arrays straight from buffers: pa.array() would import pandas (~0.2 s) to check its argument
    numbers = _int64_array(np.arange(before + 1, before + 1 + count, dtype=np.int64))
    try:
        text = raw.cast(pa.large_string())
        errors = pa.nulls(count, pa.string())
    except pa.ArrowInvalid:  # some record is not UTF-8: find which, keep a readable copy for the excerpt
        values, errs = [], []
        for line in raw.to_pylist():
            try:
                values.append(line.decode("utf-8"))
                errs.append(None)
            except UnicodeDecodeError as e:
                values.append(line.decode("utf-8", errors="replace"))
                errs.append(f"invalid UTF-8 at byte {e.start} of the {what}")
        text, errors = pa.array(values, pa.large_string()), pa.array(errs, pa.string())
    return pa.Table.from_arrays([numbers, text, errors], names=["record_no", "raw", "err"])


def _int64_array(values: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _starts_with_preamble(line: str) -> bool:
    return bool(_PREAMBLE.match(line) or _TABLE_HEADER.match(line))


def _drop_preamble(table: pa.Table) -> pa.Table:
    texts = table.column("raw").slice(0, 40).to_pylist()
    end = 0
    if texts and _TABLE_HEADER.match(texts[0]):  # a text table's column names, and the rule under them
        end = 2 if len(texts) > 1 and _TABLE_RULE.match(texts[1]) else 1
    while end < len(texts) and _PREAMBLE.match(texts[end]):
        end += 1
    while end < len(texts) and not texts[end].strip():
        end += 1
    return table.slice(end)


def _read_csv(delimiter: str) -> Callable[[str, BinaryIO], Iterator[pa.Table]]:
    def read(name: str, stream: BinaryIO) -> Iterator[pa.Table]:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader)
            if header and header[0].startswith("#TYPE "):
                header = next(reader)
            if _SEP_HINT.match(delimiter.join(header).strip()):
                header = next(reader)
        except StopIteration:
            return
        header = [_unescape(h.strip()) for h in header]
        batch = Batch()
        line_end = reader.line_num
        try:
            for row in reader:
                record_no = line_end + 1
                line_end = reader.line_num
                if not any(cell.strip() for cell in row):
                    batch.add(record_no, "", None)
                elif broken := _broken_row(row, len(header), record_no, line_end):
                    # kept whole, with all its cells, for the quarantine
                    text, err = _as_json({"cells": row}, "row")
                    batch.add(record_no, text, err or broken)
                else:
                    batch.add(record_no, *_as_json(dict(zip(header, map(_cell, row), strict=True)), "row"))
                if len(batch) >= BATCH_RECORDS:
                    yield batch.table()
                    batch = Batch()
        except csv.Error as e:
            raise ReadError(f"{name}: CSV broken at line {reader.line_num}: {e}") from e
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise ReadError(f"{name}: the file ends early or is damaged after line {line_end}: {e}") from e
        if len(batch):
            yield batch.table()

    return read


def _as_json(record: dict, what: str) -> tuple[str, str | None]:
    """A record of text decoded with errors="surrogateescape", as JSON text and an error: bytes that were not
    UTF-8 become U+FFFD, and the error says so."""
    return _checked_text(json.dumps(record, ensure_ascii=False), what)


def _broken_row(row: list[str], columns: int, first_line: int, last_line: int) -> str | None:
    """Why a CSV row cannot be read under its header, or None. A hand edit lost a quote or a cell, or a value holds
    the delimiter unquoted: the values no longer sit under their names, and read anyway they would be taken for
    others (an identity for a token). A lost closing quote takes the next rows into its cell: a cell that runs
    over lines and holds two notifications (read as one record, all but the first would be lost)."""
    if last_line > first_line and any("\n" in c and c.count("notification_type") > 1 for c in row):
        return f"the row runs over lines {first_line}-{last_line} and one cell holds two notifications (a quote lost?)"
    if len(row) != columns:
        return f"the row has {len(row)} cells, the header {columns} (a quote lost, or a delimiter in a value?)"
    return None


def _cell(cell: str) -> str:
    """A CSV cell's value: unescaped (`_unescape`); a multivalue cell whose values are all one (Splunk's CSV joins
    a field's values with newlines, and a JSON event extracted twice has each field twice) is that value."""
    if "\n" in cell:
        values = cell.split("\n")
        if all(v == values[0] for v in values[1:]):
            cell = values[0]
    return _unescape(cell)


def _unescape(cell: str) -> str:
    """Undo spreadsheet formula escaping ('=..., '@timestamp) that Kibana and others apply to CSV exports."""
    if len(cell) > 1 and cell[0] == "'" and cell[1] in "=+-@\t\r":
        return cell[1:]
    return cell


def records_prefix(sample: bytes) -> str:
    """Find the ijson prefix of the array items that are the records of a JSON document.

    The records are the innermost array items (objects or arrays) that contain a notification: Elasticsearch
    ``hits.hits.item``, CloudWatch ``events.item``, Datadog ``data.item``, Loki ``data.result.item.values.item``.
    A document that is one record gives "". The sample may hold several documents (pages) one after another.
    """
    containers: set[str] = set()
    # objects with a "field" or a "key" key: {"field": "@message", "value": "..."}, {"key": "user_id", "value": {...}}
    pair_maps: set[str] = set()
    first_array_item: str | None = None
    named: tuple[str, str] | None = None  # a column list naming a Tyk field: (the list, where its rows are)
    try:
        for prefix, event, value in ijson.parse(io.BytesIO(sample), multiple_values=True):
            if event in ("start_map", "start_array"):
                containers.add(prefix)
                if prefix.endswith("item") and prefix.split(".")[-1] == "item":
                    if first_array_item is None:
                        first_array_item = prefix
                    if named and prefix.startswith(named[1]) and not prefix.startswith(named[0] + "."):
                        return prefix  # the first rows after columns named like Tyk's fields
            hit = None
            if event == "map_key" and value.endswith(NOTIFICATION_MARKERS):  # also flattened: body.auth_code
                hit = prefix.split(".") if prefix else []
            elif event == "map_key" and value in ("field", "key"):
                pair_maps.add(prefix)
            elif event == "string" and any(m in value for m in NOTIFICATION_MARKERS):
                column = _column_list(prefix)
                if column is not None:
                    # a column's name (`body.notification_type` in ES SQL's `columns`, Splunk's `fields`): the
                    # records are the rows that follow, beside the list (Grafana: `data.values` beside `schema`)
                    if named is None:
                        beside = column.rpartition(".")[0]
                        beside = beside.removesuffix("schema").rstrip(".")
                        named = (column, beside + "." if beside else "")
                    continue
                hit = prefix.split(".")[:-1] if prefix else []
                if hit[-2:] == ["item", "item"] and prefix.endswith((".value", ".field")) and ".".join(hit) in pair_maps:
                    hit = hit[:-1]  # a {"field", "value"} pair: the record is the row of pairs
            if hit is not None:
                for end in range(len(hit), 0, -1):
                    candidate = ".".join(hit[:end])
                    # (a {"key", "value"} pair is never a record: OpenTelemetry's attributes, a kvlistValue body)
                    if hit[end - 1] == "item" and candidate in containers and candidate not in pair_maps:
                        return candidate
                return ""
    except ijson.JSONError:
        pass
    return first_array_item or ""


def _column_list(at: str) -> str | None:
    """The column list a string at ijson prefix `at` names a column of (`columns.item.name` -> `columns`,
    `fields.item` -> `fields`), or None when the string is not a column name."""
    parts = at.split(".")
    if parts[-1] == "name":
        parts = parts[:-1]
    if len(parts) >= 2 and parts[-1] == "item" and parts[-2] in _COLUMN_KEYS:
        return ".".join(parts[:-1])
    return None


# Where query APIs that answer in columns name them, beside the rows: ES|QL (`columns`/`values`), OpenSearch SQL
# and PPL (`schema`/`datarows`), Splunk's json_rows (`fields`/`rows`), Azure Log Analytics (`tables[].columns`/
# `rows`), ClickHouse's JSONCompact (`meta`/`data`).
_COLUMN_KEYS = ("columns", "schema", "fields", "meta")


def columns_of(sample: bytes, prefix: str) -> tuple[list[str] | None, bool]:
    """For a columnar answer whose items at `prefix` (e.g. ``values.item``) are arrays: the column names, from a
    sibling of those items' array holding names or ``{"name": ...}`` objects (None when there is no such list),
    and whether each item is a whole column rather than a row: Grafana's data frames (`schema.fields` beside
    `data.values`) and Splunk's json_cols (`fields` beside `columns`)."""
    if not prefix.endswith("item"):
        return None, False
    rows = prefix[: -len("item")].rstrip(".")
    parent = rows.rpartition(".")[0] if "." in rows else ""
    grandparent = parent.rpartition(".")[0] if "." in parent else ""
    frame_fields = f"{grandparent}.schema.fields" if grandparent else "schema.fields"
    wanted = {f"{parent}.{k}" if parent else k: [] for k in _COLUMN_KEYS if k != rows.rpartition(".")[2]}
    if rows.endswith("data.values"):
        wanted[frame_fields] = []
    events = ijson.parse(io.BytesIO(sample), multiple_values=True)
    first = None  # the event that opens the first row
    try:
        for at, event, value in events:
            if at == prefix:  # the first row: the names come before the rows in every API above
                first = event
                break
            if event != "string":
                continue
            if at.endswith(".item") and at[: -len(".item")] in wanted:
                wanted[at[: -len(".item")]].append(value)
            elif at.endswith(".item.name") and at[: -len(".item.name")] in wanted:
                wanted[at[: -len(".item.name")]].append(value)
    except ijson.JSONError:
        pass
    for where, names in wanted.items():
        if names:
            by_column = where == frame_fields or rows.rpartition(".")[2] == "columns"
            if not by_column and rows.rpartition(".")[2] == "values" and first == "start_array":
                # Elasticsearch SQL and ES|QL call both layouts `values` (rows by default, columns when asked for
                # `columnar`): a first item that does not hold one value per column is a column.
                by_column = _item_length(events, prefix, len(names)) != len(names)
            return names, by_column
    return None, False


def _item_length(events, prefix: str, enough: int) -> int:
    """How many values the array at `prefix` that `events` (ijson events, just past its start) are inside holds;
    counting stops past `enough`. An array the sample cuts off before that counts as `enough` (not known to be
    other than a row)."""
    count = 0
    try:
        for at, event, _ in events:
            if at == prefix and event == "end_array":
                return count
            if at == f"{prefix}.item" and event not in ("end_map", "end_array"):
                count += 1
                if count > enough:
                    return count
    except ijson.JSONError:
        pass
    return enough


# A JSON array of records (`gcloud logging read --format=json`, Grafana's JSON download, `jq -s`), or the
# records array of an API answer (Elasticsearch `hits.hits`, CloudWatch `events`, Datadog `data`): split into
# its items by a vectorised scan of the bytes instead of parsing every item into Python objects and writing
# it out again (ijson + json.dumps: ~19 us a record on the reader thread, which then was the bottleneck; the
# scan costs ~2 us). Each item's own text goes to DuckDB as a record, exactly as a line of JSON Lines does.
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_DELTA = np.zeros(256, np.int8)  # +1 opens, -1 closes, 0 for a comma
for _c in b"{[":
    _DELTA[_c] = 1
for _c in b"}]":
    _DELTA[_c] = -1
_STRUCTURAL = bytes(1 if c in b"{}[]," else 0 for c in range(256))  # a bytes.translate table: 2-3x numpy's indexing
MAX_RECORD_BYTES = 256 << 20


def _unquoted_structure(arr: np.ndarray) -> np.ndarray:
    """Positions of the brackets, braces and commas of `arr` that are not inside a JSON string. `arr` starts
    outside a string."""
    raw = arr.tobytes()  # one copy (~2 ms for 16 MB): bytes' find and translate run at memchr speed
    quotes = np.flatnonzero(arr == _QUOTE)
    if raw.find(b"\\") >= 0 and len(quotes):
        slashes = np.flatnonzero(arr == _BACKSLASH)
        # a quote is escaped when an odd run of backslashes stands right before it
        breaks = np.flatnonzero(np.diff(slashes) != 1)
        starts = slashes[np.r_[0, breaks + 1]]
        ends = slashes[np.r_[breaks, len(slashes) - 1]] + 1
        odd = ends[((ends - starts) % 2 == 1) & (ends < len(arr))]
        escaped = odd[arr[odd] == _QUOTE]
        if len(escaped):
            quotes = np.setdiff1d(quotes, escaped, assume_unique=True)
    structural = np.flatnonzero(np.frombuffer(raw.translate(_STRUCTURAL), np.bool_))
    return structural[np.searchsorted(quotes, structural) % 2 == 0]  # an even number of quotes before: outside


_KEY_BEFORE = re.compile(rb'"((?:[^"\\\\]|\\\\.)*)"\s*:\s*$')


def _key_before(body: np.ndarray, at: int) -> str | None:
    """The object key whose value starts at `at` (`"hits" : [` -> hits), or None."""
    found = _KEY_BEFORE.search(body[max(0, at - 4096) : at].tobytes())
    if not found:
        return None
    try:
        return json.loads(b'"' + found.group(1) + b'"')
    except ValueError:
        return None


def _records_keys(sample: bytes, prefix: str) -> list[str] | None:
    """For records that are the objects of an array reached by object keys alone (Elasticsearch `hits.hits.item`,
    CloudWatch `events.item`, Datadog `data.item`): those keys. None for any other shape."""
    steps = prefix.split(".")
    if len(steps) < 2 or steps[-1] != "item" or "item" in steps[:-1] or any(not k for k in steps[:-1]):
        return None
    try:
        for at, event, _ in ijson.parse(io.BytesIO(sample), multiple_values=True):
            if at == prefix:
                return steps[:-1] if event == "start_map" else None
    except ijson.JSONError:
        pass
    return None


def _read_nested_items(name: str, stream: BinaryIO, keys: list[str], multiple: bool) -> Iterator[pa.Table]:
    """The items of the arrays at `keys` (no keys: a top-level array), in every document when several follow each
    other, numbered from 1. Inside those arrays the scan splits; only the few marks of the envelope around them
    are walked one by one. A structural error (the file ends inside a document, data after it) is raised after
    the items before it; an item that is not valid JSON in itself is still a record, for the quarantine."""
    what = "document" if keys else "array"
    record_no = 0
    pending = b""
    stack: list[tuple[int, str | None]] = []  # open containers of the envelope: (bracket, key)
    records_depth = len(keys) + 1  # inside a records array (root object, one object per key but the last, the array)
    inside = False  # in a records array, right after its '[' or after a comma between two records
    documents = 0
    while True:
        data, end = _next_chunk(name, stream, pending, f"record {record_no}")
        at_end = end < len(data)
        body = np.frombuffer(data, np.uint8, count=end)
        if not documents and not stack:
            body = body[len(body) - len(bytes(body).lstrip(codecs.BOM_UTF8)) :]
        marks = _unquoted_structure(body)
        kinds = body[marks]
        i, edge, tables, problem = 0, -1, [], None  # edge: the mark before the next record
        cut = 0  # where the unread rest of this buffer starts
        while i < len(marks) and problem is None:
            if inside:
                depth = records_depth + np.cumsum(_DELTA[kinds[i:]], dtype=np.int64)
                closes = np.flatnonzero(depth < records_depth)
                stop = len(depth) if not len(closes) else closes[0]
                bounds = marks[i:][:stop][(kinds[i:][:stop] == ord(",")) & (depth[:stop] == records_depth)]
                if len(closes):
                    bounds = np.r_[bounds, marks[i + stop]]
                if len(bounds):
                    lengths = np.diff(np.r_[edge, bounds]) - 1
                    keep = np.ones(int(bounds[-1]) - edge - 1, bool)
                    keep[bounds[:-1] - edge - 1] = False
                    items = body[edge + 1 : bounds[-1]][keep]
                    if not (len(closes) and len(bounds) == 1 and not items.tobytes().strip()):  # `[]`
                        offsets = np.zeros(len(lengths) + 1, np.int64)
                        np.cumsum(lengths, out=offsets[1:])
                        table = _records_table(items, offsets, record_no, "record")
                        record_no += len(lengths)
                        tables.append(table.set_column(1, "raw", pa.compute.utf8_trim_whitespace(table.column("raw"))))
                    edge = int(bounds[-1])
                    cut = edge + 1
                if not len(closes):
                    break
                if kinds[i + stop] != ord("]"):
                    problem = "a bracket closes what never opened"
                    break
                inside = False
                i += stop  # the array's ']': closed below, as any bracket of the envelope
            at, kind = int(marks[i]), int(kinds[i])
            if kind in (ord("{"), ord("[")):
                key = _key_before(body, at) if stack and stack[-1][0] == ord("{") else None
                stack.append((kind, key))
                if (kind == ord("[") and len(stack) == records_depth and [k for _, k in stack[1:]] == keys
                        and (stack[0][0] == ord("{") or not keys)):
                    inside, edge = True, at
            elif kind in (ord("}"), ord("]")):
                if not stack or stack[-1][0] != kind - 2:  # '{' + 2 == '}', '[' + 2 == ']'
                    problem = "a bracket closes what never opened"
                    break
                stack.pop()
                if not stack:
                    documents += 1
                    rest = body[at + 1 :].tobytes()
                    if not multiple and (rest.strip() or not _only_whitespace_left(stream)):
                        problem = f"data after the {what}"
            i += 1
            cut = at + 1
        yield from tables
        if problem is None and at_end and (stack or not documents):
            problem = f"the file ends inside the {what}"
        if problem:
            raise ReadError(f"{name}: invalid JSON after record {record_no} ({problem}); the records before it were read")
        if at_end or (not multiple and documents):
            return
        # the unfinished record (from the mark before it; edge is -1 when it started in an earlier buffer), or
        # the envelope from its last mark; the next buffer starts with it, outside any string
        pending = (body[edge + 1 :] if inside else body[cut:]).tobytes()
        if inside and len(pending) > MAX_RECORD_BYTES:
            raise ReadError(f"{name}: record {record_no + 1} is larger than {MAX_RECORD_BYTES >> 20} MB; "
                            "the records before it were read")


def _array_of_objects(sample: bytes) -> bool:
    text = sample.lstrip(codecs.BOM_UTF8).lstrip()
    return text[:1] == b"[" and text[1:].lstrip()[:1] == b"{"


def _splits_as_array(sample: bytes) -> bool:
    """Whether the sample reads as an array of objects whose brackets balance, even if an item is not valid JSON."""
    if not _array_of_objects(sample):
        return False
    text = sample.lstrip(codecs.BOM_UTF8).lstrip()[1:]
    body = np.frombuffer(text, np.uint8)
    marks = _unquoted_structure(body)
    depth = 1 + np.cumsum(_DELTA[body[marks]], dtype=np.int64)
    closes = np.flatnonzero(depth <= 0)
    if not len(closes):
        return True
    return depth[closes[0]] == 0 and not text[marks[closes[0]] + 1 :].strip()


def _only_whitespace_left(stream: BinaryIO) -> bool:
    while chunk := stream.read(CHUNK_BYTES):
        if chunk.strip():
            return False
    return True


_EMPTY_LIST = re.compile(rb"\[\s*\]")


def _read_json_document(multiple: bool) -> Callable[[str, BinaryIO], Iterator[pa.Table]]:
    def read(name: str, stream: _Rewound) -> Iterator[pa.Table]:
        # Several documents back to back are either records (`jq .` output) or pages of one API response
        # appended to one file (a scroll, a paginated search, `aws logs` calls with --next-token): the records are
        # then the same items of every page.
        prefix = records_prefix(stream.sample)
        if (not prefix and len(stream.sample) < SAMPLE_BYTES and _EMPTY_LIST.search(stream.sample)
                and not _NOTIFICATION_NAMES.search(stream.sample)):
            return  # an API's answer with an empty list and nothing else (the last page of a paginated search)
        names, by_column = columns_of(stream.sample, prefix)
        if not multiple and prefix == "item" and names is None and _array_of_objects(stream.sample):
            keys = []  # an array of objects: split, not parsed
        else:
            keys = _records_keys(stream.sample, prefix) if names is None else None
        if keys is not None:
            yield from _read_nested_items(name, stream, keys, multiple)  # split too, around a small envelope
            return
        batch = Batch()
        record_no = 0
        frame: list[list] = []  # the columns of a column-major answer, until all of them are read
        streams = prefix.removesuffix(".values.item") if prefix.endswith(".values.item") else None
        if streams is not None and _labels_first(stream.sample, streams, prefix):
            items = _with_stream_labels(ijson.parse(stream, multiple_values=multiple, use_float=True), streams)
        else:
            items = ijson.items(stream, prefix, multiple_values=multiple, use_float=True)
        try:
            for item in items:
                if by_column and names and isinstance(item, list):
                    frame.append(item)
                    if len(frame) == len(names):
                        for row in zip(*frame, strict=False):
                            record_no += 1
                            batch.add(record_no, json.dumps(dict(zip(names, row, strict=True)), ensure_ascii=False,
                                                            default=str), None)
                        frame = []
                    continue
                record_no += 1
                if names and isinstance(item, list) and len(item) == len(names):
                    item = dict(zip(names, item, strict=True))  # a row of a columnar result, named
                batch.add(record_no, json.dumps(_pairs_as_object(item), ensure_ascii=False), None)
                if len(batch) >= BATCH_RECORDS:
                    yield batch.table()
                    batch = Batch()
        except ijson.JSONError as e:
            if len(batch):
                yield batch.table()
            # yajl quotes the text around the error on the lines after the first: tokens, at times. Not shown.
            what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ReadError(
                f"{name}: invalid JSON after record {record_no} ({what}); the records before it were read"
            ) from e
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise ReadError(f"{name}: the file ends early or is damaged after record {record_no}: {e}") from e
        for column in frame:  # an incomplete frame: its columns as they are, for the quarantine
            record_no += 1
            batch.add(record_no, json.dumps(column, ensure_ascii=False, default=str), None)
        if len(batch):
            yield batch.table()

    return read


def _labels_first(sample: bytes, streams: str, prefix: str) -> bool:
    """True when the objects at `streams` (Loki's `data.result.item`) name their `stream` labels before the values
    and some stream in the sample has a user among them. (Only then are the values read with their labels: that
    costs half as much again as reading the values alone.)"""
    labels = f"{streams}.stream"
    try:
        for at, event, value in ijson.parse(io.BytesIO(sample), multiple_values=True):
            if at == labels and event == "map_key" and value.lower() in _USER_LABELS:
                return True
    except ijson.JSONError:
        pass
    return False


_USER_LABELS = frozenset(IDENTITY_KEYS)  # labels that name a user


def _with_stream_labels(events, streams: str) -> Iterator:
    """Loki's query answer, a value at a time: each [timestamp, line] with its stream's labels beside it,
    {"stream": {...}, "value": [...]}. The labels describe every line of the stream (Loki 3 puts structured
    metadata, a user for one, among them), but live outside the values. Built from the parser's events, so a file
    cut short still gives every value before the cut."""
    labels_at, value_at = f"{streams}.stream", f"{streams}.values.item"
    labels = None
    builder, target, depth = None, None, 0
    for at, event, value in events:
        if builder is None:
            if at == streams and event == "start_map":
                labels = None  # the next stream
                continue
            if at == labels_at and event == "start_map":
                target = "labels"
            elif at == value_at:
                target = "value"
                if event not in ("start_map", "start_array"):
                    yield {"stream": labels, "value": value} if labels else value
                    continue
            else:
                continue
            builder, depth = ObjectBuilder(), 0
        builder.event(event, value)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
        if depth == 0:
            if target == "labels":
                labels = builder.value
            else:
                yield {"stream": labels, "value": builder.value} if labels else builder.value
            builder = None


def _pairs_as_object(item):
    """A row written as [{"field": "@timestamp", "value": "..."}, ...] (CloudWatch Logs Insights) as an object."""
    if (
        isinstance(item, list)
        and item
        and all(isinstance(x, dict) and len(x) == 2 and "field" in x and "value" in x for x in item)
    ):
        return {str(x["field"]): x["value"] for x in item}
    return item


_XML_DECLARATION = re.compile(rb"<\?xml[^>]*\?>")


def _yaml_nodes(node, path: list[str]):
    """The composed YAML nodes at an ijson prefix's path (`events.item`), in document order."""
    if not path:
        yield node
        return
    step, rest = path[0], path[1:]
    if step == "item":
        for child in node.value if node.id == "sequence" else ():
            yield from _yaml_nodes(child, rest)
    elif node.id == "mapping":
        for key, child in node.value:
            if key.value == step:
                yield from _yaml_nodes(child, rest)


def _read_yaml(name: str, stream: BinaryIO) -> Iterator[pa.Table]:
    """YAML documents separated by `---` lines, one record each (numbered by the line its document starts on),
    read a document at a time. A document that does not parse is a record with its error, kept for the
    quarantine."""
    import yaml  # only YAML exports need it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline=None)
    batch = Batch()
    lines: list[str] = []
    start = 0

    def flush() -> None:
        if not any(ln.strip() for ln in lines):
            return
        doc = "".join(lines)
        try:
            node = yaml.compose(doc, Loader=loader)  # noqa: S506 - a safe loader
            value = loader(doc).construct_document(node) if node is not None else None
            whole = json.dumps(value, ensure_ascii=False, default=str)
        except yaml.YAMLError as e:
            batch.add(start, doc, f"invalid YAML: {str(e).splitlines()[0]}")
            return
        marked = isinstance(value, dict | list) and any(m in whole for m in NOTIFICATION_MARKERS)
        prefix = records_prefix(whole.encode()) if marked else ""
        if not prefix:
            batch.add(start, whole, None)  # the document is the record (gcloud)
            return
        # a document holding a list of records (the AWS CLI's `events:`): each is numbered by its own line
        items = ijson.items(io.BytesIO(whole.encode()), prefix)
        for item, item_node in zip(items, _yaml_nodes(node, prefix.split(".")), strict=False):
            batch.add(start + item_node.start_mark.line, json.dumps(item, ensure_ascii=False, default=str), None)

    try:
        for line_no, line in enumerate(text, 1):
            if line.rstrip() == "---":
                flush()
                lines, start = [], line_no + 1
                if len(batch) >= BATCH_RECORDS:
                    yield batch.table()
                    batch = Batch()
                continue
            if not lines:
                start = line_no
            lines.append(line)
        flush()
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise ReadError(f"{name}: the file ends early or is damaged after line {start}: {e}") from e
    if len(batch):
        yield batch.table()


# Longest record the multi-line reader gathers: past it, the lines that follow start records of their own.
MULTILINE_MAX_LINES = 5000


def _read_multiline(name: str, stream: BinaryIO) -> Iterator[pa.Table]:
    """Text whose records span lines (see `_spans_lines`): a record is a line that starts with a time and the
    lines after it that do not, joined, numbered by its first line."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline=None)
    batch = Batch()
    record: list[str] = []
    start = line_no = 0

    def flush() -> None:
        if record and any(ln.strip() for ln in record):
            batch.add(start, *_checked_text("".join(record)))

    try:
        for line_no, line in enumerate(text, 1):
            if _RUBY_MEMBER.match(line) and len(record) > 1 and record[-1].rstrip() == "{":
                # a Ruby hash printed over lines (Logstash's rubydebug) opens a record of its own: its "{" line
                # was taken for the end of the one before
                record.pop()
                flush()
                record, start = ["{\n"], line_no - 1
            # (a second notification never joins a record: a line, not indented, that names the type again starts
            # one; an indented one may repeat the same notification, as Logstash's `event.original` does)
            again = (line[:1] not in " \t" and _TYPE_NAME.search(line) is not None
                     and any(_TYPE_NAME.search(ln) for ln in record))
            if _RECORD_START.match(line) or not record or again or len(record) >= MULTILINE_MAX_LINES:
                flush()
                record, start = [line], line_no
                if len(batch) >= BATCH_RECORDS:
                    yield batch.table()
                    batch = Batch()
            else:
                record.append(line)
        flush()
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise ReadError(f"{name}: the file ends early or is damaged after line {line_no}: {e}") from e
    if len(batch):
        yield batch.table()


def _checked_text(text: str, what: str = "record") -> tuple[str, str | None]:
    """Text decoded with errors="surrogateescape", and an error when it held bytes that are not UTF-8 (they
    become U+FFFD)."""
    try:
        text.encode("utf-8")
        return text, None
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), f"invalid UTF-8 in the {what}"


def _read_aws_text(name: str, stream: BinaryIO) -> Iterator[pa.Table]:
    """`aws logs filter-log-events` / `get-log-events` with `--output text` (a common default in ~/.aws/config):
    one `EVENTS` line per log event, its fields tab-separated in alphabetical order (eventId, ingestionTime,
    logStreamName, message, timestamp; get-log-events has no eventId or logStreamName). The message is the field
    before the timestamp (tabs inside it are rejoined). `get-query-results` writes `RESULTS field value` lines
    instead, a result's fields one after another. Other lines (`SEARCHEDLOGSTREAMS`, `NEXTTOKEN`, the query's
    status, `STATISTICS`...) are the command's own metadata, not log records."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline=None)
    batch = Batch()
    line_no = 0
    row: dict[str, str] = {}  # get-query-results: a result's field/value lines, gathered
    row_start = 0
    try:
        for line_no, line in enumerate(text, 1):
            fields = line.rstrip("\r\n").split("\t")
            if fields[0] == "RESULTS" and len(fields) >= 3:
                # `aws logs get-query-results --output text`: a `RESULTS field value` line per field of a result;
                # a field seen again starts the next result (a field with no value is left out)
                if fields[1] in row:
                    batch.add(row_start, *_as_json(row, "result"))
                    row = {}
                if not row:
                    row_start = line_no
                row[fields[1]] = "\t".join(fields[2:])
                continue
            if fields[0] != "EVENTS":
                continue
            if len(fields) < 4:
                batch.add(line_no, line, None)  # not an event line after all: kept, for the quarantine
                continue
            if len(fields) >= 6:  # filter-log-events: EVENTS, eventId, ingestionTime, logStreamName, ...
                record = {"ingestionTime": fields[2], "logStreamName": fields[3], "message": "\t".join(fields[4:-1])}
            else:  # get-log-events: EVENTS, ingestionTime, message, timestamp
                record = {"ingestionTime": fields[1], "message": "\t".join(fields[2:-1])}
            record["timestamp"] = fields[-1]
            batch.add(line_no, *_as_json(record, "line"))
            if len(batch) >= BATCH_RECORDS:
                yield batch.table()
                batch = Batch()
        if row:
            batch.add(row_start, *_as_json(row, "result"))
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise ReadError(f"{name}: the file ends early or is damaged after line {line_no}: {e}") from e
    if len(batch):
        yield batch.table()


def _read_journal_export(name: str, stream: BinaryIO) -> Iterator[pa.Table]:
    """`journalctl -o export`, the journal's own serialization (what systemd-journal-remote takes): entries
    separated by an empty line, a field per line as `KEY=value`, or, when the value holds a newline or binary
    data, `KEY` alone on its line, then the value's length as a 64-bit little-endian integer, the value and a
    newline. Each entry becomes the record `journalctl -o json` would write for it (`__REALTIME_TIMESTAMP`,
    `MESSAGE`, ...), numbered by the line it starts on (the file's lines, as `sed -n` counts them). An entry cut
    off inside a binary field is kept with the error, for the quarantine."""
    raw = io.BufferedReader(stream, 1 << 20) if isinstance(stream, io.RawIOBase) else stream
    batch = Batch()
    entry: dict[str, str] = {}
    line_no = start = 0
    bad: str | None = None

    def flush() -> None:
        nonlocal entry, bad
        if entry or bad:
            text, err = _as_json(entry, "entry")
            batch.add(start, text, bad or err)
        entry, bad = {}, None

    try:
        while line := raw.readline():
            line_no += 1
            field = line.rstrip(b"\r\n")
            if not field:
                flush()
                if len(batch) >= BATCH_RECORDS:
                    yield batch.table()
                    batch = Batch()
                continue
            if not entry and bad is None:
                start = line_no
            key, eq, value = field.partition(b"=")
            if not eq:  # a binary field: its length, the value, a newline
                size = raw.read(8)
                value = raw.read(int.from_bytes(size, "little")) if len(size) == 8 else b""
                if len(size) < 8 or len(value) < int.from_bytes(size, "little") or raw.read(1) != b"\n":
                    bad = f"a binary field ({key.decode('utf-8', 'replace')}) is cut off (truncated?)"
                line_no += (size + value).count(b"\n") + 1  # the value's lines, and the line it ends
            # bytes that are not UTF-8 in the message are an error, as in any export; in other fields (binary
            # by nature, some of them) they do not matter
            entry[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape" if key == b"MESSAGE" else "replace")
        flush()
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise ReadError(f"{name}: the file ends early or is damaged after line {line_no}: {e}") from e
    if len(batch):
        yield batch.table()


def _read_splunk_xml(name: str, stream: BinaryIO) -> Iterator[pa.Table]:
    """Splunk XML results: `<results><result offset=..><field k=..><value><text>..</text></value>` (several
    `<value>`s for a multi-valued field) or `<v xml:space='preserve'>` for `_raw` (which may hold `<sg>`
    highlighting), one record per `<result>`. Splunk's export endpoint streams several `<results>` documents
    back to back: they are read as one, inside a wrapper element. Each `<result>` is dropped once read."""
    parser = ElementTree.XMLPullParser(events=("start", "end"))
    parser.feed(b"<tokentrail-xml>")
    batch = Batch()
    record_no = 0
    parents: list[ElementTree.Element] = []
    tail = b""
    first = True
    try:
        while True:
            chunk = stream.read(CHUNK_BYTES)
            if first and chunk.startswith(codecs.BOM_UTF8):
                chunk = chunk[3:]
            first = False
            data = tail + chunk
            # keep a possibly cut "<?xml ... ?>" for the next round; drop whole ones (one per document)
            cut = data.rfind(b"<?") if chunk else -1
            if cut >= 0 and data.find(b"?>", cut) < 0:
                data, tail = data[:cut], data[cut:]
            else:
                tail = b""
            parser.feed(_XML_DECLARATION.sub(b"", data))
            if not chunk:
                parser.feed(b"</tokentrail-xml>")
            for event, elem in parser.read_events():
                if event == "start":
                    parents.append(elem)
                    continue
                parents.pop()
                if elem.tag != "result":
                    continue
                record_no += 1
                record: dict[str, object] = {}
                for field in elem.iter("field"):
                    values = [v.text or "" for v in field.iter("text")]
                    values += ["".join(v.itertext()) for v in field.iter("v")]
                    record[field.get("k", "")] = values[0] if len(values) == 1 else values
                batch.add(record_no, json.dumps(record, ensure_ascii=False), None)
                if parents:
                    parents[-1].remove(elem)
                if len(batch) >= BATCH_RECORDS:
                    yield batch.table()
                    batch = Batch()
            if not chunk:
                break
    except ElementTree.ParseError as e:
        if len(batch):
            yield batch.table()
        raise ReadError(f"{name}: invalid XML after result {record_no} ({e}); the results before it were read") from e
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise ReadError(f"{name}: the file ends early or is damaged after result {record_no}: {e}") from e
    if len(batch):
        yield batch.table()


_READERS: dict[str, Callable[[str, BinaryIO], Iterator[pa.Table]]] = {
    "jsonl": _read_lines,
    "text": _read_lines,
    "csv": _read_csv(","),
    "csv;": _read_csv(";"),
    "tsv": _read_csv("\t"),
    "json-array": _read_json_document(multiple=False),
    "json-object": _read_json_document(multiple=False),
    "json-stream": _read_json_document(multiple=True),
    "splunk-xml": _read_splunk_xml,
    "yaml": _read_yaml,
    "aws-text": _read_aws_text,
    "text-multiline": _read_multiline,
    "journal-export": _read_journal_export,
}


# -- stream plumbing -----------------------------------------------------------------------------------------


def _cut_short(stream: BinaryIO) -> bool:
    """Whether `stream` is a gzip file that ended before its end-of-stream marker (see _Gunzip)."""
    gunzip = getattr(stream, "raw", None)
    return isinstance(gunzip, _Gunzip) and gunzip.cut_short


class _Gunzip(io.RawIOBase):
    """gzip, member after member (`cat a.gz b.gz` is one gzip file), giving out every byte it can decompress. A
    file cut short (an interrupted copy or upload) ends at the cut instead of failing the read that reaches it, as
    `gzip.GzipFile` does, which lost up to a whole buffer before the cut (all of a small file); `cut_short` tells.
    Each call decompresses at most the bytes asked for, so a small file that inflates enormously cannot take the
    memory at once. A damaged stream (a bad CRC, garbage) still raises zlib.error."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._started = False  # inside a member
        self.cut_short = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        want = len(b)
        while True:
            z = self._inflate
            if z.unconsumed_tail:
                out = z.decompress(z.unconsumed_tail, want)
            elif z.eof:  # a member ended: another may follow (zero padding between them is allowed)
                rest = z.unused_data.lstrip(b"\x00") or self.raw.read(1 << 20).lstrip(b"\x00")
                if not rest:
                    return 0
                self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out = self._inflate.decompress(rest, want)
            else:
                chunk = self.raw.read(1 << 20)
                if not chunk:
                    out = z.decompress(b"", want)  # output zlib may still hold back
                    if not out and not z.eof:
                        self.cut_short = self._started
                        return 0
                else:
                    self._started = True
                    out = z.decompress(chunk, want)
            if out:
                b[: len(out)] = out
                return len(out)


class _Counting(io.RawIOBase):
    """Reports how far the underlying (compressed) file has been read, for progress bars."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None] | None):
        self.raw = raw
        self.on_bytes = on_bytes
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.raw.readinto(b)
        self.pos += n or 0
        if self.on_bytes:
            self.on_bytes(self.pos)
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.pos += len(data)
        if self.on_bytes:
            self.on_bytes(self.pos)
        return data


class _Seekless(io.RawIOBase):
    def __init__(self, f):
        self.f = f

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.f.read(size)

    def readinto(self, b) -> int:
        data = self.f.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Transcoded(io.RawIOBase):
    """UTF-8 bytes of a stream in another encoding, decoded incrementally (bounded memory)."""

    def __init__(self, stream: BinaryIO, encoding: str):
        self.stream = stream
        self.decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self.buffer = b""
        self.done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self.done and (size < 0 or len(self.buffer) < size):
            chunk = self.stream.read(1 << 20)
            self.done = not chunk
            self.buffer += self.decoder.decode(chunk, final=self.done).encode("utf-8")
        if size < 0:
            size = len(self.buffer)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Rewound(io.RawIOBase):
    """The sample already read, then the rest of the stream: sniffing never needs a seekable file."""

    def __init__(self, sample: bytes, stream: BinaryIO):
        self.sample = sample
        self._pending = sample
        self.stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._pending:
            if size < 0 or size >= len(self._pending):
                data, self._pending = self._pending, b""
                if size < 0:
                    return data + self.stream.read()
                return data
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        return self.stream.read(size)

    def readinto(self, b) -> int:
        if not self._pending:  # the bulk: straight into the caller's buffer, no intermediate bytes object
            return self.stream.readinto(b)
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)
