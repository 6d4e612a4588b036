"""One ingest: read every input, stage it, merge it, rebuild lineage, commit. All or nothing.

Flow for each file: `formats.open_sources` streams record batches; a `locate.Layout` learned from the first
batch locates the bulk in SQL; the rest goes through `locate.locate`; `normalize` validates and fingerprints;
rows land in a transaction-local stage table. Then one merge deduplicates against what the store already
holds (deliveries by payload + time, quarantine by record), folds deliveries into events, and
`lineage.rebuild` recomputes the chains. The whole run is one DuckDB transaction: a killed ingest leaves the
database as it was.

A file that is not a log export is reported (with its name) and skipped; the other files still load.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import itertools
import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from ingest import lineage
from ingest.formats import ReadError, open_sources
from ingest.locate import NO_NOTIFICATION, NOTIFICATION_FIELDS, Layout, learn_layout, locate
from ingest.normalize import STAGE_COLUMNS, install_macros, normalize_sql
from ingest.store import DEFAULT_ACCESS_TTL_S, Store, set_meta


@dataclass
class StagedInput:
    """Rows that were already normalised elsewhere, by the same `ingest.normalize` SQL: the live receiver's
    spool (`live.spool`). `batches` are Arrow tables with the stage's columns except `source_id`; they join the
    run like any file (same merge, same lineage, same transaction)."""

    name: str
    batches: Iterable[pa.Table]
    format: str = "live receiver"


# (name shown to the user, binary file object) for uploads; a path for files on disk; or rows already staged.
Input = str | os.PathLike | tuple[str, BinaryIO] | StagedInput
Progress = Callable[[str, int, int], None]  # (what, done_bytes, total_bytes)

_IDENTITY_CODE_COLUMNS = ("auth_code", "code")
# (a mapping exported from a user directory often names its users by email only)
_IDENTITY_USER_COLUMNS = ("user_id", "userid", "user", "sub", "identity", "username", "user_name", "alias", "email")


@dataclass
class FileReport:
    path: str
    format: str | None = None
    records: int = 0
    new_deliveries: int = 0
    duplicate_deliveries: int = 0  # already stored, or repeated inside this run
    rejected: int = 0
    untimed: int = 0
    unreadable_times: int = 0
    zoneless_times: int = 0  # read as UTC, or in the zone the ingest was given
    error: str | None = None
    note: str | None = None  # e.g. why an archive member was skipped
    rejected_reasons: dict[str, int] = field(default_factory=dict)  # reason -> records, most frequent first


def rejected_reasons(report: FileReport, most: int = 3) -> str:
    """The rejected records of a file, by reason, most frequent first: '3: no Tyk notification found ...; 1: ...'."""
    items = list(report.rejected_reasons.items())
    parts = [
        f"{n:,}: {reason}" + (" (other log lines?)" if reason == NO_NOTIFICATION else "")
        for reason, n in items[:most]
    ]
    if len(items) > most:
        rest = sum(n for _, n in items[most:])
        others = len(items) - most
        parts.append(f"{rest:,} for {others} other reason{'s' if others > 1 else ''}")
    return "; ".join(parts)


@dataclass
class IdentityReport:
    path: str
    rows: int = 0
    mapped: int = 0
    rejected_lines: list[int] = field(default_factory=list)
    error: str | None = None
    encoding: str = "utf-8"  # windows-1252 for a spreadsheet's CSV that is not UTF-8


@dataclass
class IngestReport:
    run_id: int
    files: list[FileReport]
    identities: IdentityReport | None
    seconds: float
    phases: dict[str, float]
    timezone: str = "UTC"  # the zone times without one were read in

    def to_dict(self) -> dict:
        return asdict(self)


def ingest(
    store: Store,
    inputs: Iterable[Input],
    *,
    identities: Input | None = None,
    progress: Progress | None = None,
    access_ttl_s: int | None = None,
    before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    incremental: bool = False,
    timezone: str | None = None,
) -> IngestReport:
    """Load `inputs` in one transaction. Times the exports wrote without a zone are read in `timezone` (an IANA
    name, checked with `check_timezone`; default UTC). `before_commit(cur)` runs last inside the transaction (the
    live follower moves its spool cursor there, so the cursor and the data it covers commit together).
    `incremental` recomputes only the chains the new events can affect (`lineage.update`) instead of all of
    them; an identity mapping always rebuilds everything, since it relabels chains that no new event touches."""
    inputs = list(inputs)
    started = time.perf_counter()
    phases: dict[str, float] = {}
    total = sum(_size(i) for i in inputs) or 1
    done_before = 0
    reports: list[FileReport] = []
    sources: list[tuple[int, str, FileReport]] = []
    recorded: set[int] = set()  # sources of deliveries a receiver recorded one by one (no re-reads in them)
    zone = check_timezone(timezone)
    with store.transaction() as cur:
        install_macros(cur)
        if zone == "UTC":
            cur.execute("RESET VARIABLE tt_tz")
        else:
            cur.execute("SET VARIABLE tt_tz = ?", [zone])
        run_id = cur.execute("SELECT coalesce(max(run_id), 0) + 1 FROM ingest_files").fetchall()[0][0]
        cur.execute(f"CREATE OR REPLACE TEMP TABLE stage ({STAGE_COLUMNS})")
        t0 = time.perf_counter()
        for item in inputs:
            if isinstance(item, StagedInput):
                report = FileReport(item.name, item.format)
                reports.append(report)
                sources.append((len(sources) + 1, item.name, report))
                recorded.add(len(sources))
                _stage_prepared(cur, len(sources), item.batches, report)
                continue
            _set_time_reference(cur, item)
            try:
                name, fileobj, owned = _open(item)
            except OSError as e:
                reports.append(FileReport(os.fspath(item), error=f"{os.fspath(item)}: cannot open: {e.strerror or e}"))
                continue
            try:
                size = _size(item)
                # The reader thread only records how far it got; progress is reported from this thread
                # (callers such as Streamlit must not be called from elsewhere).
                position = [0]

                def on_batch(_base=done_before, _name=name, _pos=position) -> None:
                    if progress:
                        progress(f"reading {Path(_name).name}", _base + _pos[0], total)

                try:
                    for source in open_sources(name, fileobj, lambda n, _p=position: _p.__setitem__(0, n)):
                        report = FileReport(source.name, source.format, note=source.note)
                        reports.append(report)
                        source_id = len(sources) + 1
                        sources.append((source_id, source.name, report))
                        try:
                            _stage_source(cur, store.key, source_id, _grouped(_prefetch(source.batches)), report,
                                          on_batch)
                        except ReadError as e:
                            report.error = str(e)
                except ReadError as e:
                    reports.append(FileReport(name, error=str(e)))
                except OSError as e:
                    reports.append(FileReport(name, error=f"{name}: cannot read: {e.strerror or e}"))
            finally:
                if owned:
                    fileobj.close()
            done_before += size
        cur.execute("RESET VARIABLE tt_time_ref")
        cur.execute("RESET VARIABLE tt_tz")
        phases["read+stage"] = time.perf_counter() - t0

        id_report = _stage_identities(cur, store.key, identities) if identities is not None else None

        if progress:
            progress("merging", total, total)
        t0 = time.perf_counter()
        _merge(cur, run_id, sources, recorded, keep_changed=incremental)
        phases["merge"] = time.perf_counter() - t0

        if progress:
            progress("linking chains", total, total)
        t0 = time.perf_counter()
        ttl = access_ttl_s or int(store.get_meta("access_ttl_s", str(DEFAULT_ACCESS_TTL_S)))
        if incremental and identities is None and not _ttl_changed(store, ttl):
            lineage.update(cur, access_ttl_s=ttl)
        else:
            lineage.rebuild(cur, access_ttl_s=ttl)
        cur.execute("DROP TABLE IF EXISTS tt_changed")
        set_meta(cur, "access_ttl_s", ttl)
        phases["lineage"] = time.perf_counter() - t0
        for _sid, _name, r in sources:
            cur.execute(
                "INSERT INTO ingest_files VALUES (?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, r.path, r.format, r.records, r.new_deliveries, r.duplicate_deliveries, r.rejected,
                 r.untimed, r.error],
            )
        for r in reports:
            if r.format is None:
                cur.execute(
                    "INSERT INTO ingest_files VALUES (?, now()::TIMESTAMP, ?, NULL, 0, 0, 0, 0, 0, ?)",
                    [run_id, r.path, r.error],
                )
        if before_commit:
            before_commit(cur)
    return IngestReport(run_id, reports, id_report, time.perf_counter() - started, phases, zone)


def timezones() -> list[str]:
    """The IANA region/city zone names times can be read in, UTC first (for a picker; `check_timezone` takes more)."""
    with duckdb.connect() as con:
        names = con.execute(
            "SELECT name FROM pg_timezone_names() WHERE regexp_full_match(name, '(Africa|America|Antarctica|Asia|"
            "Atlantic|Australia|Europe|Indian|Pacific)/[A-Za-z_/-]+') ORDER BY name"
        ).fetchall()
    return ["UTC", *(n for (n,) in names)]


def check_timezone(name: str | None) -> str:
    """The zone's IANA name as DuckDB spells it (case does not matter); ValueError for an unknown zone."""
    if name is None or name.strip().upper() in ("", "UTC", "Z", "GMT", "ETC/UTC"):
        return "UTC"
    with duckdb.connect() as con:
        row = con.execute(
            "SELECT name FROM pg_timezone_names() WHERE lower(name) = lower(?) ORDER BY name = ? DESC LIMIT 1",
            [name.strip(), name.strip()],
        ).fetchall()
    if not row:
        raise ValueError(f"unknown time zone {name!r}: give an IANA name such as Europe/Berlin or America/New_York")
    return row[0][0]


