"""Turn located records into validated, fingerprinted rows, in SQL, one batch at a time.

Both tiers of `ingest.locate` end here, so validation, time parsing, fingerprints and masking exist once.
Input relation columns: record_no, raw (read only for rejected rows), err, v (JSON[] of the five Tyk fields), time_raw, identity_raw,
reason (a locate failure). Output: the `stage` rows of `ingest.pipeline`.

Raw text only ever lives in the Arrow batch and in expressions: what is written (to the stage table and from
there to the database) is fingerprints, times, identities, and for rejected records a masked excerpt. The
statement is one streaming pipeline (scan, filters, projections, insert): no operator in it holds rows (no
materialised CTE, join, aggregate or sort), because DuckDB writes what such operators hold to its temporary
directory when memory runs short, and rows here carry live tokens. `tests/test_security.py` checks the plan.
"""

from __future__ import annotations

import duckdb

from ingest import fingerprint
from ingest.locate import ZONE_ABBREVIATIONS, literal_sql

# Macros: one time parser for every source and the excerpt mask (the fingerprints: `ingest.fingerprint`).
MACROS = r"""
-- Placeholders log platforms write for "no value" (ClickHouse \N, Kibana's escaped '-, ...): not a value.
-- A logger's redaction of a secret ([FILTERED]: Rails's filter_parameters; [REDACTED]: pino, structlog...) is not a
-- value either: a token stored as "[REDACTED]" would link every event that shows it.
CREATE OR REPLACE TEMP MACRO tt_value(s) AS
    CASE WHEN strlen(s) > 12 THEN s WHEN s = '' THEN NULL WHEN trim(s) IN ('', '-', '''-', '\N', 'null', 'NULL', 'None', 'nil', '(null)', 'N/A', 'n/a', 'undefined',
                                                  '[FILTERED]', '[REDACTED]', '[redacted]', 'REDACTED', '<redacted>', '***')
         THEN NULL ELSE trim(s) END;
CREATE OR REPLACE TEMP MACRO tt_embedded(s) AS
    CASE WHEN starts_with(s, '{') THEN s WHEN strpos(s, '{') > 0 THEN substr(s, strpos(s, '{')) END;
-- The fields of a notification an object printer wrote (Python's repr, Ruby's inspect, Go's %v...:
-- `_embedded_literal` in ingest.locate) as a JSON object, a field not there as null; NULL for text without the type,
-- or with it as a JSON key (broken JSON).
CREATE OR REPLACE TEMP MACRO tt_kv(m) AS CASE WHEN m.sep <> '' THEN m.val END;
CREATE OR REPLACE TEMP MACRO tt_literal(s) AS {LITERAL_FIELDS};
CREATE OR REPLACE TEMP MACRO tt_text_prefix(s) AS
    CASE WHEN strpos(s, '{') > 0 THEN substr(s, 1, strpos(s, '{') - 1) ELSE s END;
-- Epoch seconds, ms, us or ns (told apart by size), in exact decimal arithmetic and truncated to the microsecond, as
-- casting an ISO time with nanoseconds does: the same record exported by two platforms (Loki's API gives
-- epoch ns, logcli RFC 3339 with ns) gets the same time. (Float division put one in six of them 1 us later.)
CREATE OR REPLACE TEMP MACRO tt_epoch(n) AS
    make_timestamp(floor(n * CASE WHEN abs(n) >= 1e17 THEN 0.001 WHEN abs(n) >= 1e14 THEN 1
                                  WHEN abs(n) >= 1e11 THEN 1000 ELSE 1000000 END)::BIGINT);
-- Classic syslog (RFC 3164: `Dec  3 09:00:00`) has no year. As rsyslog and Logstash do, take the latest year
-- that does not put the time more than a day after a reference: here the time the file was last written (the
-- pipeline sets `tt_time_ref` to its mtime), so the same file read again next year gets the same times; now
-- for an upload or a stream. Feb 29 falls in the latest leap year before the reference.
CREATE OR REPLACE TEMP MACRO tt_time_ref() AS coalesce(getvariable('tt_time_ref')::TIMESTAMP, now()::TIMESTAMP);
CREATE OR REPLACE TEMP MACRO tt_yearless(s) AS
    list_filter(
        list_transform(range(-1, 8), lambda k: try_strptime(s || ' ' || (year(tt_time_ref()) - k)::VARCHAR, '%b %d %H:%M:%S %Y')),
        lambda t: t <= tt_time_ref() + INTERVAL 1 DAY)[1];
CREATE OR REPLACE TEMP MACRO tt_time_other(s) AS
    CASE
        WHEN s IS NULL THEN NULL
        WHEN regexp_full_match(s, '[A-Z][a-z]{2} +[0-9]{1,2} [0-9]{2}:[0-9]{2}:[0-9]{2}') THEN
            tt_yearless(regexp_replace(s, ' +', ' ', 'g'))
        -- journalctl -o short-precise: the same with microseconds
        WHEN regexp_full_match(s, '[A-Z][a-z]{2} +[0-9]{1,2} [0-9]{2}:[0-9]{2}:[0-9]{2}[.][0-9]+') THEN
            tt_yearless(regexp_replace(regexp_replace(s, '[.][0-9]+$', ''), ' +', ' ', 'g'))
            + to_microseconds(floor(('0' || regexp_extract(s, '[.][0-9]+$'))::DECIMAL(38, 9) * 1000000)::BIGINT)
        WHEN regexp_full_match(s, '-?[0-9]{9,19}(\.[0-9]+)?') THEN tt_epoch(s::DECIMAL(38, 9))
        -- PHP's error_log in the zone of its date.timezone: 17-Nov-2026 09:15:02 Europe/Berlin (DuckDB reads the
        -- zone's name after an ISO time)
        WHEN regexp_full_match(s, '[0-9]{2}-[A-Z][a-z]{2}-[0-9]{4} [0-9:]{8} [A-Z][A-Za-z_]+/[A-Za-z_/+-]+') THEN
            try_cast(strftime(try_strptime(left(s, 20), '%d-%b-%Y %H:%M:%S'), '%Y-%m-%d %H:%M:%S') || substr(s, 21)
                     AS TIMESTAMPTZ)::TIMESTAMP
        -- log4j2's JsonLayout: "instant": {"epochSecond": 1796288400, "nanoOfSecond": 123456789}
        WHEN starts_with(s, '{') THEN
            make_timestamp(try_cast(s ->> '$.epochSecond' AS BIGINT) * 1000000
                           + coalesce(try_cast(s ->> '$.nanoOfSecond' AS BIGINT), 0) // 1000)
        -- a leap second (23:59:60, as chrony-synced clocks may log one) is the next second's start, as POSIX time has it
        WHEN regexp_matches(s, '[T ][0-9]{2}:[0-9]{2}:60') THEN
            try_cast(regexp_replace(s, '([T ][0-9]{2}:[0-9]{2}):60', '\1:59') AS TIMESTAMPTZ)::TIMESTAMP + INTERVAL 1 SECOND
        ELSE coalesce(
            try_cast(regexp_replace(regexp_replace(s, ',([0-9]+)', '.\1'), ' ?(UTC|GMT)$', 'Z') AS TIMESTAMPTZ)::TIMESTAMP,
            -- Go's time.Time.String() (zap, logrus, fmt): 2026-12-03 09:00:00.123456789 +0000 UTC
            try_cast(regexp_replace(s, '^([0-9]{4}-[0-9]{2}-[0-9]{2}) ([0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.][0-9]{1,6})?)[0-9]* ([+-][0-9]{2})([0-9]{2})(?: [A-Za-z]+)?$',
                                    '\1T\2\3:\4') AS TIMESTAMPTZ)::TIMESTAMP,
            -- (a fraction past microseconds, as Kibana writes a date_nanos field, is cut, as ISO's is)
            try_strptime(regexp_replace(regexp_replace(s, '(\d)(st|nd|rd|th) ', '\1 '), '([.][0-9]{6})[0-9]+$', '\1'),
                ['%b %d, %Y @ %H:%M:%S.%g', '%b %d, %Y @ %H:%M:%S', '%b %d, %Y @ %H:%M:%S.%f', '%B %d %Y, %H:%M:%S.%g', '%B %d %Y, %H:%M:%S',
                 '%m/%d/%Y %H:%M:%S.%g', '%m/%d/%Y %H:%M:%S', '%m/%d/%Y %I:%M:%S %p', '%m/%d/%Y %I:%M:%S.%g %p',
                 '%m/%d/%Y, %I:%M:%S.%g %p', '%m/%d/%Y, %I:%M:%S %p', '%b %d, %Y %I:%M:%S %p',
                 '%d/%m/%Y %H:%M:%S', '%Y/%m/%d %H:%M:%S', '%Y/%m/%d %H:%M:%S.%g', '%d-%b-%Y %H:%M:%S',
                 '%a %b %d %H:%M:%S %Y', '%d %b %Y %H:%M:%S.%g', '%d %b %Y %H:%M:%S']),
            try_strptime(s, ['%d/%b/%Y:%H:%M:%S %z', '%a, %d %b %Y %H:%M:%S %z', '%Y-%m-%dT%H:%M:%S%z',
                             '%Y-%m-%d %H:%M:%S.%g %z', '%Y-%m-%d %H:%M:%S %z'])::TIMESTAMP,
            try_strptime(regexp_replace(s, ' (GMT|UTC)$', ''), ['%a, %d %b %Y %H:%M:%S', '%a %d %b %Y %H:%M:%S',
                                                               '%d-%b-%Y %H:%M:%S']))
    END;
-- A zone abbreviation at the end (journalctl's default and short-full output: `2026-11-17 09:15:02 CET`) as its
-- offset. DuckDB's own reading of abbreviations takes them for zone names where one matches (BST: Bangladesh) and
-- knows no summer ones (CEST); ambiguous ones (CST, IST) are not read, so the time counts as written without a
-- zone. Only a time ending in a capital letter other than Z pays for the look-up.
CREATE OR REPLACE TEMP MACRO tt_abbrev(s) AS
    CASE WHEN s[-1] BETWEEN 'A' AND 'Y' THEN
        coalesce(regexp_replace(s, ' ?[A-Z]{3,5}$', '') || MAP {ZONE_ABBREVIATIONS}[regexp_extract(s, '[A-Z]{3,5}$')], s)
    ELSE s END;
-- ISO 8601 first (the common case, and cheap); the slower patterns only for what it cannot read.
CREATE OR REPLACE TEMP MACRO tt_time_any(s) AS
    coalesce(try_cast(tt_abbrev(s) AS TIMESTAMPTZ)::TIMESTAMP, tt_time_other(s));
-- A time written with its zone (Z, +01:00, -0500, UTC, GMT, Go's `+0100 CET`, an IANA name) or as an epoch number
-- says which instant it is.
CREATE OR REPLACE TEMP MACRO tt_has_zone(s) AS
    regexp_matches(s, '(?i)([0-9]z|utc|gmt|[+-][0-9]{2}(:?[0-9]{2})?( [a-z]+)?|[a-z]+/[a-z_]+)$')
    OR regexp_full_match(s, '-?[0-9]{9,19}(\.[0-9]+)?') OR starts_with(s, '{') OR tt_abbrev(s) <> s;
-- Times without a zone are UTC, unless the ingest was told the zone the export wrote them in (`tt_tz`, from
-- --timezone: Kibana's and Splunk's CSVs, for one, write the browser's local time and no zone). Without it this
-- is one test per batch of rows.
CREATE OR REPLACE TEMP MACRO tt_zoned(t, s) AS
    CASE WHEN getvariable('tt_tz') IS NULL OR t IS NULL OR tt_has_zone(s) THEN t
         ELSE timezone('UTC', timezone(getvariable('tt_tz')::VARCHAR, t)) END;
-- A value outside 1990-2200 is not a time of a notification (a counter, a status code...).
CREATE OR REPLACE TEMP MACRO tt_time(s) AS
    list_filter([tt_zoned(tt_time_any(tt_value(s)), tt_value(s))],
                lambda t: t BETWEEN TIMESTAMP '1990-01-01' AND TIMESTAMP '2200-01-01')[1];
-- Token-like runs of 16+ characters are masked too. Two of Tyk's own field names are that long: they are kept
-- readable (a person reading "missing token field old_refresh_token" needs to see which key is which), by
-- breaking them with \x01 around the second pass and taking it out again.
CREATE OR REPLACE TEMP MACRO tt_mask(s) AS
    replace(replace(
        regexp_replace(
            replace(replace(
                regexp_replace(s, '("?(auth_code|code|new_oauth_token|refresh_token|old_refresh_token|access_token|token)"?\s*[:=]\s*"?)[^",}\s]+', '\1***', 'gi'),
                'notification_type', 'notification\x01type'), 'old_refresh_token', 'old_refresh\x01token'),
            '[A-Za-z0-9+/_=-]{16,}', '***', 'g'),
        'notification\x01type', 'notification_type'), 'old_refresh\x01token', 'old_refresh_token');
CREATE OR REPLACE TEMP MACRO tt_type_name(t) AS
    CASE t WHEN 'OBJECT' THEN 'an object' WHEN 'ARRAY' THEN 'an array' WHEN 'BOOLEAN' THEN 'a boolean'
           ELSE 'a number' END;
"""

