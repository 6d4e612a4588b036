"""Find the Tyk notification inside a log record, with its time and its identity.

Log platforms put the receiver's record in different places: the record itself, a nested object (`body`,
`payload`, `jsonPayload`, `_source`, `attributes`, ...), a JSON string in a text field (`message`, `line`,
`log`, `_raw`, `textPayload`, a CSV column), a `[timestamp, line]` pair (Loki), flattened dotted CSV columns
(`body.auth_code`, Kibana), or after a text prefix (`2026-12-04T10:00:00Z INFO ... {json}`).

Two tiers, one answer:

* `locate()` is the general locator: a breadth-first search of one record (Python). It is the reference and
  handles every record the fast path cannot.
* `learn_layout()` runs `locate()` on a sample of a file and returns the most common `Layout`: the paths
  where that file keeps the notification, the time and the identity. `Layout.sql()` compiles those paths to
  DuckDB expressions, so the bulk of a file is located inside DuckDB, vectorised. Rows the layout does not
  fit fall back to `locate()`.

The time is the one nearest to the notification: the receiver's own field (e.g. `received_at`) wins over a
log platform's outer timestamp, which wins over the platform's ingestion time. Times are returned raw;
`ingest.normalize` parses them (one parser, in SQL, for both tiers).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

NOTIFICATION_FIELDS = ("notification_type", "auth_code", "new_oauth_token", "refresh_token", "old_refresh_token")
TOKEN_FIELDS = NOTIFICATION_FIELDS[1:]
# The reason given to a record with no trace of a notification: in a receiver's own log, the lines it writes
# about other things (start-up, health checks, access lines).
NO_NOTIFICATION = "no Tyk notification found in the record"
_MARKERS = ("notification_type", "oauth_token", "refresh_token")

# Nearest level first; inside a level, this order. Compared lower-cased.
TIME_KEYS = (
    "received_at", "receivedat", "received", "receive_time", "received_time", "time", "timestamp",
    "@timestamp", "ts", "_time", "datetime", "date", "@t", "eventtime", "event_time", "logged_at",
    "created_at", "time_local",
    # python-json-logger's usual format string, log4j2's JsonLayout (epoch ms)
    "asctime", "timemillis",
    # Azure Monitor, Sumo Logic, Papertrail, Better Stack
    "timegenerated", "_messagetime", "generated_at", "dt",
    # systemd's journal (`journalctl -o json`): when the process logged it, else when the journal got it (us)
    "_source_realtime_timestamp", "__realtime_timestamp",
    # OpenTelemetry's log records (OTLP JSON, the collector's file exporter): epoch ns as a string
    "timeunixnano",
    # Sumo Logic's data forwarding and search job API (epoch ms)
    "messagetime",
)
# A log platform's own ingestion time: used only when no level has one of the above.
INGEST_TIME_KEYS = (
    "ingestiontime", "receivetimestamp", "_indextime", "observedtimestamp", "@ingested", "ingested", "_receipttime",
    "observedtimeunixnano", "receipttime",
)
# (`usr`: Datadog's user attributes; `enduser`: OpenTelemetry's, as `enduser.id`)
IDENTITY_KEYS = ("user_id", "userid", "user", "sub", "identity", "username", "user_name", "alias", "usr", "enduser")
_IDENTITY_SUBKEYS = ("id", "name", "username", "email", "sub")

_TIME_KEY_RANK = {k: i for i, k in enumerate(TIME_KEYS)}
_INGEST_KEY_RANK = {k: i for i, k in enumerate(INGEST_TIME_KEYS)}
_IDENTITY_RANK = {k: i for i, k in enumerate(IDENTITY_KEYS)}

# Zone abbreviations a server's local time is written with (read in
# text here, and as offsets by `ingest.normalize`), and their offsets: only those with one common meaning.
ZONE_ABBREVIATIONS = {
    "WET": "+00:00", "WEST": "+01:00", "BST": "+01:00", "CET": "+01:00", "CEST": "+02:00", "EET": "+02:00",
    "EEST": "+03:00", "MSK": "+03:00", "EST": "-05:00", "EDT": "-04:00", "CDT": "-05:00", "MST": "-07:00",
    "MDT": "-06:00", "PST": "-08:00", "PDT": "-07:00", "AKST": "-09:00", "AKDT": "-08:00", "HST": "-10:00",
    "JST": "+09:00", "KST": "+09:00", "HKT": "+08:00", "SGT": "+08:00", "AWST": "+08:00", "ACST": "+09:30",
    "ACDT": "+10:30", "AEST": "+10:00", "AEDT": "+11:00", "NZST": "+12:00", "NZDT": "+13:00",
}

# A timestamp in free text: ISO-like dates (also Go's log package's 2026/12/03 09:00:00.123456, and Papertrail's
# `2026-11-17 00:15:02 -0800`), Apache style, or a classic syslog line's `Dec  3 09:00:00` at the start (no
# year: see tt_yearless; journalctl's short-precise adds microseconds). Failing those (later patterns are tried
# only where the earlier ones find nothing): a bare epoch number at the start (only then: Papertrail's lines
# start with a 19-digit event id, before the time), or the epoch of a Fluent Bit `out_file` line,
# `tag: [1764752400.123456000, {...}]`.
TIME_IN_TEXT = (
    r"(\d{4}(?:-\d{2}-|/\d{2}/)\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z| ?[+-]\d{2}:?\d{2}\b| ?(?:UTC|GMT|"
    + "|".join(ZONE_ABBREVIATIONS) + r")\b)?"
    r"|\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2}(?: [+-]\d{4})?"
    # PHP's error_log: [17-Nov-2026 09:15:02 UTC], or the zone of PHP's date.timezone ([... Europe/Berlin])
    r"|\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}(?: UTC\b| [A-Z][A-Za-z_]+/[A-Za-z_/+-]+)?"
    r"|^[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}(?:\.\d+)?\b"
    # java.util.logging's SimpleFormatter: Nov 17, 2026 8:01:33 AM
    r"|^[A-Z][a-z]{2} \d{1,2}, \d{4} \d{1,2}:\d{2}:\d{2} [AP]M\b)"
)
# A container runtime's time in front of the line a program wrote with its own time (`kubectl logs --timestamps`,
# `docker logs -t`, CRI log files' `<time> stdout F <line>`): the program's time is the receiver's, tried first.
_ISO_TIME = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z| ?[+-]\d{2}:?\d{2}\b)?"
RUNTIME_THEN_TIME_IN_TEXT = (r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2}) "
                             r"(?:(?:stdout|stderr) [FP] )?\[?(" + _ISO_TIME + ")")
# Failing any time before the JSON: a logfmt time key after it (logfmt writers that sort their keys put
# `timestamp=` after `message=`: Vector's logfmt encoding)
# (or a Ruby hash's: Logstash's rubydebug writes `"@timestamp" => 2026-11-17T08:01:33.400120Z`)
TIME_KEY_IN_TEXT = r"\b(?:time|timestamp|ts|datetime)(?:=|\"? ?=> ?)\"?(" + _ISO_TIME + ")"
EPOCH_IN_TEXT = r"^(\d{10}(?:\.\d+)?|\d{13,19})\b"
TAGGED_EPOCH_IN_TEXT = r"^[\w.\-/]+: \[(\d{10}(?:\.\d+)?|\d{13,19})\b"
# (a terminal's colour codes may sit around a key: logrus on a TTY writes `\x1b[36muser_id\x1b[0m=alice`; an object
# printer quotes it: Python's repr `'user_id': 'alice'`, Ruby's `"user_id" => "alice"`)
IDENTITY_IN_TEXT = (r"(?:\b|\x1b\[[\d;]*m)(?:user_id|user|sub|identity|username|alias)(?:(?:\x1b\[[\d;]*m|')?[=:]|\"? ?=>)"
                    r"\s*[\"']?([^\s\"',}\x1b]+)")
# Where a text line's time is looked for, in this order (the SQL of a layout and `_time_in_text` alike): in the
# text before the JSON, then anywhere in the line.
_TIME_PATTERNS = (RUNTIME_THEN_TIME_IN_TEXT, TIME_IN_TEXT, EPOCH_IN_TEXT, TAGGED_EPOCH_IN_TEXT)
_TIME_ANYWHERE = (TIME_KEY_IN_TEXT,)
_TIME_RES = [re.compile(p) for p in _TIME_PATTERNS]
_TIME_ANYWHERE_RES = [re.compile(p) for p in _TIME_ANYWHERE]
_IDENTITY_RE = re.compile(IDENTITY_IN_TEXT)
_TIME_ISH = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:|\d{2}-[A-Z][a-z]{2}-\d{4} |\d{2}/[A-Z][a-z]{2}/\d{4}:")

_decoder = json.JSONDecoder()

# Path steps: ("k", key) object member, ("i", n) array element, ("p",) parse the JSON inside a string (after a
# text prefix), ("q",) parse the JSON that a text line carries as a quoted, backslash-escaped string value
# (logfmt / Go slog: body="{\"auth_code\":...}"), ("r",) read the fields an object printer wrote
# (`_embedded_literal`), ("kv",) read a list of key/value pairs as an object (`_Pairs`).
Step = tuple


@dataclass(frozen=True)
class Layout:
    notif: tuple[Step, ...]
    flat_prefix: str | None  # set when the notification is spread over dotted keys of one object
    time: tuple[Step, ...] | None
    time_in_text: bool  # the time is in the text before the JSON of the string at `time`
    # Identity fields are optional per record (often only on logins): every place seen in the sample is tried.
    identities: tuple[tuple[tuple[Step, ...], bool], ...] = ()
    listed: bool = False  # the flattened fields' values are one-item lists (Elasticsearch `fields`)

    def sql(self, raw: str = "raw") -> dict[str, str]:
        """DuckDB expressions over column `raw`: `v` (a JSON[] of the five Tyk fields, in NOTIFICATION_FIELDS
        order), `time_raw` and `identity_raw` (VARCHAR). They may refer to `tt_all`, which the caller computes
        first from the expression `all` (one parse of the record for every path)."""
        # flattened exports (Kibana CSV) keep dotted keys like "body.auth_code" in the object at `notif`
        item = (("i", 0),) if self.listed else ()
        field_steps = [(*self.notif, ("k", (self.flat_prefix or "") + f), *item) for f in NOTIFICATION_FIELDS]
        extra = []
        if self.time is not None and not self.time_in_text:
            extra.append(self.time)
        extra += [steps for steps, in_text in self.identities if not in_text]
        if all(not _has_parse(steps) for steps in (*field_steps, *extra)):
            # The common case: everything is plain JSON paths into the record, so one parse serves them all.
            paths = ", ".join(_sql_str(_json_path(steps)) for steps in (*field_steps, *extra))
            every = f"json_extract({raw}, [{paths}])"
            v = "tt_all[1:5]"
            n = 6
            time = "NULL::VARCHAR"
            if self.time is not None:
                if self.time_in_text:
                    time = _sql_text_field(raw, self.time, True, *_TIME_PATTERNS, anywhere=_TIME_ANYWHERE)
                else:
                    time, n = f"tt_all[{n}] ->> '$'", n + 1
            found = []
            for steps, in_text in self.identities:
                if in_text:
                    found.append(_sql_text_field(raw, steps, True, IDENTITY_IN_TEXT, anywhere=(IDENTITY_IN_TEXT,)))
                else:
                    found.append(f"tt_all[{n}] ->> '$'")
                    n += 1
            identity = f"coalesce({', '.join(found)})" if found else "NULL::VARCHAR"
            return {"all": every, "v": v, "time_raw": time, "identity_raw": identity}
        v = _sql_values(raw, self.notif, [f[-1] for f in field_steps])
        time = _sql_text_field(raw, self.time, self.time_in_text, *_TIME_PATTERNS, anywhere=_TIME_ANYWHERE)
        found = [_sql_text_field(raw, steps, in_text, IDENTITY_IN_TEXT, anywhere=(IDENTITY_IN_TEXT,))
                 for steps, in_text in self.identities]
        identity = f"coalesce({', '.join(found)})" if found else "NULL::VARCHAR"
        return {"all": "NULL", "v": v, "time_raw": time, "identity_raw": identity}


def _has_parse(steps) -> bool:
    return any(step[0] in _PARSE_STEPS for step in steps)


@dataclass
class Located:
    notification: dict | None = None
    time: str | None = None
    identity: str | None = None
    reason: str | None = None
    layout: Layout | None = None


def locate(text: str) -> Located:
    """Find the notification in one record's text (a JSON value, or a text line that carries JSON)."""
    stripped = text.strip()
    if not stripped:
        return Located(reason="empty line: no record")
    try:
        root = json.loads(stripped)
        root_is_text = False
    except ValueError as e:
        root, root_is_text = stripped, True
        if e.msg == "Extra data" and stripped[0] == "{" and stripped[e.pos :].lstrip()[:1] == "{" \
                and any(m in stripped[e.pos :] for m in _MARKERS):
            # a second record after the first on the same line: files joined with `cat` when one did not end with
            # a line break, or records parted by a bare CR. Both are kept aside, not the first alone.
            return Located(reason=f"two records on one line: another begins at column {e.colno} (files joined "
                                  "without a line break between them?)")
        # (a text line that starts with a bracketed time, `[2026-11-17T07:59:58,102][INFO ]`, is not JSON)
        log_line = stripped[0] == "[" and _TIME_ISH.match(stripped, 1) is not None
        if stripped[0] in "{[" and not log_line and not _embedded_json(stripped) and not _embedded_literal(stripped):
            where = f"line {e.lineno}, column {e.colno}" if e.lineno > 1 else f"column {e.colno}"
            # an error at the very end (or a string never closed) is a record cut short; elsewhere, something in
            # it is not JSON (a hand-redacted `"auth_code": <redacted>`)
            cut = e.pos >= len(stripped) - 1 or e.msg.startswith("Unterminated string")
            return Located(reason=f"invalid JSON: {e.msg.removesuffix(' at')} at {where}{' (truncated?)' if cut else ''}")
    found = _search(root, root_is_text)
    if found is None:
        if any(m in stripped for m in _MARKERS) and root_is_text:
            return Located(reason="invalid JSON: a notification is there but cannot be parsed (truncated?)")
        if any(m in stripped for m in _MARKERS):
            return Located(reason="Tyk field names are there, but not as a notification (notification_type, or two "
                                  "token fields, in one object or under one flattened prefix)")
        return Located(reason=NO_NOTIFICATION)
    notif, notif_steps, flat_prefix, listed, chain = found
    if flat_prefix:
        chain = [*chain, *_flat_levels(chain[-1][0], flat_prefix, notif_steps)]
    time, time_steps, time_in_text = _nearest(chain, _time_candidate)
    if time is None:
        time, time_steps, time_in_text = _nearest(chain, _ingest_time_candidate)
    identity, id_steps, id_in_text = _nearest(chain, _identity_candidate)
    # (a user found in the text of a line that is the record itself has an empty path: kept too)
    ids = ((id_steps, id_in_text),) if identity is not None else ()
    layout = Layout(notif_steps, flat_prefix, time_steps, time_in_text, ids, listed)
    return Located(notification=notif, time=time, identity=identity, layout=layout)


