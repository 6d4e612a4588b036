"""The DuckDB store: one file, one writer, fingerprints only.

Design choices:

* **One connection wrapper** (`Store`). DuckDB allows one read-write process per database file; inside a
  process, one connection and a `cursor()` per thread. The dashboard opens one `Store` and every page query
  takes its own cursor; the CLI opens its own when no dashboard holds the file.
* **No raw credentials on disk.** Tokens and auth codes are stored as keyed fingerprints (`ingest.fingerprint`:
  120-bit integers), with a 128-bit random key kept beside the database in `<db>.key` (mode 0600, never in
  the repository or the database). A fingerprint cannot be matched to a token without the key.
* **Schema versions.** A database of schema 1 (fingerprints as base64 text) is converted in place, in one
  transaction, the first time it is opened for writing (`_upgrade_from_1`).
* **No PRIMARY KEY indexes.** DuckDB's ART indexes make bulk loads slow and memory-hungry; the ingest
  deduplicates with anti-joins instead (see `ingest.pipeline`).
* **Derived tables** (`lineage`, `chains`) are rebuilt by `ingest.lineage` inside the ingest transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb

from ingest import fingerprint

SCHEMA_VERSION = "2"
log = logging.getLogger("tokentrail.store")

# Random ids and fingerprints are incompressible, and DuckDB's analysis of them only slows writing `events` and
# `lineage`: those columns are stored uncompressed. Every other column keeps DuckDB's
# automatic compression: a file name repeated on every delivery, a notification type, an identity then take
# a dictionary entry instead of their full text (at 1M deliveries the `source` column alone was 53 MB).
RANDOM = "UHUGEINT USING COMPRESSION uncompressed"

# The derived tables are recreated by every full rebuild (`ingest.lineage`), from these definitions.
LINEAGE_COLUMNS = f"""
    event_id {RANDOM}, parent_id {RANDOM}, chain_id {RANDOM}, depth INTEGER,
    interval_s DOUBLE, refresh_class VARCHAR, forked BOOLEAN
"""
CHAINS_COLUMNS = f"""
    chain_id {RANDOM}, orphan BOOLEAN, root_type VARCHAR, identity VARCHAR,
    first_seen TIMESTAMP, last_seen TIMESTAMP, events INTEGER, deliveries INTEGER, refreshes INTEGER,
    forks INTEGER, late_refreshes INTEGER, early_refreshes INTEGER, untimed_events INTEGER,
    span_s DOUBLE, lifetime_s DOUBLE, end_state VARCHAR, unknown_parent_fp {RANDOM}, cycle_broken BOOLEAN
"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key VARCHAR, value VARCHAR);

-- One row per file (or zip member) per ingest call: what was read and what it added.
CREATE TABLE IF NOT EXISTS ingest_files (
    run_id INTEGER, started_at TIMESTAMP, source VARCHAR, format VARCHAR,
    records BIGINT, new_deliveries BIGINT, known_deliveries BIGINT, rejected BIGINT, untimed BIGINT,
    error VARCHAR
);

-- One received notification (one log record). delivery_id: an id of (event_id, received_at).
-- upstream_status: in relay mode, the status the user's own service answered (0: no answer); else NULL.
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id {RANDOM}, event_id {RANDOM}, received_at TIMESTAMP, identity VARCHAR,
    run_id INTEGER, source VARCHAR, record_no BIGINT, upstream_status INTEGER
);
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS upstream_status INTEGER;  -- databases made before relay mode