def _ttl_changed(store: Store, ttl: int) -> bool:
    return store.get_meta("access_ttl_s") not in (None, str(ttl))


# -- staging -------------------------------------------------------------------------------------------------


def _stage_source(cur, key: str, source_id: int, batches, report: FileReport, on_batch=None) -> None:
    params = {"key": key, "source_id": source_id}
    try:
        _stage_batches(cur, source_id, batches, report, on_batch, params)
    except ReadError:  # a file that breaks part-way keeps the counts of what it staged before the break
        _count_staged(cur, source_id, report)
        raise
    _count_staged(cur, source_id, report)


def _stage_batches(cur, source_id: int, batches, report: FileReport, on_batch, params: dict) -> None:
    layout: Layout | None = None
    learned = False
    for table in batches:
        if not learned:
            sample = table.filter(pa.compute.is_null(table.column("err"))).column("raw").slice(0, 500)
            layout, learned = learn_layout(sample.to_pylist()), True
        # DuckDB's Arrow scan hands out one record batch per thread: slices (no copy) let every thread work
        table = pa.Table.from_batches(table.to_batches(max_chunksize=SCAN_CHUNK_ROWS), table.schema)
        if layout is not None:
            _on_batch(cur, f"INSERT INTO stage {normalize_sql(_fast_relation(layout))}", params, table)
            # Only this batch's rows (its record numbers; zone maps skip the rest of the stage): how many the
            # layout took. Usually all: nothing more to do.
            numbers = table.column("record_no")
            where = {"sid": source_id, "lo": numbers[0].as_py(), "hi": numbers[-1].as_py()}
            taken = cur.execute(
                "SELECT count(*) FROM stage WHERE source_id = $sid AND record_no BETWEEN $lo AND $hi", where
            ).fetchall()[0][0]
            rest = None
            if taken < len(table):
                # The others are picked here, in Arrow: a DuckDB query result holding their raw text could be
                # written to DuckDB's temporary directory (ingest.normalize).
                took = cur.sql(
                    "SELECT record_no FROM stage WHERE source_id = $sid AND record_no BETWEEN $lo AND $hi", params=where
                ).to_arrow_table().column(0).combine_chunks()
                rest = table.filter(pa.compute.invert(pa.compute.is_in(numbers, value_set=took)))
        else:
            rest = table
        if rest is not None and len(rest):
            slow = locate_rows(zip(*(rest.column(c).to_pylist() for c in ("record_no", "raw", "err")), strict=True))
            _on_slow(cur, f"INSERT INTO stage {normalize_sql(SLOW_RELATION)}", params, slow)
        report.records += len(table)
        if on_batch:
            on_batch()