def learn_layout(texts: Iterable[str], sample: int = 500) -> Layout | None:
    """The layout of the records in `texts`, learned from the first `sample` that hold a notification.

    The notification's place is the most common one; so is the time's (records where it is missing go
    through `locate()`); identity places are all kept, most common first.
    """
    places: Counter = Counter()
    times: Counter = Counter()
    identities: Counter = Counter()
    for i, text in enumerate(texts):
        if i >= sample:
            break
        found = locate(text).layout
        if found is None:
            continue
        place = (found.notif, found.flat_prefix, found.listed)
        places[place] += 1
        times[(*place, found.time, found.time_in_text)] += 1
        for id_place in found.identities:
            identities[(*place, id_place)] += 1
    if not places:
        return None
    place = places.most_common(1)[0][0]
    timed = [(k[3], k[4]) for k, _ in times.most_common() if k[:3] == place and k[3] is not None]
    time, time_in_text = timed[0] if timed else (None, False)
    ids = tuple(k[3] for k, _ in identities.most_common() if k[:3] == place)
    notif, flat, listed = place
    return Layout(notif, flat, time, time_in_text, ids, listed)


# -- the search ----------------------------------------------------------------------------------------------

class _Text(NamedTuple):
    """The string a node was parsed out of: the text before its JSON, and all of it."""

    prefix: str
    whole: str