-- The other copies of a stored delivery read from overlapping exports, at their own times (another precision,
-- another platform's clock): a later export is matched against all of them, so the result of loading several
-- exports does not depend on their order. A copy at a time the store holds already is not kept.
CREATE TABLE IF NOT EXISTS delivery_copies (event_id {RANDOM}, received_at TIMESTAMP, source VARCHAR, run_id INTEGER);

-- One distinct notification payload; deliveries with the same payload collapse into it.
CREATE TABLE IF NOT EXISTS events (
    event_id {RANDOM}, notification_type VARCHAR,
    auth_code_fp {RANDOM}, access_token_fp {RANDOM}, refresh_token_fp {RANDOM}, old_refresh_token_fp {RANDOM},
    first_seen TIMESTAMP, last_seen TIMESTAMP, deliveries INTEGER, identity VARCHAR
);

-- Records that could not be read as notifications: kept with the reason, token-like values masked.
CREATE TABLE IF NOT EXISTS quarantine (
    quarantine_id {RANDOM}, run_id INTEGER, source VARCHAR, record_no BIGINT, reason VARCHAR, excerpt VARCHAR
);

-- auth code fingerprint -> identity, from identity mapping files.
CREATE TABLE IF NOT EXISTS identity_map (auth_code_fp {RANDOM}, identity VARCHAR, source VARCHAR);

-- Derived by ingest.lineage.
CREATE TABLE IF NOT EXISTS lineage ({LINEAGE_COLUMNS});
CREATE TABLE IF NOT EXISTS chains ({CHAINS_COLUMNS});
"""

DEFAULT_ACCESS_TTL_S = 3600
DEFAULT_MEMORY_LIMIT = "1GB"
DEFAULT_REFRESH_TTL_S = 14 * 24 * 3600


class StoreError(Exception):
    """The database cannot be opened or used; the message says why and what to do."""


class OutOfMemory(StoreError):
    """DuckDB ran out of memory within the store's limit; the transaction was rolled back."""

    def __init__(self, limit: str, path: str):
        self.limit = limit
        super().__init__(
            f"DuckDB ran out of memory within its limit of {limit} (it spills what it can to {Path(path).name}.tmp, "
            "but some of the work must fit). Nothing was changed. Raise the limit with TOKENTRAIL_MEMORY_LIMIT "
            "(e.g. 4GB) for the process that loads, the command or the dashboard, or load fewer files at once."
        )


class Store:
    """A DuckDB database file plus its fingerprint key. Use `Store.open(path)`."""

    def __init__(self, path: str, con: duckdb.DuckDBPyConnection, key: str, read_only: bool,
                 memory_limit: str = DEFAULT_MEMORY_LIMIT):
        self.path = path
        self.con = con
        self.key = key
        self.read_only = read_only
        self.memory_limit = memory_limit
        # Serialises writers inside one process (Streamlit sessions are threads).
        self.write_lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike = ":memory:", *, read_only: bool = False, memory_limit: str | None = None) -> Store:
        path = str(path)
        in_memory = path == ":memory:"
        if not in_memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        existed = in_memory or Path(path).exists()
        # A bounded buffer pool: large ingests spill (fingerprints only) to <db>.tmp instead of growing the
        # process; insertion order is never relied on, and not keeping it lets DuckDB stream large inserts.
        config = {
            "threads": os.cpu_count() or 2,
            "memory_limit": memory_limit or os.environ.get("TOKENTRAIL_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT),
            "preserve_insertion_order": False,
        }
        try:
            con = duckdb.connect(path, read_only=read_only, config=config)
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise StoreError(
                    f"{path} is in use by another tokentrail process (a running dashboard or ingest). "
                    "Upload through the dashboard's Upload page, or stop the other process and try again."
                ) from e
            raise StoreError(f"cannot open the database {path}: {e}") from e
        con.execute("SET TimeZone = 'UTC'")
        if not read_only:
            fresh = not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'events'").fetchall()[0][0]
            con.execute(SCHEMA)
            version = con.execute("SELECT any_value(value) FROM meta WHERE key = 'schema_version'").fetchall()[0][0]
            if version is None:
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
            elif version == "1":
                try:
                    _upgrade_from_1(con, path)
                except BaseException:
                    con.close()
                    raise
            elif version != SCHEMA_VERSION:
                con.close()
                raise StoreError(f"{path} was made by a newer tokentrail (schema {version}); upgrade tokentrail to open it")
            if fresh:
                con.execute("INSERT INTO meta VALUES ('column_compression', 'per column')")
            elif not con.execute("SELECT count(*) FROM meta WHERE key = 'column_compression'").fetchall()[0][0]:
                # A database made before per-column compression: its fingerprint columns would get DuckDB's
                # DICT_FSST analysis, so that method stays off for the whole database, as it was then.
                with contextlib.suppress(duckdb.Error):  # a DuckDB without that method: nothing to disable
                    con.execute("SET disabled_compression_methods = 'dict_fsst'")
        elif not in_memory and _schema_version(con) not in (None, SCHEMA_VERSION):
            con.close()
            raise StoreError(
                f"{path} was made by another version of tokentrail; open it once for writing (any tokentrail "
                "command, or the dashboard) to convert it, then read-only"
            )
        key = fingerprint.SCHEME_PREFIX + secrets.token_hex(16) if in_memory else _load_or_create_key(
            path, existed=existed, con=con)
        return cls(path, con, key, read_only, config["memory_limit"])

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cur = self.con.cursor()
        cur.execute("SET TimeZone = 'UTC'")
        return cur

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One writer at a time; everything inside commits together or not at all."""
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only; ingest needs it read-write")
        with self.write_lock:
            cur = self.cursor()
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except duckdb.OutOfMemoryException as e:  # not a bug: the limit is too small for the work
                cur.execute("ROLLBACK")
                raise OutOfMemory(self.memory_limit, self.path) from e
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.cursor().execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()
        return rows[0][0] if rows else default

    def close(self) -> None:
        self.con.close()


def set_meta(cur: duckdb.DuckDBPyConnection, key: str, value: object) -> None:
    cur.execute("DELETE FROM meta WHERE key = ?", [key])
    cur.execute("INSERT INTO meta VALUES (?, ?)", [key, None if value is None else str(value)])


def load_key(db_path: str | os.PathLike) -> str:
    """The fingerprint key of a database, for a process that must not open the database itself (the live
    receiver). A database that does not exist yet is created, with its key."""
    kp = key_path(str(db_path))
    if not kp.exists():
        Store.open(db_path).close()
    return _read_key(kp)


def _read_key(kp: Path) -> str:
    """The key as fingerprints use it: `md5-120:` and 32 hex digits, or (a key made before) the bare digits."""
    if kp.stat().st_mode & 0o077:
        os.chmod(kp, 0o600)  # tighten a key someone copied with loose permissions
    key = kp.read_text().strip()
    digits = key.removeprefix(fingerprint.SCHEME_PREFIX)
    if len(digits) != 32 or any(c not in "0123456789abcdef" for c in digits):
        raise StoreError(f"the fingerprint key {kp} is damaged (expected {fingerprint.SCHEME_PREFIX} and 32 hex digits)")
    return key


def key_path(db_path: str) -> Path:
    return Path(db_path + ".key")


def _load_or_create_key(db_path: str, *, existed: bool, con: duckdb.DuckDBPyConnection) -> str:
    kp = key_path(db_path)
    if kp.exists():
        return _read_key(kp)
    has_data = existed and con.execute("SELECT count(*) FROM events").fetchall()[0][0] > 0
    if has_data:
        raise StoreError(
            f"the fingerprint key {kp} is missing, but {db_path} holds data fingerprinted with it. "
            "Restore the key file, or start a new database with --db NEWFILE."
        )
    key = fingerprint.SCHEME_PREFIX + secrets.token_hex(16)
    fd = os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _schema_version(con: duckdb.DuckDBPyConnection) -> str | None:
    try:
        return con.execute("SELECT any_value(value) FROM meta WHERE key = 'schema_version'").fetchall()[0][0]
    except duckdb.CatalogException:
        return None


# Schema 1 stored fingerprints as 12 URL-safe base64 characters: the first 72 bits of SHA-256(key || value).
# As integers, in the high bits, they are what `ingest.fingerprint` computes for a key file of that time.
# Anything else in an id column (a live spool's placeholder) becomes an MD5 of its text.
_V1_TO_INT = r"""
CREATE OR REPLACE TEMP MACRO tt_v1(s) AS
    CASE WHEN regexp_full_match(s, '[A-Za-z0-9_-]{12}') THEN tt_fp_of_text(s) ELSE md5_number(s) >> 8 END
"""


def _upgrade_from_1(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Convert a schema-1 database in one transaction: fingerprints to integers, event and delivery ids
    recomputed from them (`ingest.fingerprint`), lineage rebuilt. Interrupted, it is as before."""
    events = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    log.warning("%s: converting to tokentrail's schema %s (fingerprints as integers; %d events), once", path,
                SCHEMA_VERSION, events)
    from ingest import lineage  # noqa: PLC0415 - lineage builds on this module
    from ingest.normalize import install_macros  # noqa: PLC0415

    tables = ("deliveries", "events", "quarantine", "identity_map", "lineage", "chains")
    con.execute("BEGIN TRANSACTION")
    try:
        install_macros(con)
        con.execute(_V1_TO_INT)
        for t in tables:
            con.execute(f"ALTER TABLE {t} RENAME TO v1_{t}")
        con.execute(SCHEMA)
        fps = ("auth_code_fp", "access_token_fp", "refresh_token_fp", "old_refresh_token_fp")
        con.execute(f"""
            CREATE TEMP TABLE tt_v1_events AS
            SELECT event_id AS v1_id, tt_event_id(notification_type, {", ".join(f"tt_v1({c})" for c in fps)}) AS event_id
            FROM v1_events""")
        con.execute(f"""
            INSERT INTO events
            SELECT v.* REPLACE (m.event_id AS event_id, {", ".join(f"tt_v1(v.{c}) AS {c}" for c in fps)})
            FROM v1_events v JOIN tt_v1_events m ON m.v1_id = v.event_id""")
        con.execute("""
            INSERT INTO deliveries
            SELECT d.* REPLACE (tt_delivery_id(m.event_id, d.received_at) AS delivery_id, m.event_id AS event_id)
            FROM v1_deliveries d JOIN tt_v1_events m ON m.v1_id = d.event_id""")
        con.execute("INSERT INTO quarantine SELECT * REPLACE (tt_v1(quarantine_id) AS quarantine_id) FROM v1_quarantine")
        con.execute("INSERT INTO identity_map SELECT * REPLACE (tt_v1(auth_code_fp) AS auth_code_fp) FROM v1_identity_map")
        for t in tables:
            con.execute(f"DROP TABLE v1_{t}")
        con.execute("DROP TABLE tt_v1_events")
        ttl = con.execute("SELECT any_value(value) FROM meta WHERE key = 'access_ttl_s'").fetchall()[0][0]
        lineage.rebuild(con, access_ttl_s=int(ttl or DEFAULT_ACCESS_TTL_S))
        set_meta(con, "schema_version", SCHEMA_VERSION)
        set_meta(con, "column_compression", "per column")  # the tables were made anew
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
