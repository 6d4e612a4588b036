"""Keyed fingerprints and the ids made from them: one definition, in SQL (for the ingest) and in Python (for the
live receiver's fast path, and tests). `tests/test_fingerprint.py` holds the two to each other.

* A **fingerprint** of a token or auth code is a 120-bit integer (DuckDB `UHUGEINT`): MD5(key || value),
  shifted right by 8 bits. The key is 128 random bits kept beside the database (`ingest.store`), so without it
  a fingerprint cannot be matched to a token; tokens are random, so a fingerprint does not reveal one either
  (MD5's known weakness is collisions between inputs an attacker chooses, and Tyk chooses the tokens; a
  collision would at worst join two chains, never reveal a token). Dropping 8 bits of the digest leaves
  nothing to extend. Why MD5 and an integer: at 5M notifications, SHA-256 as base64 text cost 5-8 s of the
  ingest's 32 s, half in hashing, half in text handling and in joins on text (`bench/README.md`, session 9).
* A database made before (schema 1) used the first 72 bits of SHA-256(key || value). Its key file holds the
  bare key; a key file made now holds `md5-120:` and the key. The key string, prefix included, is what every
  fingerprint is computed with, so it names its own function and a database never mixes the two.
* **Ids** are not hashed again: an event id combines its fingerprints by XOR, each shifted by its field's
  place (so a token is told apart in each field), and a delivery id is its event id XOR the receipt time in
  microseconds. Fingerprints are uniformly random, so two different payloads share an id with chance 2^-120.
* **Text**: 30 lowercase hex digits (`text`, `text_sql`), for URLs, JSON and the screen, which shows the first
  10 (`queries.summary.SHORT_FP`).
"""

from __future__ import annotations

import hashlib

SCHEME_PREFIX = "md5-120:"
UNTIMED = 1 << 60  # the "time" of an untimed delivery, beyond any microsecond epoch of 1990-2200
HEX_DIGITS = 30


def from_text_sql(expr: str) -> str:
    """SQL: a text form (30 hex digits or fewer) back to the stored integer; NULL when it is not one."""
    return f"CASE WHEN strlen({expr}) BETWEEN 1 AND {HEX_DIGITS} THEN try_cast('0x' || {expr} AS UHUGEINT) END"


def text_sql(column: str) -> str:
    """SQL: an id or fingerprint column as its text form."""
    return f"printf('%0{HEX_DIGITS}x', {column})"


# The SQL of the same definitions (DuckDB macros). Schema 1's 72 bits (18 hex digits) sit in the high bits.
SQL_MACROS = f"""
CREATE OR REPLACE TEMP MACRO tt_fp(k, x) AS
    CASE WHEN starts_with(k, '{SCHEME_PREFIX}') THEN md5_number(k || x) >> 8
         ELSE {from_text_sql("(left(sha256(k || x), 18) || '000000000000')")} END;
-- Every event has an access token: without one (a rejected record) there is no event, and no id.
CREATE OR REPLACE TEMP MACRO tt_event_id(ntype, auth_code_fp, access_token_fp, refresh_token_fp, old_refresh_token_fp) AS
    xor(xor(xor(access_token_fp, coalesce(refresh_token_fp >> 1, 1::UHUGEINT)),
            xor(coalesce(old_refresh_token_fp >> 2, 2::UHUGEINT), coalesce(auth_code_fp >> 3, 3::UHUGEINT))),
        CASE ntype WHEN 'refresh' THEN 4::UHUGEINT ELSE 0::UHUGEINT END);
-- The text form back (`text`); a 12-character one is schema 1's base64 (a spool written before).
CREATE OR REPLACE TEMP MACRO tt_fp_of_text(s) AS
    CASE WHEN strlen(s) = 12
         THEN {from_text_sql("(hex(from_base64(replace(replace(s, '-', '+'), '_', '/'))) || '000000000000')")}
         ELSE {from_text_sql("s")} END;
CREATE OR REPLACE TEMP MACRO tt_delivery_id(event_id, t) AS
    xor(event_id, coalesce(epoch_us(t), {UNTIMED})::UHUGEINT);
"""


def fp(key: str, value: str | None) -> int | None:
    """tt_fp()."""
    if value is None:
        return None
    data = (key + value).encode()
    if key.startswith(SCHEME_PREFIX):
        return int.from_bytes(hashlib.md5(data).digest(), "little") >> 8
    return int.from_bytes(hashlib.sha256(data).digest()[:9], "big") << 48


def event_id(ntype: str, auth_code: int | None, access: int, refresh: int | None, old: int | None) -> int:
    """tt_event_id(), from the four fingerprints."""
    return (access
            ^ (1 if refresh is None else refresh >> 1)
            ^ (2 if old is None else old >> 2)
            ^ (3 if auth_code is None else auth_code >> 3)
            ^ (4 if ntype == "refresh" else 0))


def delivery_id(event: int, received_us: int | None) -> int:
    """tt_delivery_id()."""
    return event ^ (UNTIMED if received_us is None else received_us)


def text(value: int) -> str:
    return f"{value:0{HEX_DIGITS}x}"


def parse(s: str) -> int | None:
    """The integer of a text form, or None when `s` is not one."""
    s = s.strip().lower()
    return int(s, 16) if 0 < len(s) <= HEX_DIGITS and all(c in "0123456789abcdef" for c in s) else None