# A chain entry: (node, steps from the root, the text when the node was parsed out of a string).
_Chain = list[tuple[object, tuple[Step, ...], _Text | None]]


# Beside a record, never the record: Elasticsearch's `highlight` repeats matched fields as marked-up fragments
# ({"body.notification_type": ["<em>refresh</em>"]}), one level nearer than `_source.body`.
_NOT_RECORD_KEYS = frozenset({"highlight"})


def _search(root: object, root_is_text: bool):
    """Breadth-first: the shallowest notification wins. Returns (notif, steps, flat_prefix, listed, ancestor
    chain)."""
    queue: list[tuple[object, tuple[Step, ...], _Chain, str | None]] = []
    if root_is_text:
        parsed = _embedded_json(root) or _embedded_literal(root)
        if parsed is None:
            return None
        obj, prefix, kind = parsed
        queue.append((obj, ((kind,),), [], _Text(prefix, root)))
    else:
        queue.append((root, (), [], None))
    seen = 0
    while queue and seen < 2000:
        node, steps, chain, text_prefix = queue.pop(0)
        seen += 1
        here = [*chain, (node, steps, text_prefix)]
        if isinstance(node, dict):
            hit = _as_notification(node)
            if hit is not None:
                notif, flat_prefix, listed = hit
                return notif, steps, flat_prefix, listed, here
            for key, value in node.items():
                if key not in _NOT_RECORD_KEYS:
                    _enqueue(queue, value, (*steps, ("k", key)), here)
        elif isinstance(node, list):
            pairs = _Pairs.of(node)
            if pairs is not None:  # key/value pairs: searched as the object they stand for, in the list's place
                queue.append((pairs, (*steps, ("kv",)), chain, None))
                continue
            for i, value in enumerate(node[:50]):
                _enqueue(queue, value, (*steps, ("i", i)), here)
    return None