def _count_staged(cur, source_id: int, report: FileReport) -> None:
    row = cur.execute(
        "SELECT count(*) FILTER (reason IS NOT NULL), count(*) FILTER (reason IS NULL AND received_at IS NULL), "
        "count(*) FILTER (bad_time), count(*) FILTER (zoneless) FROM stage WHERE source_id = ?",
        [source_id],
    ).fetchall()[0]
    report.rejected, report.untimed, report.unreadable_times, report.zoneless_times = row
    if report.rejected:
        report.rejected_reasons = dict(cur.execute(
            "SELECT reason, count(*) AS n FROM stage WHERE source_id = ? AND reason IS NOT NULL "
            "GROUP BY reason ORDER BY n DESC, reason",
            [source_id],
        ).fetchall())


def _stage_prepared(cur, source_id: int, batches: Iterable[pa.Table], report: FileReport) -> None:
    for table in batches:
        _on_prepared(cur, _PREPARED_SQL, {"sid": source_id}, table)
        report.records += len(table)
    _count_staged(cur, source_id, report)


SCAN_CHUNK_ROWS = 8192

# The batch reaches SQL through DuckDB's replacement scan of the calling frame's local variables: the
# parameter `tt_batch` (or `tt_slow`) below. `cur.register()` would work too, but inside a transaction the
# view it creates lives on in the catalog until the commit and keeps every batch's Arrow table (the raw text,
# ~16 MB a batch) alive with it: a 5M-line ingest would hold the whole input in memory.
def _on_batch(cur, sql: str, params: dict, tt_batch: pa.Table):  # noqa: ARG001 - read by the replacement scan
    return cur.execute(sql, params)


def _on_slow(cur, sql: str, params: dict, tt_slow: pa.Table):  # noqa: ARG001 - read by the replacement scan
    return cur.execute(sql, params)


def _on_prepared(cur, sql: str, params: dict, tt_prepared: pa.Table):  # noqa: ARG001 - read by the replacement scan
    return cur.execute(sql, params)


def _fast_relation(layout: Layout) -> str:
    e = layout.sql("raw")
    need_time = "" if layout.time is None else " AND time_raw IS NOT NULL"
    return f"""(
        SELECT record_no, raw, err, NULL::VARCHAR AS reason, v, time_raw, identity_raw
        FROM (
            SELECT record_no, raw, err, try({e['v']}) AS v,
                   try({e['time_raw']}) AS time_raw, try({e['identity_raw']}) AS identity_raw
            FROM (SELECT record_no, raw, err, try({e['all']}) AS tt_all FROM tt_batch WHERE err IS NULL)
        )
        -- the layout fits when it finds a notification_type, or at least two token fields
        WHERE (v[1] IS NOT NULL OR len(list_filter(v[2:5], lambda x: x IS NOT NULL)) >= 2){need_time}
    ) AS fast"""


SLOW_RELATION = f"""(
    SELECT record_no, raw, err, reason, time_raw, identity_raw,
           json_extract(notif, [{", ".join("'$." + f + "'" for f in NOTIFICATION_FIELDS)}]) AS v
    FROM tt_slow
) AS slow"""


def locate_rows(rows) -> pa.Table:
    """(record_no, raw, err) rows -> the columns of `SLOW_RELATION`, located one by one in Python."""
    cols: dict[str, list] = {k: [] for k in ("record_no", "raw", "err", "reason", "notif", "time_raw", "identity_raw")}
    for record_no, raw, err in rows:
        found = locate(raw) if err is None else None
        cols["record_no"].append(record_no)
        cols["raw"].append(raw)
        cols["err"].append(err)
        if found is None:
            cols["reason"].append(None)
            cols["notif"].append(None)
            cols["time_raw"].append(None)
            cols["identity_raw"].append(None)
            continue
        cols["reason"].append(found.reason)
        cols["notif"].append(None if found.notification is None else json.dumps(found.notification))
        cols["time_raw"].append(found.time)
        cols["identity_raw"].append(found.identity)
    return pa.table(
        {
            "record_no": pa.array(cols["record_no"], pa.int64()),
            **{k: pa.array(cols[k], pa.string()) for k in ("raw", "err", "reason", "notif", "time_raw", "identity_raw")},
        }
    )