MACROS = MACROS.replace(
    "MAP {ZONE_ABBREVIATIONS}", "MAP {" + ", ".join(f"'{k}': '{v}'" for k, v in ZONE_ABBREVIATIONS.items()) + "}"
).replace("{LITERAL_FIELDS}", literal_sql("s"))

EXCERPT_CHARS = 240


def install_macros(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute(MACROS)
    cur.execute(fingerprint.SQL_MACROS)


def _field_check(i: int, name: str) -> str:
    # A JSON string starts with a quote; testing that is much cheaper than json_type() on every field.
    return (f"WHEN v[{i}] IS NOT NULL AND NOT starts_with(v[{i}]::VARCHAR, '\"') AND v[{i}]::VARCHAR <> 'null' "
            f"THEN 'wrong type: {name} is ' || tt_type_name(json_type(v[{i}]))")


# $key: the fingerprint key; $source_id: which source of this run. The relation is spliced in as {rel}.
NORMALIZE = f"""
-- NOT MATERIALIZED: each CTE is a step of one projection; a materialised one would hold raw tokens (above).
WITH x AS NOT MATERIALIZED (
    SELECT record_no, raw, err, reason, time_raw, identity_raw,
           CASE WHEN reason IS NULL AND err IS NULL THEN v END AS v
    FROM {{rel}}
), f AS NOT MATERIALIZED (
    SELECT *, lower(trim(v[1] ->> '$')) AS ntype,  -- (a char(n) column pads it: 'new       ')
           tt_value(v[2] ->> '$') AS auth_code, tt_value(v[3] ->> '$') AS access_token,
           tt_value(v[4] ->> '$') AS refresh_token, tt_value(v[5] ->> '$') AS old_refresh_token
    FROM x
), c AS NOT MATERIALIZED (
    SELECT *, CASE
        WHEN reason IS NOT NULL THEN reason
        WHEN err IS NOT NULL THEN err
        -- v holds JSON as json_extract writes it (minified): a string starts with a quote, null is 'null'
        WHEN v[1] IS NULL OR v[1]::VARCHAR = 'null' THEN 'missing notification_type'
        WHEN NOT starts_with(v[1]::VARCHAR, '"') THEN 'wrong type: notification_type is ' || tt_type_name(json_type(v[1]))
        WHEN ntype NOT IN ('new', 'refresh') THEN 'unknown notification_type ' || tt_mask(left(v[1] ->> '$', 40))
        {_field_check(2, "auth_code")}
        {_field_check(3, "new_oauth_token")}
        {_field_check(4, "refresh_token")}
        {_field_check(5, "old_refresh_token")}
        WHEN (access_token IS NULL OR ntype = 'refresh' AND old_refresh_token IS NULL)
             AND regexp_matches(raw, '\\[(FILTERED|REDACTED)\\]|<redacted>', 'i')
            THEN 'token values redacted by the logger ([FILTERED], [REDACTED]): a chain cannot be followed without them'
        WHEN access_token IS NULL THEN 'missing token field new_oauth_token'
        WHEN ntype = 'refresh' AND old_refresh_token IS NULL
            THEN 'missing token field old_refresh_token (a refresh must name the token it used)'
        END AS why
    FROM f
), d AS NOT MATERIALIZED (
    SELECT $source_id AS source_id, record_no, why AS reason,
           -- a rejected record keeps a masked excerpt, and an id that tells it apart from the same text elsewhere
           CASE WHEN why IS NOT NULL THEN left(tt_mask(raw), {EXCERPT_CHARS}) END AS excerpt,
           CASE WHEN why IS NOT NULL THEN tt_fp($key, record_no::VARCHAR || '|' || raw) END AS quarantine_id,
           CASE WHEN why IS NULL THEN ntype END AS notification_type,
           CASE WHEN why IS NULL THEN tt_fp($key, auth_code) END AS auth_code_fp,
           CASE WHEN why IS NULL THEN tt_fp($key, access_token) END AS access_token_fp,
           CASE WHEN why IS NULL THEN tt_fp($key, refresh_token) END AS refresh_token_fp,
           CASE WHEN why IS NULL THEN tt_fp($key, old_refresh_token) END AS old_refresh_token_fp,
           CASE WHEN why IS NULL THEN tt_time(time_raw) END AS received_at, time_raw,
           CASE WHEN why IS NULL THEN tt_value(identity_raw) END AS identity
    FROM c
), e AS NOT MATERIALIZED (
    SELECT * EXCLUDE (time_raw),
           tt_event_id(notification_type, auth_code_fp, access_token_fp, refresh_token_fp, old_refresh_token_fp)
               AS event_id,
           -- a time that is there but unreadable: the record still counts, as untimed, and is reported
           reason IS NULL AND time_raw IS NOT NULL AND received_at IS NULL AS bad_time,
           -- a time read without a zone (as UTC, or in --timezone): the report says how many, and which zone
           CASE WHEN received_at IS NULL OR ends_with(time_raw, 'Z') THEN false
                ELSE NOT tt_has_zone(tt_value(time_raw)) END AS zoneless
    FROM d
)
-- a delivery is a payload at a time: re-reading a record, or an overlapping export, gives the same id
SELECT * EXCLUDE (bad_time, zoneless),
       tt_delivery_id(event_id, received_at) AS delivery_id, bad_time,
       NULL::INTEGER AS upstream_status,  -- set by the live receiver in relay mode
       zoneless
FROM e
"""

STAGE_COLUMNS = (
    "source_id INTEGER, record_no BIGINT, reason VARCHAR, excerpt VARCHAR, quarantine_id UHUGEINT, "
    "notification_type VARCHAR, auth_code_fp UHUGEINT, access_token_fp UHUGEINT, refresh_token_fp UHUGEINT, "
    "old_refresh_token_fp UHUGEINT, received_at TIMESTAMP, identity VARCHAR, event_id UHUGEINT, delivery_id UHUGEINT, "
    "bad_time BOOLEAN, upstream_status INTEGER, zoneless BOOLEAN"
)


def normalize_sql(relation: str) -> str:
    """The INSERT-ready SELECT over `relation` (a table name or a parenthesised subquery with alias)."""
    return NORMALIZE.format(rel=relation)