def _enqueue(queue, value, steps, chain) -> None:
    if isinstance(value, dict | list):
        queue.append((value, steps, chain, None))
    elif isinstance(value, str) and (_LITERAL_GATE.search(value) or any(m in value for m in _MARKERS)):
        parsed = (_embedded_json(value) if "{" in value else None) or _embedded_literal(value)
        if parsed is not None:
            obj, prefix, kind = parsed
            queue.append((obj, (*steps, (kind,)), chain, _Text(prefix, value)))


_PARSE_STEPS = ("p", "q", "r", "kv")
# A JSON object written as a quoted string value in a text line: "{\"auth_code\":\"...\", ...}", maybe after text
# in the same value (Vector's logfmt: message="tyk notification {\"auth_code\":...}")
QUOTED_JSON_IN_TEXT = r'"((?:[^"\\]|\\.)*?\{\\"(?:[^"\\]|\\.)*)"'
_QUOTED_JSON_RE = re.compile(QUOTED_JSON_IN_TEXT)
_RUBY_KEY = re.compile(r'"[^"\\]*" ?=>')

# A notification printed by the receiver's language rather than as JSON: Python's repr ({'auth_code': '...'}),
# Node's util.inspect ({ auth_code: '...' }), Ruby's and Elixir's inspect ("auth_code"=>"..."), PHP's print_r
# ([auth_code] => ...) and var_export, Go's %v of a map (map[auth_code:...]) and %+v of a struct ({AuthCode:...}),
# Java's and Kotlin's toString (authCode=...), C#'s ({ AuthCode = ... }), logfmt with a key per field; also a JSON
# body whose quotes nginx's access log wrote as \x22 ($request_body without escape=json). Each field is
# found by its name in any case, with or without underscores, then a separator (: = =>) and its value, quoted or
# bare (token characters only: a bare value must end where a token ends). The same patterns run in SQL
# (`tt_literal`, ingest.normalize) and here. Text that writes the type as a JSON key ("notification_type":) is
# JSON, broken: it is never read this way (a record cut short would load without its last fields).
_LITERAL_KEYS = {
    "notification_type": "notification_?type",
    "auth_code": "auth_?code",
    "new_oauth_token": "new_?o_?auth_?token",
    "refresh_token": "refresh_?token",
    "old_refresh_token": "old_?refresh_?token",
}
_LITERAL_VALUE = r"[A-Za-z0-9+/_.~-]*=*"
# a quote, escaped or not, or nginx's \x22 (its access log escapes a logged request body's quotes so)
_LITERAL_QUOTE = r"(?:\\?[\"']|\\x22)"