# Prepared rows carry fingerprints as text (`ingest.fingerprint.text`; a spool written before schema 2: base64).
# Their ids are recomputed from the fingerprints, so a spool line of either age gets the ids the store uses.
_PREPARED_SQL = """
INSERT INTO stage BY NAME
WITH p AS (
    SELECT * EXCLUDE (event_id, delivery_id) REPLACE (
        tt_fp_of_text(quarantine_id) AS quarantine_id, tt_fp_of_text(auth_code_fp) AS auth_code_fp,
        tt_fp_of_text(access_token_fp) AS access_token_fp, tt_fp_of_text(refresh_token_fp) AS refresh_token_fp,
        tt_fp_of_text(old_refresh_token_fp) AS old_refresh_token_fp)
    FROM tt_prepared
), q AS (
    SELECT *, tt_event_id(notification_type, auth_code_fp, access_token_fp, refresh_token_fp, old_refresh_token_fp)
                  AS event_id
    FROM p
)
SELECT $sid::INTEGER AS source_id, *, tt_delivery_id(event_id, received_at) AS delivery_id, false AS bad_time FROM q
"""


def _identity_text(data: bytes, report: IdentityReport) -> str:
    """An identity mapping's text. Spreadsheets save CSV in the system's code page (Excel on Windows:
    Windows-1252, `jürgen` as one byte per letter), not UTF-8: a file that is not UTF-8 is read as that, and
    the report says so; UTF-16 with its byte order mark (Excel's "Unicode text") is read as such."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        report.encoding = "utf-16"
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        report.encoding = "windows-1252"
        return data.decode("cp1252", errors="replace")


def _stage_identities(cur, key: str, item: Input) -> IdentityReport:
    name, fileobj, owned = _open(item)
    report = IdentityReport(name)
    cur.execute("CREATE OR REPLACE TEMP TABLE stage_identities (auth_code_fp UHUGEINT, identity VARCHAR, line BIGINT)")
    try:
        text = io.StringIO(_identity_text(fileobj.read(), report), newline="")
        header, reader, lines_before = _identity_header(text)
        code_col = next((header.index(c) for c in _IDENTITY_CODE_COLUMNS if c in header), None)
        user_col = next((header.index(c) for c in _IDENTITY_USER_COLUMNS if c in header), None)
        if code_col is None or user_col is None:
            report.error = (
                f"{name}: an identity mapping needs a header row with an auth-code column "
                f"({' or '.join(_IDENTITY_CODE_COLUMNS)}) and a user column ({', '.join(_IDENTITY_USER_COLUMNS)}); "
                f"found: {', '.join(header) or 'no header'}"
            )
            return report
        codes, users, lines = [], [], []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # a blank line (spreadsheets save a few at the end): not a row
            report.rows += 1
            code = row[code_col].strip() if len(row) > code_col else ""
            user = row[user_col].strip() if len(row) > user_col else ""
            if not code or not user:
                report.rejected_lines.append(lines_before + reader.line_num)
                continue
            codes.append(code)
            users.append(user)
            lines.append(lines_before + reader.line_num)
        cur.register("tt_ids", pa.table({"code": pa.array(codes, pa.string()), "identity": pa.array(users, pa.string()),
                                         "line": pa.array(lines, pa.int64())}))
        cur.execute(
            "INSERT INTO stage_identities SELECT tt_fp($key, code), identity, line FROM tt_ids", {"key": key}
        )
        cur.unregister("tt_ids")
        report.mapped = len(codes)
        # A later mapping for the same auth code replaces the earlier one.
        cur.execute(
            "DELETE FROM identity_map WHERE auth_code_fp IN (SELECT auth_code_fp FROM stage_identities)"
        )
        cur.execute(
            # the file's later row for a code wins, as a later file's does
            "INSERT INTO identity_map SELECT auth_code_fp, arg_max(identity, line), ? FROM stage_identities "
            "GROUP BY auth_code_fp",
            [name],
        )
    except (OSError, UnicodeError, csv.Error) as e:
        report.error = f"{name}: cannot read the identity mapping: {e}"
    finally:
        cur.execute("DROP TABLE IF EXISTS stage_identities")
        if owned:
            fileobj.close()
    return report


def _identity_header(text) -> tuple[list[str], Iterator[list[str]], int]:
    """The header of an identity mapping (names lower-cased, spaces and hyphens as underscores: `Auth Code`,
    `User-ID`), a reader of the rows after it, and how many lines came before them. The delimiter is the one
    that splits the header into a code and a user column: comma, or semicolon (Excel in many locales), tab, pipe;
    Excel's `sep=;` first line says it outright. PowerShell 5's `#TYPE ...` line before the header is skipped."""
    first = text.readline()
    lines_before = 1
    if first.startswith("#TYPE "):  # PowerShell 5's Export-Csv names the object type first
        first, lines_before = text.readline(), 2
    hint = first.strip().lower()
    if len(hint) == 5 and hint.startswith("sep="):
        delimiters, first = (first.strip()[4],), text.readline()
        lines_before += 1
    else:
        delimiters = (",", ";", "\t", "|")

    def names(delimiter: str) -> list[str]:
        cells = next(csv.reader([first], delimiter=delimiter), [])
        return [re.sub(r"[\s-]+", "_", c.strip().lower()) for c in cells]

    def fits(header: list[str]) -> bool:
        return any(c in header for c in _IDENTITY_CODE_COLUMNS) and any(c in header for c in _IDENTITY_USER_COLUMNS)

    delimiter = next((d for d in delimiters if fits(names(d))), delimiters[0])
    return names(delimiter), csv.reader(text, delimiter=delimiter), lines_before


# -- merge ---------------------------------------------------------------------------------------------------

# Two rows of one payload this close in time are one delivery read twice; Tyk retries after 10 s at the soonest.
SAME_DELIVERY_S = 5
# Two rows of one payload in one export this far apart are two deliveries (Tyk's retries: 10 s at the soonest,
# less a second for an export that keeps whole seconds).
SAME_SOURCE_RETRY_S = 8
# Two exports of one receiver's log can stamp its records with different clocks: one with the receiver's time,
# another with a platform's ingest time, seconds later when its shipper lags. Such a lag shows in the events each
# export holds once (a delivery Tyk made once, as each export saw it): the median of their time differences.
# An export whose lag against the export holding the most such events is steady (90% of the differences within
# CLOCK_SPREAD_S) and at least CLOCK_OFFSET_MIN_S is shifted back by it before copies are grouped, so a lag near
# or above SAME_DELIVERY_S no longer parts one delivery into two. Only the grouping sees the shift: every row
# keeps its own time. At least CLOCK_PAIRS_MIN such events are needed to trust a lag.
CLOCK_OFFSET_MIN_S = 1
CLOCK_SPREAD_S = 2
CLOCK_PAIRS_MIN = 5

# The lag of each export (its source name) behind the reference export, in microseconds, over `tt_rows`. A
# receiver's recorded rows are exact: neither measured nor shifted.
_CLOCK_OFFSETS = f"""
CREATE OR REPLACE TEMP TABLE tt_offsets AS
WITH one AS (
    SELECT event_id, source, any_value(received_at) AS t FROM tt_rows
    WHERE received_at IS NOT NULL AND NOT recorded
    GROUP BY event_id, source HAVING count(*) = 1
), ref AS (
    SELECT source FROM one GROUP BY source ORDER BY count(*) DESC, source LIMIT 1
), lag AS (
    SELECT o.source, date_diff('microsecond', r.t, o.t) AS d
    FROM one o JOIN one r USING (event_id)
    WHERE r.source = (SELECT source FROM ref) AND o.source <> r.source
)
SELECT source, median(d)::BIGINT AS shift FROM lag GROUP BY source
HAVING count(*) >= {CLOCK_PAIRS_MIN} AND abs(median(d)) >= {CLOCK_OFFSET_MIN_S * 1_000_000}
   AND quantile_cont(d, 0.95) - quantile_cont(d, 0.05) <= {CLOCK_SPREAD_S * 1_000_000}
