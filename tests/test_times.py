"""Times as log platforms and loggers write them: each one, found in a record's time field, is read as UTC."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from ingest.pipeline import ingest
from tests.helpers import body, jsonl, load

# (what the record holds, the UTC time it means)
TIMES = [
    ("2026-12-03T09:00:00.123456Z", "2026-12-03 09:00:00.123456"),  # RFC 3339, the receiver's own
    ("2026-12-03T10:00:00.123+01:00", "2026-12-03 09:00:00.123000"),  # with an offset
    ("2026-12-03 09:00:00.123456", "2026-12-03 09:00:00.123456"),  # no zone: UTC
    ("2026-12-03 09:00:00,123", "2026-12-03 09:00:00.123000"),  # Python logging's comma
    ("2026-12-03 09:00:00 UTC", "2026-12-03 09:00:00"),  # Splunk's display form
    ("2026-12-03 09:00:00.123456 +0000 UTC", "2026-12-03 09:00:00.123456"),  # Go time.Time.String()
    ("2026-12-03 10:00:00.123456789 +0100 CET", "2026-12-03 09:00:00.123456"),  # ... nanoseconds, a named zone
    ("1764752400", "2025-12-03 09:00:00"),  # epoch seconds
    ("1764752400.5", "2025-12-03 09:00:00.500000"),  # epoch seconds with a fraction (zap's ts)
    ("1764752400123", "2025-12-03 09:00:00.123000"),  # epoch ms (CloudWatch, Datadog)
    ("1764752400123456789", "2025-12-03 09:00:00.123456"),  # epoch ns (Loki API), truncated like ISO's ns
    ("2025-12-03T09:00:00.123456789Z", "2025-12-03 09:00:00.123456"),  # ... and as logcli prints the same time
    ("1764752400596125375", "2025-12-03 09:00:00.596125"),  # (float division made this one .596126)
    ("1764752400123.5", "2025-12-03 09:00:00.123500"),  # epoch ms with a fraction (JavaScript's performance time)
    ("1764752400123456", "2025-12-03 09:00:00.123456"),  # epoch us
    ("Dec 3, 2026 @ 09:00:00.123", "2026-12-03 09:00:00.123000"),  # Kibana Discover CSV
    ("03/Dec/2026:10:00:00 +0100", "2026-12-03 09:00:00"),  # Apache / nginx access log
    ("Thu, 03 Dec 2026 09:00:00 GMT", "2026-12-03 09:00:00"),  # RFC 1123 (HTTP Date)
    ("12/03/2026 09:00:00", "2026-12-03 09:00:00"),  # US display form
    ("12/3/2026, 9:00:00.123 AM", "2026-12-03 09:00:00.123000"),  # Azure portal's CSV export
    ("2026-12-31T23:59:60.330127Z", "2027-01-01 00:00:00.330127"),  # a leap second: the next second's start
    ("Dec 3, 2026 @ 09:00:00.123456789", "2026-12-03 09:00:00.123456"),  # Kibana CSV of a date_nanos field
    ("2026-12-03 10:00:00 CET", "2026-12-03 09:00:00"),  # journalctl's local time, a zone abbreviation
    ("2026-07-03 11:00:00.5 CEST", "2026-07-03 09:00:00.500000"),  # ... in summer (DuckDB alone cannot read it)
    ("2026-07-03 10:00:00 BST", "2026-07-03 09:00:00"),  # British Summer Time, not Bangladesh's
    ("2026-12-03 01:00:00 PST", "2026-12-03 09:00:00"),
    ("03-Dec-2026 09:00:00 UTC", "2026-12-03 09:00:00"),  # PHP's error_log
    ("03-Dec-2026 09:00:00", "2026-12-03 09:00:00"),
    ("Dec 3, 2026 9:00:00 AM", "2026-12-03 09:00:00"),  # java.util.logging's SimpleFormatter
    ("03-Dec-2026 10:00:00 Europe/Berlin", "2026-12-03 09:00:00"),  # ... in the zone of PHP's date.timezone
    ("2026-12-03 04:00:00 America/New_York", "2026-12-03 09:00:00"),  # an ISO time and a zone's name
]


@pytest.mark.parametrize(("text", "utc"), TIMES, ids=[t for t, _ in TIMES])
def test_time_field_is_read_as_utc(store, text, utc):
    load(store, [{"time": text, "body": body("new", "T1", "R1", code="A1")}])
    got = store.cursor().execute("SELECT strftime(first_seen, '%Y-%m-%d %H:%M:%S.%f') FROM events").fetchall()
    want = utc if "." in utc else utc + ".000000"
    assert got == [(want,)]


# (a record's time field as some platform names it, its value, the UTC time it means)
TIME_FIELDS = [
    ("__REALTIME_TIMESTAMP", "1796288400123213", "2026-12-03 09:00:00.123213"),  # journalctl -o json (us)
    ("_SOURCE_REALTIME_TIMESTAMP", "1796288400123213", "2026-12-03 09:00:00.123213"),  # ... when the process logged
    ("TimeGenerated [UTC]", "12/3/2026, 9:00:00.123 AM", "2026-12-03 09:00:00.123000"),  # Azure portal CSV header
    ("TimeGenerated", "2026-12-03T09:00:00.123Z", "2026-12-03 09:00:00.123000"),  # Azure Log Analytics API
    ("_messagetime", 1796288400123, "2026-12-03 09:00:00.123000"),  # Sumo Logic (epoch ms)
    ("generated_at", "2026-12-03T09:00:00Z", "2026-12-03 09:00:00.000000"),  # Papertrail
    ("dt", "2026-12-03 09:00:00.123456 UTC", "2026-12-03 09:00:00.123456"),  # Better Stack
    ("asctime", "2026-12-03 09:00:00,123", "2026-12-03 09:00:00.123000"),  # python-json-logger
    ("timeMillis", 1796288400123, "2026-12-03 09:00:00.123000"),  # log4j2's JsonLayout
    ("instant", {"epochSecond": 1796288400, "nanoOfSecond": 123456789}, "2026-12-03 09:00:00.123456"),  # ... 2.11+
    ("messageTime", 1796288400123, "2026-12-03 09:00:00.123000"),  # Sumo Logic's forwarding, search job API
    ("timeUnixNano", "1796288400123456789", "2026-12-03 09:00:00.123456"),  # OpenTelemetry
]


@pytest.mark.parametrize(("key", "value", "utc"), TIME_FIELDS, ids=[k for k, _, _ in TIME_FIELDS])
def test_time_field_names_of_log_platforms(store, key, value, utc):
    load(store, [{key: value, "MESSAGE": "hook", "body": body("new", "T1", "R1", code="A1")}])
    got = store.cursor().execute("SELECT strftime(first_seen, '%Y-%m-%d %H:%M:%S.%f') FROM events").fetchall()
    assert got == [(utc,)]


def test_the_process_time_wins_over_the_journal_time(store):
    load(store, [{"__REALTIME_TIMESTAMP": "1796288400900000", "_SOURCE_REALTIME_TIMESTAMP": "1796288400123213",
                  "body": body("new", "T1", "R1", code="A1")}])
    got = store.cursor().execute("SELECT strftime(first_seen, '%H:%M:%S.%f') FROM events").fetchall()
    assert got == [("09:00:00.123213",)]


def _syslog_form(t) -> str:
    return f"{t:%b} {t.day:2d} {t:%H:%M:%S}"  # RFC 3164: "Dec  3 09:00:00", day padded with a space


@pytest.mark.parametrize("days", [-2, 20], ids=["two-days-ago", "three-weeks-ahead"])
def test_classic_syslog_times_take_the_latest_year_not_in_the_future(store, days):
    # rsyslog's traditional format has no year: as rsyslog and Logstash do, the current year, unless that puts
    # the time more than a day ahead of now (a December line read in January belongs to last year).
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    when = now + timedelta(days=days)
    if (when.month, when.day) == (2, 29):
        when += timedelta(days=1)
    want = when.replace(year=now.year)
    if want > now + timedelta(days=1):
        want = want.replace(year=now.year - 1)
    assert (want < now) if days < 0 else (want.year < when.year)  # three weeks ahead: a year back
    lines = f"{_syslog_form(when)} hook-1 tyk-hook[812]: tyk oauth notification body=" + json.dumps(
        body("new", "T1", "R1", code="A1")) + "\n"
    ingest(store, [("syslog", io.BytesIO(lines.encode()))])
    got = store.cursor().execute("SELECT first_seen FROM events").fetchall()
    assert got == [(want,)]


def _syslog_file(tmp_path, name, stamps, written):
    """A syslog file with one notification per (month, day, time) stamp, last written at `written` (UTC)."""
    lines = "".join(
        f"{stamp} hook-1 tyk-hook[812]: tyk oauth notification body="
        + json.dumps(body("new", f"T{i}", f"R{i}", code=f"A{i}")) + "\n"
        for i, stamp in enumerate(stamps)
    )
    path = tmp_path / name
    path.write_text(lines)
    epoch = written.replace(tzinfo=UTC).timestamp()
    os.utime(path, (epoch, epoch))
    return path


def test_classic_syslog_years_come_from_when_the_file_was_written(store, tmp_path):
    # A file last written on 2 January 2024: its December lines are from 2023, its January ones from 2024, and
    # 29 February (no such day in 2023) from the leap year 2020 -- whatever today's date is.
    path = _syslog_file(tmp_path, "syslog.1", ["Dec 31 23:00:00", "Jan  2 11:00:00", "Feb 29 08:00:00"],
                        datetime(2024, 1, 2, 12, 0))
    report = ingest(store, [path])
    assert report.files[0].untimed == 0
    got = sorted(t for (t,) in store.cursor().execute("SELECT first_seen FROM events").fetchall())
    assert got == [datetime(2020, 2, 29, 8), datetime(2023, 12, 31, 23), datetime(2024, 1, 2, 11)]
    # read again: the same times, so nothing new (today's date plays no part, so next year's would not either)
    again = ingest(store, [path])
    assert (again.files[0].new_deliveries, again.files[0].duplicate_deliveries) == (0, 3)
    assert store.cursor().execute("SELECT count(*) FROM deliveries").fetchall() == [(3,)]


# -- times written without a zone, read in the zone the ingest is given (--timezone) -------------------------

# The TIMES above that carry no zone: Kibana's and Splunk's CSVs, Python logging, US display forms. Only these
# move; a time with a zone, an offset or a zone name, and an epoch number, is one instant whatever the option.
ZONELESS = {"2026-12-03 09:00:00.123456", "2026-12-03 09:00:00,123", "Dec 3, 2026 @ 09:00:00.123",
            "12/03/2026 09:00:00", "12/3/2026, 9:00:00.123 AM", "Dec 3, 2026 @ 09:00:00.123456789",
            "03-Dec-2026 09:00:00", "Dec 3, 2026 9:00:00 AM"}


@pytest.mark.parametrize(("text", "utc"), TIMES, ids=[t for t, _ in TIMES])
def test_times_without_a_zone_are_read_in_the_given_zone(store, text, utc):
    report = ingest(store, [("export.jsonl", io.BytesIO(jsonl([{"time": text, "body": body("new", "T1", "R1", code="A1")}])))],
                    timezone="Europe/Berlin")
    got = store.cursor().execute("SELECT first_seen FROM events").fetchall()[0][0]
    want = datetime.fromisoformat(utc) - (timedelta(hours=1) if text in ZONELESS else timedelta(0))  # CET: UTC+1
    assert got == want
    assert report.timezone == "Europe/Berlin"
    assert report.files[0].zoneless_times == (1 if text in ZONELESS else 0)


def test_the_zone_follows_summer_time_and_utc_stays_the_default(store):
    records = [{"time": "2026-07-01 12:00:00", "body": body("new", "S1", "SR1", code="SA1")},
               {"time": "2026-12-01 12:00:00", "body": body("new", "W1", "WR1", code="WA1")}]
    report = ingest(store, [("a.jsonl", io.BytesIO(jsonl(records)))], timezone="america/new_york")  # any case
    assert report.timezone == "America/New_York"
    got = sorted(t for (t,) in store.cursor().execute("SELECT first_seen FROM events").fetchall())
    assert got == [datetime(2026, 7, 1, 16), datetime(2026, 12, 1, 17)]  # EDT is UTC-4, EST UTC-5

    other = [{"time": "2026-12-02 12:00:00", "body": body("new", "U1", "UR1", code="UA1")}]
    report = ingest(store, [("b.jsonl", io.BytesIO(jsonl(other)))])
    assert (report.timezone, report.files[0].zoneless_times) == ("UTC", 1)
    assert store.cursor().execute("SELECT first_seen FROM events WHERE first_seen::DATE = '2026-12-02'").fetchall() \
        == [(datetime(2026, 12, 2, 12),)]


def test_an_unknown_zone_is_refused_before_anything_is_read(store):
    with pytest.raises(ValueError, match="Mars/Olympus"):
        ingest(store, [("a.jsonl", io.BytesIO(b"not read"))], timezone="Mars/Olympus")
    assert store.cursor().execute("SELECT count(*) FROM ingest_files").fetchall() == [(0,)]


# (a text line's start, as a tool writes it, and the UTC time it means); the file was last written on 4 Dec 2026
TEXT_LINES = [
    # journalctl -o short-precise: classic syslog with microseconds
    ("Dec  3 09:00:00.123456 hook-1 tyk-hook[812]: tyk oauth notification body=", "2026-12-03 09:00:00.123456"),
    # Papertrail's archive (TSV, no header): a 19-digit event id, then the time with its offset
    ("1865403779365309794\t2026-12-03 01:00:00 -0800\t2026-12-03 01:00:01 -0800\t7312094\thook-1\t203.0.113.24\t"
     "User\tInfo\ttyk-hook\ttyk oauth notification ", "2026-12-03 09:00:00.000000"),
    # ... and an epoch at the start of a line still reads when nothing else in the line is a time
    ("1796288400.123456 tyk-hook tyk oauth notification ", "2026-12-03 09:00:00.123456"),
    # journalctl -o short-full (and the default with --utc off): local time with the zone's abbreviation
    ("Thu 2026-12-03 10:00:00 CET hook-1 tyk-hook[812]: tyk oauth notification body=", "2026-12-03 09:00:00.000000"),
    # kubectl logs --timestamps: kubelet's time, then the line as the receiver (Python logging) wrote it: its own
    # time is the receiver's, 1.6 s before kubelet's
    ("2026-12-03T09:00:01.745496394Z 2026-12-03 09:00:00,123 INFO hook tyk oauth notification body=",
     "2026-12-03 09:00:00.123000"),
    # a CRI log file (containerd, CRI-O): time, stream, full-line tag, then the receiver's line
    ("2026-12-03T09:00:01.745496394+00:00 stdout F 2026-12-03T09:00:00.123456Z INFO tyk oauth notification ",
     "2026-12-03 09:00:00.123456"),
    # PHP's error_log (date.timezone = UTC)
    ("[03-Dec-2026 09:00:00 UTC] tyk oauth notification ", "2026-12-03 09:00:00.000000"),
    # ... with date.timezone set to a region: its name after the time
    ("[03-Dec-2026 10:00:00 Europe/Berlin] tyk oauth notification ", "2026-12-03 09:00:00.000000"),
    # java.util.logging: the time on a line of its own, the message on the next
    ("Dec 3, 2026 9:00:00 AM com.example.hook.HookHandler handle\nINFO: tyk oauth notification ",
     "2026-12-03 09:00:00.000000"),
]


@pytest.mark.parametrize(("start", "utc"), TEXT_LINES,
                         ids=["short-precise", "papertrail", "epoch-first", "short-full", "kubectl-timestamps", "cri",
                              "php-error-log", "php-error-log-zone-name", "java-util-logging"])
def test_times_in_text_lines(store, tmp_path, start, utc):
    path = tmp_path / "hook.log"
    path.write_text(start + json.dumps(body("new", "T1", "R1", code="A1")) + "\n")
    written = datetime(2026, 12, 4, 12, tzinfo=UTC).timestamp()
    os.utime(path, (written, written))
    report = ingest(store, [path])
    assert (report.files[0].rejected, report.files[0].untimed) == (0, 0), report.files[0]
    got = store.cursor().execute("SELECT strftime(first_seen, '%Y-%m-%d %H:%M:%S.%f') FROM events").fetchall()
    assert got == [(utc,)]