def _literal_pattern(key: str) -> str:
    """Group 1 the separator, group 2 the value of the field named like `key` (a _LITERAL_KEYS pattern). A bare
    value may follow spaces only when spaces come before the separator too (`[key] => value`, `Key = value`):
    in `old_refresh_token= refresh_token=` (logfmt, Go's map) the first value is empty, not the next key."""
    space, sep = r"[ \t\r\n]", "(?:=>|:|=)"
    return (r"(?i)(?:^|[^A-Za-z0-9_]|\\x22)(?:" + key + r")" + _LITERAL_QUOTE + r"?\]?"
            + f"({space}+{sep}{space}*{_LITERAL_QUOTE}?|{sep}(?:{space}*{_LITERAL_QUOTE})?)"
            + "(" + _LITERAL_VALUE + ")" + _LITERAL_QUOTE + r"?(?:[ \t\r\n,;)\]}>|&\\]|$)")


_LITERAL_JSON_KEYED = r'(?i)\\?"notification_?type\\?"[ \t\r\n]*:'
_LITERAL_RES = {field: re.compile(_literal_pattern(key)) for field, key in _LITERAL_KEYS.items()}
_LITERAL_JSON_KEYED_RE = re.compile(_LITERAL_JSON_KEYED)
_LITERAL_GATE = re.compile("(?i)" + _LITERAL_KEYS["notification_type"])


def _embedded_literal(text: str):
    """The notification an object printer wrote in `text` (see _LITERAL_KEYS): (fields found, the text before its
    first `{` or all of it, "r"), or None. A field that is not there is left out."""
    if not _LITERAL_GATE.search(text) or _LITERAL_JSON_KEYED_RE.search(text):
        return None
    found = {field: m.group(2) for field, rx in _LITERAL_RES.items() if (m := rx.search(text))}
    if "notification_type" not in found:
        return None
    start = text.find("{")
    return found, text[:start] if start >= 0 else text, "r"


def _embedded_json(text: str):
    """The JSON object in `text` (whole, or after a prefix): (object, prefix text, step kind) or None.

    The object is the first `{` that starts a non-empty JSON object; braces that do not (Loki labels
    `{app="hook"}` before the line in logcli's default output, an empty `{}`) are skipped, but a `{"` that
    fails to parse is a broken object and ends the search. Failing that, a quoted and escaped JSON string
    (`body="{\"auth_code\":...}"`, logfmt and Go's slog text handler) is unquoted and parsed.
    """
    start = text.find("{")
    for _ in range(8):
        if start < 0:
            break
        try:
            obj, _ = _decoder.raw_decode(text, start)
        except ValueError:
            after = text[start + 1 : start + 200].lstrip()
            if after.startswith('"') and not _RUBY_KEY.match(after):  # (a Ruby hash, `{"message" => ...`, is not JSON)
                return None
            obj = None
        if isinstance(obj, dict) and obj:
            return obj, text[:start], "p"
        start = text.find("{", start + 1)
    m = _QUOTED_JSON_RE.search(text) if '{\\"' in text else None
    if m is None:
        return None
    try:
        inner = json.loads('"' + m.group(1) + '"')
        obj, _ = _decoder.raw_decode(inner, max(inner.find('{"'), 0))
    except ValueError:
        return None
    return (obj, text[: text.find("{")], "q") if isinstance(obj, dict) and obj else None


# How platforms join a nested key's parts when they flatten a record: body.auth_code, body_auth_code,
# body/auth_code (Graylog pipelines, some SIEMs), body:auth_code, body__auth_code.
_FLAT_JOINERS = (".", "_", "/", ":")