"""


def _pos(alias: str = "") -> str:
    """A stage row's place in the run (its source, then its record number): the files' order, as one BIGINT."""
    return f"{alias}source_id::BIGINT * 1099511627776 + {alias}record_no"


def _merge(cur, run_id: int, sources: list[tuple[int, str, FileReport]], recorded: Collection[int] = (), *,
           keep_changed: bool = False) -> None:
    """Fold the stage into the store: new deliveries, their events, the quarantine. One pass each. The
    `recorded` sources hold deliveries as a receiver recorded them, each one once: they are told apart by their
    exact time (see SAME_DELIVERY_S)."""
    cur.execute("CREATE OR REPLACE TEMP TABLE tt_sources (source_id INTEGER, source VARCHAR, recorded BOOLEAN)")
    if sources:
        cur.executemany("INSERT INTO tt_sources VALUES (?, ?, ?)", [(sid, name, sid in recorded)
                                                                    for sid, name, _ in sources])
    known = cur.execute("SELECT EXISTS (SELECT 1 FROM deliveries)").fetchall()[0][0]
    # Rows that are a stored delivery exactly (the same payload at the same time: a file read again) repeat it,
    # whatever else is read: set aside at once, with one join on the delivery id.
    cur.execute(
        f"CREATE OR REPLACE TEMP TABLE tt_exact AS SELECT {_pos()} AS pos "
        "FROM stage WHERE reason IS NULL "
        + ("AND delivery_id IN (SELECT delivery_id FROM deliveries)" if known else "AND false")
    )
    exact = f"AND {_pos()} NOT IN (SELECT pos FROM tt_exact)" if known else ""
    # Events with more than one other row in the stage (Tyk's retries, overlapping exports: a few percent), or
    # with deliveries stored already (an export overlapping an earlier one). Only their rows need grouping below;
    # a delivery can only repeat inside one of them.
    stored_events = f"""
        UNION SELECT DISTINCT event_id FROM stage SEMI JOIN deliveries USING (event_id) WHERE reason IS NULL {exact}"""
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE tt_multi AS "
        f"SELECT event_id FROM stage WHERE reason IS NULL {exact} GROUP BY event_id HAVING count(*) > 1 "
        + (stored_events if known else "")
    )
    # New deliveries: the first occurrence of a delivery the store does not hold yet. Read from a log export, a
    # delivery is a payload at a time, up to SAME_DELIVERY_S: two exports of one record can carry its time at
    # different precisions (Kibana's CSV ms, Elasticsearch us) or from different clocks (two platforms' ingest
    # times of a bare body), while Tyk's own retries of a payload come at least 10 s apart. (What the live
    # receiver recorded is exact: each of its rows is one POST.) The rows of each event above, the stored
    # deliveries among them, sorted by time: rows closer than SAME_DELIVERY_S to the one before form a cluster,
    # one delivery. It is new unless a stored delivery is in it, and keeps its first row in the files' order.
    # (Tyk's retries copied by several exports are lined up by `_split_clusters` instead.) Untimed rows of an
    # event are one delivery. Stored or not, a row counts the same: the result does not depend on which export
    # came first, or in which run.
    stored_rows = """
        UNION ALL
        SELECT d.event_id, d.received_at, d.source, false, NULL::BIGINT
        FROM deliveries d SEMI JOIN tt_multi USING (event_id)
        UNION ALL
        SELECT c.event_id, c.received_at, c.source, false, NULL::BIGINT
        FROM delivery_copies c SEMI JOIN tt_multi USING (event_id)"""
    cur.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE tt_rows AS
        SELECT event_id, received_at, source, recorded, {_pos()} AS pos
        FROM stage SEMI JOIN tt_multi USING (event_id) JOIN tt_sources USING (source_id)
        WHERE reason IS NULL {exact}
        {stored_rows if known else ""}
        """
    )
    cur.execute(_CLOCK_OFFSETS)
    # t: the time on the reference export's clock, for grouping only
    cur.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE tt_clusters AS
        WITH rows AS (
            SELECT r.*, r.received_at - to_microseconds(CASE WHEN r.recorded THEN 0 ELSE coalesce(o.shift, 0) END) AS t
            FROM tt_rows r LEFT JOIN tt_offsets o USING (source)
        ), r AS (
            SELECT *, lag(t) OVER w AS prev, row_number() OVER w AS i,
                   recorded OR lag(recorded) OVER w AS exact
            FROM rows
            WINDOW w AS (PARTITION BY event_id ORDER BY t NULLS LAST, pos NULLS FIRST)
        )
        SELECT event_id, received_at, source, recorded, pos,
               sum((i = 1 OR (t IS NULL) <> (prev IS NULL)
                    OR coalesce(date_diff('microsecond', prev, t)
                                >= CASE WHEN exact THEN 1 ELSE {SAME_DELIVERY_S * 1_000_000} END, false))::INTEGER)
                   OVER (PARTITION BY event_id ORDER BY t NULLS LAST, pos NULLS FIRST) AS cluster
        FROM r
        """
    )
    # Events seen by several sources, one of which holds rows SAME_SOURCE_RETRY_S apart or more: Tyk's retries,
    # copied by exports whose clocks may differ by seconds. Neighbour to neighbour the copies can chain two
    # deliveries into one cluster, or part one: `_split_clusters` lines the sources up instead.
    cur.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE tt_tangled AS
        SELECT event_id FROM (
            SELECT event_id, source, bool_or(recorded) AS recorded,
                   date_diff('microsecond', min(received_at), max(received_at)) AS span
            FROM tt_clusters WHERE received_at IS NOT NULL GROUP BY event_id, source
        )
        GROUP BY event_id
        HAVING count(*) > 1 AND NOT bool_or(recorded) AND max(span) >= {SAME_SOURCE_RETRY_S * 1_000_000}
        """
    )
    # the rows of a cluster after its first (pos: the files' order), or all of them when a stored row is in it
    cur.execute(
        """
        CREATE OR REPLACE TEMP TABLE tt_repeat AS
        SELECT pos FROM (
            SELECT pos, bool_or(pos IS NULL) OVER c AS stored, min(pos) OVER c AS first
            FROM tt_clusters
            WHERE received_at IS NULL OR event_id NOT IN (SELECT event_id FROM tt_tangled)
            WINDOW c AS (PARTITION BY event_id, cluster)
        )
        WHERE pos IS NOT NULL AND (stored OR pos <> first)
        """
    )
    _split_clusters(cur)
    cur.execute("INSERT INTO tt_repeat SELECT pos FROM tt_exact")
    valid = dict(cur.execute("SELECT source_id, count(*) FROM stage WHERE reason IS NULL GROUP BY ALL").fetchall())
    # Keep only what is new in the stage itself (no copy of millions of rows): drop deliveries the store
    # holds already and repeats of a delivery after its first occurrence.
    repeats = cur.execute("SELECT EXISTS (SELECT 1 FROM tt_repeat)").fetchall()[0][0]
    if repeats:  # a first load without repeats (the big one) skips this pass
        # A copy dropped as a repeat may be the one that names the user (the receiver's log beside a bare-body
        # export of the same records): its event keeps that user, whichever copy came first.
        cur.execute(
            """
            CREATE OR REPLACE TEMP TABLE tt_users AS
            SELECT event_id, arg_min(identity, (coalesce(received_at, TIMESTAMP '9999-12-31'), source_id, record_no))
                       AS identity
            FROM stage WHERE reason IS NULL AND identity IS NOT NULL GROUP BY event_id
            """
        )
        # the copies at times the store does not hold yet, kept for the runs to come
        cur.execute(
            f"""
            INSERT INTO delivery_copies
            SELECT s.event_id, s.received_at, t.source, $run_id
            FROM stage s JOIN tt_sources t USING (source_id)
            WHERE s.reason IS NULL AND s.received_at IS NOT NULL AND NOT t.recorded
              AND {_pos("s.")} IN (SELECT pos FROM tt_repeat)
              AND s.delivery_id NOT IN (SELECT delivery_id FROM deliveries)
              AND s.delivery_id NOT IN (SELECT delivery_id FROM stage k WHERE k.reason IS NULL
                                        AND {_pos("k.")} NOT IN (SELECT pos FROM tt_repeat))
              AND (s.event_id, s.received_at) NOT IN (SELECT (event_id, received_at) FROM delivery_copies)
            QUALIFY row_number() OVER (PARTITION BY s.event_id, s.received_at ORDER BY s.source_id, s.record_no) = 1
            """,
            {"run_id": run_id},
        )
        cur.execute(f"DELETE FROM stage WHERE reason IS NULL AND {_pos()} IN (SELECT pos FROM tt_repeat)")
    new = dict(cur.execute("SELECT source_id, count(*) FROM stage WHERE reason IS NULL GROUP BY ALL").fetchall())
    for sid, _name, report in sources:
        report.new_deliveries = new.get(sid, 0)
        report.duplicate_deliveries = valid.get(sid, 0) - report.new_deliveries
    cur.execute(
        """
        INSERT INTO deliveries
        SELECT n.delivery_id, n.event_id, n.received_at, n.identity, $run_id, s.source, n.record_no, n.upstream_status
        FROM stage n JOIN tt_sources s USING (source_id) WHERE n.reason IS NULL
        """,
        {"run_id": run_id},
    )
    # Events of the new deliveries; an event the store already has takes the new deliveries into its counts.
    if not cur.execute("SELECT EXISTS (SELECT 1 FROM events)").fetchall()[0][0]:
        cur.execute(f"INSERT INTO events {_NEW_EVENTS}")  # a first load: every event is new, no copy
    else:
        _merge_events(cur)
    if repeats:
        cur.execute(
            "UPDATE events SET identity = u.identity FROM tt_users u "
            "WHERE events.event_id = u.event_id AND events.identity IS NULL"
        )
    cur.execute(
        """
        INSERT INTO quarantine
        SELECT q.quarantine_id, $run_id, s.source, q.record_no, q.reason, q.excerpt
        FROM stage q JOIN tt_sources s USING (source_id)
        WHERE q.reason IS NOT NULL
          AND q.quarantine_id NOT IN (SELECT quarantine_id FROM quarantine)
        QUALIFY row_number() OVER (PARTITION BY q.quarantine_id ORDER BY q.source_id) = 1
        """,
        {"run_id": run_id},
    )
    # the events this run added or changed, for an incremental lineage update
    if keep_changed:  # for lineage.update (live applies: a small stage)
        cur.execute("CREATE OR REPLACE TEMP TABLE tt_changed AS SELECT DISTINCT event_id FROM stage WHERE reason IS NULL")
    for t in ("tt_exact", "tt_multi", "tt_rows", "tt_offsets", "tt_clusters", "tt_tangled", "tt_repeat", "tt_known", "tt_events", "tt_sources",
              "tt_users", "stage"):
        cur.execute(f"DROP TABLE IF EXISTS {t}")


def _split_clusters(cur) -> None:
    """The deliveries of the tangled events of `_merge` (rare, a handful of rows each), stored copies included.
    A source's rows less than SAME_SOURCE_RETRY_S apart are one delivery it logged (Tyk's retries come 10 s
    apart); the source with the most deliveries (the earliest such, on a tie) sets how many the event holds, and
    every source with as many lines them up in time order: a source's i-th delivery is the event's i-th, whatever
    the offset between the sources' clocks. A source with fewer (an export that began or ended among the retries)
    joins each of its own to the nearest in time. A delivery with a stored row in it is known, and all its new
    rows repeat it; a new one keeps its first row in the files' order. The rows to drop join `tt_repeat`."""
    rows = cur.execute(
        """
        SELECT c.event_id, c.received_at, c.source, c.pos
        FROM tt_clusters c SEMI JOIN tt_tangled USING (event_id)
        WHERE c.received_at IS NOT NULL
        ORDER BY c.event_id, c.received_at, c.pos NULLS FIRST
        """
    ).fetchall()
    repeats: list[int] = []
    for _event, group in itertools.groupby(rows, key=lambda r: r[0]):
        by_source: dict[str, list[list]] = {}  # source -> its deliveries, each a list of (time, pos), in time order
        for _e, at, source, pos in group:
            own = by_source.setdefault(source, [])
            if own and (at - own[-1][-1][0]).total_seconds() < SAME_SOURCE_RETRY_S:
                own[-1].append((at, pos))
            else:
                own.append([(at, pos)])
        most = max(len(d) for d in by_source.values())
        _source, anchor = min(((src, d) for src, d in by_source.items() if len(d) == most),
                              key=lambda sd: (sd[1][0][0][0], sd[0]))  # the earliest first time, then the name
        starts = [d[0][0] for d in anchor]
        members: list[list] = [[] for _ in range(most)]
        for own in by_source.values():
            for i, delivery in enumerate(own):
                if len(own) < most:  # nearest in time; on a tie the earlier
                    i = min(range(most), key=lambda j, t=delivery[0][0]: (abs((t - starts[j]).total_seconds()), j))
                members[i].extend(pos for _at, pos in delivery)
        for positions in members:
            if None in positions:  # a delivery the store holds: every new copy repeats it
                repeats.extend(p for p in positions if p is not None)
            else:
                repeats.extend(sorted(positions)[1:])
    if repeats:
        cur.execute("INSERT INTO tt_repeat SELECT unnest($1::BIGINT[])", [repeats])