def _as_notification(d: dict):
    """(notification, flat prefix, listed) when `d` is one; `listed`: the flattened values are one-item lists
    (Elasticsearch's `fields`: {"body.notification_type": ["new"], ...}). Flattened with dots (Kibana, Datadog,
    Google) or underscores (Graylog's JSON extractor, BigQuery legacy SQL: `body_notification_type`)."""
    if "notification_type" in d or sum(k in d for k in TOKEN_FIELDS) >= 2:
        return d, None, False
    for key in d:
        if isinstance(key, str) and key.endswith("notification_type") and key[-18:-17] in _FLAT_JOINERS:
            prefix = key[: -len("notification_type")]
            notif = {f: d[prefix + f] for f in NOTIFICATION_FIELDS if prefix + f in d}
            # one-item lists (Elasticsearch's `fields`), or a value repeated (Splunk extracting a JSON event twice,
            # at index and at search time: ["new", "new"])
            listed = _same_items(notif["notification_type"])
            if listed:
                notif = {f: v[0] if _same_items(v) else v for f, v in notif.items()}
            return notif, prefix, listed
    return None


def _same_items(value) -> bool:
    return isinstance(value, list) and bool(value) and all(item == value[0] for item in value[1:])


class _FlatLevel(dict):
    """The members of a flattened record under one dotted prefix, named without it: `json.received_at` as
    `received_at` at the level `json.` (a level of the record the platform flattened)."""

    def __init__(self, prefix: str, members: dict):
        super().__init__(members)
        self.prefix = prefix


def _flat_levels(node: dict, flat_prefix: str, steps) -> _Chain:
    """The levels between a flattened notification (`json.body.auth_code`) and the row that holds it, outermost
    first: the receiver's own record (`json.received_at`, `jsonPayload.user_id`; Datadog's attributes `@user_id`
    beside `@body.auth_code`), which is nearer to the notification than the platform's columns. Joined with
    underscores (BigQuery legacy SQL: `jsonPayload_received_at` beside `jsonPayload_body_auth_code`) a level's
    members cannot be told from deeper ones by their names; the candidates only look for their own names."""
    sep = flat_prefix[-1] if flat_prefix[-1:] in _FLAT_JOINERS else "."
    segments = flat_prefix.rstrip(sep).split(sep)
    prefixes = [sep.join(segments[:i]) + sep for i in range(1, len(segments))]
    if segments[0].startswith("@") and len(segments[0]) > 1:
        prefixes.insert(0, "@")
    levels = []
    for prefix in prefixes:
        members = {k[len(prefix):]: v for k, v in node.items()
                   if isinstance(k, str) and k.startswith(prefix) and (sep != "." or "." not in k[len(prefix):])}
        if members:
            levels.append((_FlatLevel(prefix, members), steps, None))
    return levels


# Objects beside a level's own members that describe the same record: Elasticsearch's `fields` (docvalue_fields,
# runtime fields: one-item lists, when `_source` leaves a field out) and Loki's stream labels (`labels` in logcli's
# jsonl, `stream` in the API's answer), where structured metadata such as a user lands. Looked into after the
# level's own members, before the next level up.
# Likewise a logging library's bag of context beside the message: Datadog's custom `attributes` (beside the
# `message` of its API's answer), log4j2's `contextMap`, Monolog's `context` and `extra`, .NET's `State` and
# `Scopes` (a list of them), an `mdc`.
_SIDECARS = ("fields", "labels", "stream", "attributes", "contextMap", "context", "extra", "mdc", "State", "Scopes",
             # Azure Application Insights' and Monitor's dynamic columns (a JSON string in a query's answer)
             "customDimensions", "Properties")


def _at_level(node, candidate):
    found = candidate(node)
    if found is not None or not isinstance(node, dict) or isinstance(node, _FlatLevel):
        return found
    for side in _SIDECARS:
        inner = node.get(side)
        at_side: tuple = ()
        if isinstance(inner, str) and inner.startswith("{"):  # a JSON object in a string: parsed
            try:
                inner, at_side = json.loads(inner), (("p",),)
            except ValueError:
                continue
        bags = [((), inner)] if isinstance(inner, dict) else []
        if isinstance(inner, list):
            pairs = _Pairs.of(inner)
            bags = [((), pairs)] if pairs else [((("i", i),), item) for i, item in enumerate(inner[:8])
                                                if isinstance(item, dict)]
        for at, bag in bags:
            if (found := candidate(bag)) is not None:
                value, key_steps = found
                if isinstance(bag, _Pairs):  # back to where the pair's value is in the list
                    key_steps = (*bag.steps[key_steps[0][1]], *key_steps[1:])
                return value, (("k", side), *at_side, *at, *key_steps)
    return None


# The kinds of an OpenTelemetry AnyValue ({"stringValue": "alice"}): a pair's value is the one inside
_ANY_VALUES = ("stringValue", "intValue", "boolValue", "doubleValue", "bytesValue", "kvlistValue", "arrayValue")


class _Pairs(dict):
    """A list of key/value pairs read as the object it stands for: OpenTelemetry's attributes,
    [{"key": "user_id", "value": {"stringValue": "alice"}}, ...], as {"user_id": "alice"}. `steps` leads from
    the list to each value."""

    steps: dict[str, tuple]

    @classmethod
    def of(cls, items: list):
        if not items or not all(isinstance(i, dict) and isinstance(i.get("key"), str) and "value" in i
                                for i in items[:50]):
            return None
        pairs = cls()
        pairs.steps = {}
        for n, item in enumerate(items[:50]):
            value, inner = item["value"], (("i", n), ("k", "value"))
            if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _ANY_VALUES:  # {"stringValue": "alice"}
                (kind, value), = value.items()
                inner = (*inner, ("k", kind))
            pairs.setdefault(item["key"], value)
            pairs.steps.setdefault(item["key"], inner)
        return pairs