# The events of the stage's rows: an event with one row is that row (no hash table for millions of
# groups); only the events of `tt_multi` are aggregated.
_NEW_EVENTS = """
SELECT event_id, notification_type, auth_code_fp, access_token_fp, refresh_token_fp, old_refresh_token_fp,
       received_at AS first_seen, received_at AS last_seen, 1::INTEGER AS deliveries, identity
FROM stage ANTI JOIN tt_multi USING (event_id)
WHERE reason IS NULL
UNION ALL
SELECT event_id, any_value(notification_type) AS notification_type,
       any_value(auth_code_fp) AS auth_code_fp, any_value(access_token_fp) AS access_token_fp,
       any_value(refresh_token_fp) AS refresh_token_fp, any_value(old_refresh_token_fp) AS old_refresh_token_fp,
       min(received_at) AS first_seen, max(received_at) AS last_seen, count(*)::INTEGER AS deliveries,
       arg_min(identity, coalesce(received_at, TIMESTAMP '9999-12-31')) FILTER (identity IS NOT NULL) AS identity
FROM stage SEMI JOIN tt_multi USING (event_id)
WHERE reason IS NULL GROUP BY event_id
"""


def _merge_events(cur) -> None:
    cur.execute(f"CREATE OR REPLACE TEMP TABLE tt_events AS {_NEW_EVENTS}")
    cur.execute(
        """
        CREATE OR REPLACE TEMP TABLE tt_known AS
        SELECT e.event_id, least(e.first_seen, n.first_seen) AS first_seen,
               greatest(e.last_seen, n.last_seen) AS last_seen, e.deliveries + n.deliveries AS deliveries,
               CASE WHEN n.first_seen < e.first_seen THEN coalesce(n.identity, e.identity)
                    ELSE coalesce(e.identity, n.identity) END AS identity
        FROM events e JOIN tt_events n USING (event_id)
        """
    )
    cur.execute(
        """
        UPDATE events SET first_seen = k.first_seen, last_seen = k.last_seen, deliveries = k.deliveries,
                          identity = k.identity
        FROM tt_known k WHERE events.event_id = k.event_id
        """
    )
    cur.execute(
        "INSERT INTO events SELECT * FROM tt_events WHERE event_id NOT IN (SELECT event_id FROM tt_known)"
    )