def _nearest(chain: _Chain, candidate):
    """Walk from the notification up to the record's root; the first level with a candidate wins."""
    for node, steps, text_prefix in reversed(chain):
        found = _at_level(node, candidate)
        if found is not None:
            value, key_steps = found
            if isinstance(node, _FlatLevel):  # the member's name in the record carries the level's prefix
                key_steps = (("k", node.prefix + key_steps[0][1]), *key_steps[1:])
            return value, (*steps, *key_steps), False
        if text_prefix is not None:
            in_text = candidate.text(text_prefix) if hasattr(candidate, "text") else None
            if in_text is not None:
                return in_text, steps[:-1] if steps and steps[-1][0] in _PARSE_STEPS else steps, True
    return None, None, False


def _one_value(value):
    """A value, or the single item of a one-item list (Elasticsearch's `fields` wraps every value in a list):
    (value, extra steps)."""
    if _same_items(value) and not isinstance(value[0], dict | list):  # (or a value Splunk extracted twice)
        return value[0], (("i", 0),)
    return value, ()


# A zone or unit some exports append to a column's name: Azure's "TimeGenerated [UTC]", "time (UTC)".
_KEY_ANNOTATION = re.compile(r"\s*[\[(](utc|gmt|z)[\])]\s*$", re.I)


def _key_name(key) -> str:
    return _KEY_ANNOTATION.sub("", str(key)).lower()


def _ranked_scalar(node, rank: dict[str, int]):
    """The best-ranked scalar member of `node`: (rank, steps, value) or None."""
    if not isinstance(node, dict):
        return None
    best = None
    for key, value in node.items():
        r = rank.get(_key_name(key))
        if r is None:
            continue
        value, sub = _one_value(value)
        if value is None or isinstance(value, bool | dict | list) or str(value).strip() == "":
            continue
        if best is None or r < best[0]:
            best = (r, (("k", key), *sub), value)
    return best


def _time_candidate(node):
    if isinstance(node, list) and len(node) >= 2 and _looks_epoch(node[0]):
        return str(node[0]), (("i", 0),)  # Loki's [timestamp, line]
    best = _ranked_scalar(node, _TIME_KEY_RANK)
    if best is None and isinstance(node, dict) and isinstance(node.get("instant"), dict) \
            and "epochSecond" in node["instant"]:  # log4j2's JsonLayout: {"epochSecond": ..., "nanoOfSecond": ...}
        return json.dumps(node["instant"], separators=(",", ":")), (("k", "instant"),)
    return None if best is None else (str(best[2]), best[1])


def _time_in_text(text: _Text):
    searches = [(r, text.prefix) for r in _TIME_RES] + [(r, text.whole) for r in _TIME_ANYWHERE_RES]
    m = next((m for r, where in searches if (m := r.search(where))), None)
    return m.group(1) if m else None


_time_candidate.text = _time_in_text


def _ingest_time_candidate(node):
    best = _ranked_scalar(node, _INGEST_KEY_RANK)
    return None if best is None else (str(best[2]), best[1])


def _identity_rank(key) -> int | None:
    """The rank of a user key: `user_id`, `@user_id`; flattened, ECS's `user.name` as a key of its own (Kibana's
    CSV, a dotted key in `_source`), Datadog's `@usr.id`."""
    k = str(key).lower().lstrip("@")
    if k in _IDENTITY_RANK:
        return _IDENTITY_RANK[k]
    for sep in (".", "/", ":"):
        head, found, tail = k.partition(sep)
        if found and head in _IDENTITY_RANK and tail in _IDENTITY_SUBKEYS:
            return _IDENTITY_RANK[head]
    return None


def _identity_candidate(node):
    if not isinstance(node, dict):
        return None
    best = None
    for key, value in node.items():
        r = _identity_rank(key)
        if r is None:
            continue
        value, sub = _one_value(value)
        if isinstance(value, dict):
            inner = next((k for k in _IDENTITY_SUBKEYS if isinstance(value.get(k), str | int) and str(value[k])), None)
            if inner is None:
                continue
            value, sub = value[inner], (*sub, ("k", inner))
        if value is None or isinstance(value, bool | list | dict) or str(value).strip() == "":
            continue
        if best is None or r < best[0]:
            best = (r, (("k", key), *sub), str(value).strip())
    return None if best is None else (best[2], best[1])


def _identity_in_text(text: _Text):
    """`user_id=alice` before the JSON, else anywhere in the line: logrus sorts its fields, so `user_id` comes
    after `body`. (Inside the JSON the pattern cannot match: JSON puts a quote between a key and its colon.)"""
    m = _IDENTITY_RE.search(text.prefix) or _IDENTITY_RE.search(text.whole)
    return m.group(1) if m else None


_identity_candidate.text = _identity_in_text


def _looks_epoch(value) -> bool:
    s = str(value)
    return s.isdigit() and 9 <= len(s) <= 19


# -- SQL compilation -----------------------------------------------------------------------------------------


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def literal_sql(text: str) -> str:
    """`_embedded_literal` in SQL over the VARCHAR expression `text`: a JSON object of the fields (null where not
    there), or NULL (the macro `tt_literal`, which `_sql_parse` calls for a step "r")."""
    fields = ", ".join(f"'{field}', tt_kv(regexp_extract({text}, {_sql_str(_literal_pattern(key))}, ['sep', 'val']))"
                       for field, key in _LITERAL_KEYS.items())
    return (f"CASE WHEN regexp_matches({text}, {_sql_str(_LITERAL_GATE.pattern)}) "
            f"AND NOT regexp_matches({text}, {_sql_str(_LITERAL_JSON_KEYED)}) THEN json_object({fields}) END")


def _json_path(steps) -> str:
    parts = ["$"]
    for step in steps:
        if step[0] == "k":
            parts.append('."' + str(step[1]).replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            parts.append(f"[{step[1]}]")
    return "".join(parts)


def _segments(steps):
    """Split steps at parse steps: [(parse kind first or None, [key/index steps]), ...]."""
    segments, current, parse = [], [], None
    for step in steps:
        if step[0] in _PARSE_STEPS:
            segments.append((parse, current))
            current, parse = [], step[0]
        else:
            current.append(step)
    segments.append((parse, current))
    return segments


def _sql_parse(expr: str, kind: str) -> str:
    """The JSON text inside the text `expr`: after a prefix ("p"), or a quoted escaped string ("q")."""
    if kind == "kv":  # a list of key/value pairs (`_Pairs`) as the object it stands for, AnyValues unwrapped
        return (f"to_json(map_from_entries(list_transform(json_transform({expr}, '[{{\"key\":\"VARCHAR\",\"value\":\"JSON\"}}]'), "
                "lambda p: {'key': p.key, 'value': coalesce(" + ", ".join(f"p.value -> '$.{kind}'" for kind in _ANY_VALUES)
                + ", p.value)})))")
    if kind == "r":  # an object printer's text (_LITERAL_KEYS): its fields as a JSON object
        return f"tt_literal({expr})"
    if kind == "q":  # unquoted, then (text may come first in the value) from its first `{"`
        return _sql_parse(
            f"""json_extract_string('"' || regexp_extract({expr}, {_sql_str(QUOTED_JSON_IN_TEXT)}, 1) || '"', '$')""", "p")
    # tt_embedded starts at the first "{"; a `{"` further on wins when the text has one (braces that are not
    # JSON, such as Loki labels, may come first). What this misses goes through `locate()` anyway.
    return f"""(CASE WHEN strpos({expr}, '{{"') > 1 THEN substr({expr}, strpos({expr}, '{{"')) ELSE tt_embedded({expr}) END)"""


def _sql_value(raw: str, steps, *, as_json: bool) -> str:
    """Walk `steps` from the record text; the result is JSON (as_json) or the VARCHAR value."""
    expr = raw
    segments = _segments(steps)
    for n, (parse, path) in enumerate(segments):
        if parse:
            expr = _sql_parse(expr, parse)
        last = n == len(segments) - 1
        if last:
            fn = "json_extract" if as_json else "json_extract_string"
            expr = f"{fn}({expr}, {_sql_str(_json_path(path))})"
        elif path:
            expr = f"json_extract_string({expr}, {_sql_str(_json_path(path))})"
    return expr


def _sql_values(raw: str, steps, last_steps) -> str:
    """JSON[] of the values at `steps` + each of `last_steps`, parsing the record (and inner strings) once."""
    expr = raw
    segments = _segments(steps)
    for n, (parse, path) in enumerate(segments):
        if parse:
            expr = _sql_parse(expr, parse)
        if n == len(segments) - 1:
            paths = ", ".join(_sql_str(_json_path([*path, last])) for last in last_steps)
            return f"json_extract({expr}, [{paths}])"
        if path:
            expr = f"json_extract_string({expr}, {_sql_str(_json_path(path))})"
    raise AssertionError("unreachable")


def _sql_text_field(raw: str, steps, in_text: bool, *patterns: str, anywhere: tuple[str, ...] = ()) -> str:
    """The first capture group of the first of `patterns` that finds something in the text before the JSON (the
    later ones are evaluated only for the rows the earlier ones found nothing in), failing those of `anywhere`
    in the whole text (a user anywhere in the line, as `_identity_in_text`; a logfmt time key after the JSON)."""
    if steps is None:
        return "NULL::VARCHAR"
    if not in_text:
        return _sql_value(raw, steps, as_json=False)
    text = _sql_value(raw, steps, as_json=False) if steps else raw
    found = [f"nullif(regexp_extract(tt_text_prefix({text}), {_sql_str(p)}, 1), '')" for p in patterns]
    found += [f"nullif(regexp_extract({text}, {_sql_str(p)}, 1), '')" for p in anywhere]
    return found[0] if len(found) == 1 else f"coalesce({', '.join(found)})"