# Batches are staged a group at a time: each staging statement costs ~15-30 ms to plan (the time parser is
# half of that) and ends with a tail where one thread idles, so one statement per 16 MB read (40k lines)
# spent about a fifth of the staging time on overhead. 64 MB per statement (~160k lines) cuts that to a few
# percent; the group holds no copy (its batches are the reader's own buffers).
STAGE_GROUP_BYTES = 64 << 20


def _grouped(batches: Iterable[pa.Table], max_bytes: int | None = None) -> Iterator[pa.Table]:
    """Consecutive batches of one source, concatenated (no copy) until they reach `max_bytes`."""
    limit = STAGE_GROUP_BYTES if max_bytes is None else max_bytes
    group: list[pa.Table] = []
    size = 0
    try:
        for table in batches:
            if group and table.schema != group[0].schema:  # readers keep one schema; never mix, regardless
                yield pa.concat_tables(group)
                group, size = [], 0
            group.append(table)
            size += table.nbytes
            if size >= limit:
                yield pa.concat_tables(group)
                group, size = [], 0
    except Exception:  # a file that ends early or is damaged: what was read before still loads
        if group:
            yield pa.concat_tables(group)
        raise
    if group:
        yield pa.concat_tables(group)


def _prefetch(batches: Iterator[pa.Table], depth: int = 2) -> Iterator[pa.Table]:
    """Read the next batches on a thread while DuckDB (which releases the GIL) works on the current one."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                q.put(batch)
            q.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    thread = threading.Thread(target=produce, name="tokentrail-reader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.1)


# -- inputs --------------------------------------------------------------------------------------------------


def _open(item: Input) -> tuple[str, BinaryIO, bool]:
    if isinstance(item, tuple):
        name, fileobj = item
        return name, fileobj, False
    path = os.fspath(item)
    return path, open(path, "rb"), True  # noqa: SIM115 - closed by the caller


def _set_time_reference(cur, item: Input) -> None:
    """Times without a year (classic syslog) are placed before the time the file was last written, not before
    today: reading the same file again later must give the same times (normalize's `tt_yearless`). A stream or an
    upload has no such time: they fall back to now."""
    try:
        mtime = None if isinstance(item, tuple) else os.stat(os.fspath(item)).st_mtime
    except OSError:
        mtime = None
    if mtime is None:
        cur.execute("RESET VARIABLE tt_time_ref")
    else:
        when = datetime.fromtimestamp(mtime, UTC).replace(tzinfo=None)
        cur.execute(f"SET VARIABLE tt_time_ref = TIMESTAMP '{when.isoformat(sep=' ')}'")


def _size(item: Input) -> int:
    if isinstance(item, StagedInput):
        return 0
    if isinstance(item, tuple):
        f = item[1]
        try:
            pos = f.tell()
            end = f.seek(0, io.SEEK_END)
            f.seek(pos)
            return end
        except (OSError, AttributeError):
            return 0
    try:
        return os.path.getsize(item)
    except OSError:
        return 0
