"""Where a record keeps the receiver's own time and user, beside the notification: found without an identity
mapping, and preferred to the log platform's own columns (DOMAIN.md: the receiver's field wins)."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime

import duckdb
import pytest

from ingest.locate import NOTIFICATION_FIELDS, _embedded_literal
from ingest.normalize import install_macros
from ingest.pipeline import ingest
from tests.helpers import body

LOGIN = body("new", "T1", "R1", code="A1")
REFRESH = body("refresh", "T2", "R2", "R1")
# the receiver's times, and the platform's (shipped 1.5 s later)
RECEIVED = ("2026-12-03T09:00:00.123456Z", "2026-12-03T09:40:00.654321Z")
SHIPPED = ("2026-12-03T09:00:01.623Z", "2026-12-03T09:40:02.154Z")


def _text_lines() -> bytes:
    return (f"{RECEIVED[0]} INFO tyk oauth notification status=200 user_id=alice body={json.dumps(LOGIN)}\n"
            f"{RECEIVED[1]} INFO tyk oauth notification status=200 body={json.dumps(REFRESH)}\n").encode()


def _logfmt() -> bytes:
    def quoted(b):
        return json.dumps(json.dumps(b))
    return (f'time={RECEIVED[0]} level=INFO msg="tyk oauth notification" user_id=alice body={quoted(LOGIN)}\n'
            f'time={RECEIVED[1]} level=INFO msg="tyk oauth notification" body={quoted(REFRESH)}\n').encode()


def _logrus_text() -> bytes:
    # logrus's TextFormatter: time, level and msg first, then the other fields sorted, so user_id after body
    def quoted(b):
        return json.dumps(json.dumps(b, separators=(",", ":")))
    return (f'time="{RECEIVED[0]}" level=info msg="tyk oauth notification" body={quoted(LOGIN)} status=200 '
            f"user_id=alice\n"
            f'time="{RECEIVED[1]}" level=info msg="tyk oauth notification" body={quoted(REFRESH)} status=200\n'
            ).encode()


def _flat_csv(platform_time: str, level: str, extra: dict, sep: str = ".") -> bytes:
    """A CSV export of a flattened record: the platform's time column, the receiver's fields under `level`,
    nested keys joined with `sep`."""
    out = io.StringIO()
    fields = [platform_time, *extra, f"{level}received_at", f"{level}user_id",
              *(f"{level}body{sep}{k}" for k in LOGIN)]
    w = csv.DictWriter(out, fieldnames=fields)
    w.writeheader()
    for b, received, shipped, user in ((LOGIN, RECEIVED[0], SHIPPED[0], "alice"), (REFRESH, RECEIVED[1], SHIPPED[1], "")):
        w.writerow({platform_time: shipped, **extra, f"{level}received_at": received, f"{level}user_id": user,
                    **{f"{level}body{sep}{k}": v for k, v in b.items()}})
    return out.getvalue().encode()


def _es_hits() -> bytes:
    # `_source` filtered to the body and user; the receiver's time asked for as a docvalue field; highlighting on
    hits = [{"_index": "tyk-hook", "_id": f"id{i}", "_score": None,
             "_source": {"body": b, **({"user_id": user} if user else {})},
             "fields": {"received_at": [received]},
             "highlight": {"body.notification_type": [f"<em>{b['notification_type']}</em>"]},
             "sort": [i]}
            for i, (b, received, user) in enumerate(((LOGIN, RECEIVED[0], "alice"), (REFRESH, RECEIVED[1], None)))]
    return json.dumps({"took": 5, "timed_out": False, "hits": {"total": {"value": 2}, "hits": hits}}).encode()


def _insights_pairs() -> bytes:
    # `aws logs get-query-results` for `fields @timestamp, received_at, user_id, body.*`: rows of field/value
    # pairs, a pair left out when its value is empty
    def row(b, received, shipped, user):
        pairs = {"@timestamp": shipped.replace("T", " ").removesuffix("Z"), "received_at": received, "user_id": user,
                 **{f"body.{k}": v for k, v in b.items()}, "@ptr": "CmAKJwojMTIzNDU2Nzg5MDEyOi9hd3MvbGFtYmRh"}
        return [{"field": k, "value": v} for k, v in pairs.items() if v]
    return json.dumps({"results": [row(LOGIN, RECEIVED[0], SHIPPED[0], "alice"), row(REFRESH, RECEIVED[1], SHIPPED[1], "")],
                       "statistics": {"recordsMatched": 2.0}, "status": "Complete"}).encode()


def _logcli_labels() -> bytes:
    # logcli --output=jsonl: the user is structured metadata, printed among the stream's labels
    return "".join(
        json.dumps({"labels": {"app": "tyk-hook", **({"user_id": user} if user else {})},
                    "line": f"{received} INFO tyk oauth notification {json.dumps(b)}", "timestamp": shipped}) + "\n"
        for b, received, shipped, user in ((LOGIN, RECEIVED[0], SHIPPED[0], "alice"), (REFRESH, RECEIVED[1], SHIPPED[1], None))
    ).encode()


def _loki_api_streams() -> bytes:
    # Loki 3's query_range answer: the user is structured metadata, a label of the stream the line is in
    def stream(b, received, user):
        line = json.dumps({"received_at": received, "msg": "tyk oauth notification", "body": b})
        labels = {"app": "tyk-hook", "stream": "stdout", **({"user_id": user} if user else {})}
        return {"stream": labels, "values": [["1796288401623000000", line]]}
    result = [stream(LOGIN, RECEIVED[0], "alice"), stream(REFRESH, RECEIVED[1], None)]
    return json.dumps({"status": "success", "data": {"resultType": "streams", "result": result}}).encode()


def _rows(make) -> bytes:
    """JSON Lines of the login (user alice) and the refresh, each record made by `make(body, received, user)`."""
    return "".join(json.dumps(make(b, received, user)) + "\n"
                   for b, received, user in ((LOGIN, RECEIVED[0], "alice"), (REFRESH, RECEIVED[1], None))).encode()


def _ecs_csv(user_column: str, time_column: str) -> bytes:
    # a flattened export whose user is a dotted column of its own: ECS `user.name`, Datadog's `@usr.id`
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow([time_column, "received_at", user_column, *(f"body.{k}" for k in LOGIN)])
    for b, received, shipped, user in ((LOGIN, RECEIVED[0], SHIPPED[0], "alice"), (REFRESH, RECEIVED[1], SHIPPED[1], "")):
        w.writerow([shipped, received, user, *b.values()])
    return out.getvalue().encode()


def _epoch_ns(iso: str) -> int:
    t = datetime.fromisoformat(iso)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def _epoch_instant(iso: str) -> dict:
    t = datetime.fromisoformat(iso)
    return {"epochSecond": int(t.timestamp()), "nanoOfSecond": t.microsecond * 1000}


def _user_text(b: dict, user: str | None) -> str:
    """A receiver's text line: the user (when known) and the body as JSON."""
    return "tyk oauth notification status=200 " + (f"user_id={user} " if user else "") + json.dumps(b)


def _otel_pairs(d: dict) -> list:
    """An object as OpenTelemetry's key/value pairs of AnyValues."""
    def any_value(v):
        if isinstance(v, dict):
            return v
        return {"doubleValue": v} if isinstance(v, float) else {"stringValue": v}
    return [{"key": k, "value": any_value(v)} for k, v in d.items()]


SHAPES = {
    "text line, user_id=": _text_lines,
    "logfmt, quoted body": _logfmt,
    # Filebeat decoding the receiver's JSON under `json`, exported from Kibana Discover as CSV
    "kibana csv of filebeat json.*": lambda: _flat_csv("@timestamp", "json.", {"host.name": "hook-1"}),
    # Datadog's CSV: attributes are @-columns beside the platform's Date
    "datadog csv @attributes": lambda: _flat_csv("Date", "@", {"Host": "hook-1", "Service": "tyk-hook"}),
    # Google Cloud's flattened jsonPayload beside the entry's timestamp
    "gcloud csv jsonPayload.*": lambda: _flat_csv("timestamp", "jsonPayload.", {"severity": "INFO"}),
    "logrus text, user_id after the body": _logrus_text,
    "elasticsearch: highlight, time in docvalue fields": _es_hits,
    "cloudwatch insights: pairs of body.* fields": _insights_pairs,
    "logcli jsonl: the user among the labels": _logcli_labels,
    "loki api: the user among the stream's labels": _loki_api_streams,
    # Graylog's JSON extractor joins nested keys with `_`: body_auth_code
    "graylog csv body_*": lambda: _flat_csv("timestamp", "", {"source": "hook-1"}, sep="_"),
    # BigQuery legacy SQL flattens a Cloud Logging sink table the same way
    "bigquery csv jsonPayload_body_*": lambda: _flat_csv("timestamp", "jsonPayload_", {"severity": "INFO"}, sep="_"),
    "kibana csv: ECS user.name column": lambda: _ecs_csv("user.name", "@timestamp"),
    "datadog csv: @usr.id column": lambda: _ecs_csv("@usr.id", "Date"),
    "elasticsearch: a dotted user.name key in _source": lambda: json.dumps({"hits": {"hits": [
        {"_id": str(i), "_source": {"@timestamp": shipped, "received_at": received, "body": b,
                                    **({"user.name": user} if user else {})}}
        for i, (b, received, shipped, user) in enumerate(((LOGIN, RECEIVED[0], SHIPPED[0], "alice"),
                                                          (REFRESH, RECEIVED[1], SHIPPED[1], None)))]}}).encode(),
    # Datadog's logs API v2: the log line in attributes.message, custom attributes (usr.id) in attributes.attributes
    "datadog api v2: the user in attributes.attributes.usr": lambda: json.dumps({"data": [
        {"id": f"AQ{i}", "type": "log", "attributes": {
            "timestamp": shipped, "service": "tyk-hook",
            "message": f"{received} INFO tyk oauth notification {json.dumps(b)}",
            "attributes": {"status": "info", **({"usr": {"id": user}} if user else {})}}}
        for i, (b, received, shipped, user) in enumerate(((LOGIN, RECEIVED[0], SHIPPED[0], "alice"),
                                                          (REFRESH, RECEIVED[1], SHIPPED[1], None)))]}).encode(),
    # log4j2's JsonLayout: the time as an `instant` object, the MDC in `contextMap`
    "log4j2 JsonLayout: instant and contextMap": lambda: _rows(lambda b, received, user: {
        "instant": _epoch_instant(received), "thread": "http-nio-8080-exec-3", "level": "INFO",
        "loggerName": "com.acme.hook.Notify", "message": f"tyk oauth notification {json.dumps(b)}",
        "endOfBatch": False, "contextMap": {"user_id": user} if user else {}}),
    # .NET's JSON console logger with scopes on: the user in one of the Scopes
    ".NET json console: the user in a scope": lambda: _rows(lambda b, received, user: {
        "Timestamp": received, "EventId": 0, "LogLevel": "Information", "Category": "Hook.NotifyController",
        "Message": f"tyk oauth notification {json.dumps(b)}", "State": {"{OriginalFormat}": "tyk oauth notification {Body}"},
        "Scopes": [{"Message": "RequestId:0HN1", "RequestId": "0HN1"}, *([{"user_id": user}] if user else [])]}),
    # Monolog's JsonFormatter: the user in `context`
    "monolog json: the user in context": lambda: _rows(lambda b, received, user: {
        "message": f"tyk oauth notification {json.dumps(b)}", "context": {"user_id": user} if user else {},
        "level": 200, "level_name": "INFO", "channel": "hook", "datetime": received, "extra": {}}),
    # Splunk extracting a JSON event at index time and again at search time: every field a list of two copies
    "splunk export: fields extracted twice": lambda: _rows(lambda b, received, user: {"preview": False, "result": {
        "_raw": json.dumps({"received_at": received, **({"user_id": user} if user else {}), "body": b}),
        "_time": received[:23] + "+00:00", "received_at": [received, received],
        **({"user_id": [user, user]} if user else {}),
        **{f"body.{k}": [v, v] for k, v in b.items() if v}}}),  # (Splunk leaves empty values out)
    # OpenTelemetry: the collector's file exporter (OTLP JSON, a batch of records a line), the time in epoch ns,
    # attributes as key/value pairs, the user as the semantic conventions name it (enduser.id)
    "opentelemetry collector file": lambda: (json.dumps({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "tyk-hook"}}]},
        "scopeLogs": [{"scope": {"name": "hook"}, "logRecords": [
            {"timeUnixNano": str(_epoch_ns(received)), "observedTimeUnixNano": str(_epoch_ns(shipped)),
             "severityText": "INFO", "body": {"stringValue": json.dumps(b)},
             "attributes": [{"key": "http.response.status_code", "value": {"intValue": "200"}},
                            *([{"key": "enduser.id", "value": {"stringValue": user}}] if user else [])]}
            for b, received, shipped, user in ((LOGIN, RECEIVED[0], SHIPPED[0], "alice"),
                                               (REFRESH, RECEIVED[1], SHIPPED[1], None))]}]}]}) + "\n").encode(),
    # ... the collector's json_parser with `parse_to: body`: the receiver's JSON line as a key/value map
    # (kvlistValue), the Tyk body a map inside it; the records of a batch are found past the pairs
    "opentelemetry collector file, the body a key/value map": lambda: (json.dumps({"resourceLogs": [{
        "resource": {}, "scopeLogs": [{"scope": {}, "logRecords": [
            {"observedTimeUnixNano": str(_epoch_ns(shipped)),
             "body": {"kvlistValue": {"values": _otel_pairs({
                 "received_at": received, "level": "info", **({"user_id": user} if user else {}),
                 "status": 200.0, "body": {"kvlistValue": {"values": _otel_pairs(b)}}})}},
             "attributes": _otel_pairs({"log.file.name": "hook.jsonl"})}
            for b, received, shipped, user in ((LOGIN, RECEIVED[0], SHIPPED[0], "alice"),
                                               (REFRESH, RECEIVED[1], SHIPPED[1], None))]}]}]}) + "\n").encode(),
    # ... its default `parse_to: attributes`, the body moved there too: the Tyk fields are attributes
    "opentelemetry collector file, the fields as attributes": lambda: (json.dumps({"resourceLogs": [{
        "resource": {}, "scopeLogs": [{"scope": {}, "logRecords": [
            {"timeUnixNano": str(_epoch_ns(received)), "observedTimeUnixNano": str(_epoch_ns(shipped)),
             "body": {"stringValue": "tyk oauth notification"},
             "attributes": _otel_pairs({**b, **({"enduser.id": user} if user else {})})}
            for b, received, shipped, user in ((LOGIN, RECEIVED[0], SHIPPED[0], "alice"),
                                               (REFRESH, RECEIVED[1], SHIPPED[1], None))]}]}]}) + "\n").encode(),
    # ... printed over several lines, under the line with the time: Python's pprint (the first line holds the
    # opening brace, the last the closing one)
    "python pprint over lines": lambda: ("".join(
        f"{received} INFO hook: tyk oauth notification" + (f" user_id={user}" if user else "") + " {"
        + ",\n ".join(f"{k!r}: {v!r}" for k, v in sorted(b.items())) + "}\n"
        for b, received, user in ((LOGIN, RECEIVED[0], "alice"), (REFRESH, RECEIVED[1], None)))).encode(),
    # Tyk posting to a Logstash http input, printed by the stdout output's rubydebug codec: a Ruby hash over lines,
    # `"key" => value`, the time unquoted, nested hashes indented
    "logstash rubydebug": lambda: "".join(
        "{\n" + f'           "@timestamp" => {received},\n' + '             "@version" => "1",\n'
        + "".join(f'{json.dumps(k):>23} => {json.dumps(v)},\n' for k, v in b.items())
        + (f'              "user_id" => "{user}",\n' if user else "")
        + '                 "host" => {\n        "ip" => "10.42.0.5"\n    }\n}\n'
        for b, received, user in ((LOGIN, RECEIVED[0], "alice"), (REFRESH, RECEIVED[1], None))).encode(),
    # ... of a file input: the receiver's text line (its JSON escaped in a Ruby string) in `message` and again in
    # `event.original`, one notification, not two
    "logstash rubydebug of a file input": lambda: "".join(
        "{\n" + f'       "message" => {json.dumps(_user_text(b, user))},\n'
        + f'    "@timestamp" => {received},\n' + '      "@version" => "1",\n'
        + f'         "event" => {{\n        "original" => {json.dumps(_user_text(b, user))}\n    }}\n}}\n'
        for b, received, user in ((LOGIN, RECEIVED[0], "alice"), (REFRESH, RECEIVED[1], None))).encode(),
    # Vector's logfmt encoding of a file source: keys sorted, so the time comes after a message that holds the
    # receiver's text line with its JSON
    "vector logfmt: text and JSON in the message, the time after it": lambda: "".join(
        f"file=/var/log/hook.log host=hook-1 message={json.dumps('tyk oauth notification ' + json.dumps(b))} "
        f"source_type=file timestamp={received}" + (f" user_id={user}" if user else "") + "\n"
        for b, received, user in ((LOGIN, RECEIVED[0], "alice"), (REFRESH, RECEIVED[1], None))).encode(),
    # Application Insights through `az monitor app-insights query`: columns and rows, the custom dimensions of a
    # trace (where the user is) a JSON string
    "app insights: the user in customDimensions": lambda: json.dumps({"tables": [{
        "name": "PrimaryResult",
        "columns": [{"name": "timestamp", "type": "datetime"}, {"name": "message", "type": "string"},
                    {"name": "customDimensions", "type": "dynamic"}],
        "rows": [[received, f"tyk oauth notification {json.dumps(b)}",
                  json.dumps({"CategoryName": "Hook", **({"user_id": user} if user else {})})]
                 for b, received, user in ((LOGIN, RECEIVED[0], "alice"), (REFRESH, RECEIVED[1], None))]}]}).encode(),
    # logrus on a terminal (or with ForceColors): colour codes around every key
    "logrus text with colours": lambda: "".join(
        f"{received} \x1b[36mINFO\x1b[0m tyk oauth notification \x1b[36mbody\x1b[0m={json.dumps(json.dumps(b))}"
        + (f" \x1b[36muser_id\x1b[0m={user}" if user else "") + "\n"
        for b, received, user in ((LOGIN, RECEIVED[0], "alice"), (REFRESH, RECEIVED[1], None))).encode(),
    # Receivers that log the parsed body with their language's own printer, not as JSON (ingest.locate's
    # _embedded_literal): structlog's console renderer (the dict's repr after `body=`, the user a key of its own)
    "structlog console: the body's repr": lambda: "".join(
        f"{received} [info     ] tyk oauth notification       body={b!r}" + (f" user_id={user}" if user else "") + "\n"
        for b, received, user in ((LOGIN, RECEIVED[0], "alice"), (REFRESH, RECEIVED[1], None))).encode(),
    # ... the receiver's own record printed whole: the user a key of the repr, the body a dict inside it
    "python logging: the record's repr": lambda: "".join(
        f"{received} INFO hook: {({'user_id': user, 'body': b} if user else {'body': b})!r}\n"
        for b, received, user in ((LOGIN, RECEIVED[0], "alice"), (REFRESH, RECEIVED[1], None))).encode(),
    # slog's or logrus's text handler given each field as an attribute of its own: a key per field
    "logfmt: a key per field": lambda: "".join(
        f"time={received} level=INFO msg=\"tyk oauth notification\" "
        + " ".join(f"{k}={v}" for k, v in b.items()) + (f" user_id={user}" if user else "") + "\n"
        for b, received, user in ((LOGIN, RECEIVED[0], "alice"), (REFRESH, RECEIVED[1], None))).encode(),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_the_receivers_own_time_and_user_are_found(store, shape):
    report = ingest(store, [("export", io.BytesIO(SHAPES[shape]()))])
    assert report.files[0].rejected == 0, report.files[0]
    cur = store.cursor()
    times = [t.isoformat() for (t,) in cur.execute("SELECT first_seen FROM events ORDER BY first_seen").fetchall()]
    assert times == [t.removesuffix("Z") for t in RECEIVED]
    chains = cur.execute("SELECT identity, events FROM chains").fetchall()
    assert chains == [("alice", 2)]  # no identity mapping given: the user on the login's record



_T, _R, _O = "NWU5ZDk1NDRhMWRjZDYwMDAx", "sL2uJr9s-TiyORI9_whiGk", "y5NA+Rt5/U6kNqER7abi8c=="
# text an object printer wrote -> the fields it holds (None: not read as a notification)
PRINTED = {
    f"{{'auth_code': 'A1', 'new_oauth_token': '{_T}', 'refresh_token': '{_R}', 'old_refresh_token': '', "
    "'notification_type': 'new'}": ("new", "A1", _T, _R, ""),
    # Go's map: keys sorted, an empty value is nothing (the next key is not its value)
    f"map[auth_code: new_oauth_token:{_T} notification_type:refresh old_refresh_token:{_O} refresh_token:{_R}]":
        ("refresh", "", _T, _R, _O),
    f"map[auth_code:A1 new_oauth_token:{_T} notification_type:new old_refresh_token: refresh_token:{_R}]":
        ("new", "A1", _T, _R, ""),
    f"{{AuthCode:A1 NewOAuthToken:{_T} RefreshToken:{_R} OldRefreshToken: NotificationType:new}}":
        ("new", "A1", _T, _R, ""),
    f"TykNotification(authCode=, newOauthToken={_T}, refreshToken={_R}, oldRefreshToken={_O}, "
    "notificationType=refresh)": ("refresh", "", _T, _R, _O),
    # logfmt: an empty value before the next key, base64 padding kept
    f"auth_code= new_oauth_token={_T} refresh_token={_R} old_refresh_token={_O} notification_type=refresh":
        ("refresh", "", _T, _R, _O),
    # logrus's text formatter, the client_credentials grant: the last two values empty (not the next key)
    f"time=\"2026-11-17T08:00:01Z\" level=info msg=\"tyk notification\" auth_code= new_oauth_token={_T} "
    "notification_type=new old_refresh_token= refresh_token=": ("new", "", _T, "", ""),
    f"{{:auth_code=>nil, :new_oauth_token=>\"{_T}\", :refresh_token=>\"{_R}\", :old_refresh_token=>\"{_O}\", "
    ":notification_type=>\"refresh\"}": ("refresh", "nil", _T, _R, _O),
    f"Array\n(\n    [auth_code] => A1\n    [new_oauth_token] => {_T}\n    [refresh_token] => \n"
    "    [old_refresh_token] => \n    [notification_type] => new\n)\n": ("new", "A1", _T, "", ""),
    f"%{{\"auth_code\" => \"A1\", \"new_oauth_token\" => \"{_T}\", \"notification_type\" => \"new\", "
    f"\"old_refresh_token\" => \"\", \"refresh_token\" => \"{_R}\"}}": ("new", "A1", _T, _R, ""),
    # nginx's access log writes a logged body's quotes as \x22
    f'"{{\\x22auth_code\\x22:\\x22A1\\x22,\\x22new_oauth_token\\x22:\\x22{_T}\\x22,\\x22refresh_token\\x22:\\x22{_R}\\x22,'
    '\\x22old_refresh_token\\x22:\\x22\\x22,\\x22notification_type\\x22:\\x22new\\x22}"': ("new", "A1", _T, _R, ""),
    # JSON cut short is broken JSON, never read field by field: it would load without its last fields
    f'{{"notification_type":"new","auth_code":"A1","new_oauth_token":"{_T}","refresh_tok': None,
    f'msg="{{\\"notification_type\\":\\"new\\",\\"auth_code\\":\\"A1\\",\\"new_oauth_token\\":\\"{_T}': None,
    # token words without a notification's type: a client's own request, not a notification
    f"POST /oauth/token grant_type=refresh_token&refresh_token={_R}": None,
}


@pytest.mark.parametrize("text", PRINTED, ids=range(len(PRINTED)))
def test_object_printers_read_alike_in_python_and_sql(text):
    """The fast path (SQL, `tt_literal`) and the record-by-record one (Python) find the same fields."""
    found = _embedded_literal(text)
    in_python = None if found is None else tuple(found[0].get(f) for f in NOTIFICATION_FIELDS)
    con = duckdb.connect()
    install_macros(con)
    sql = con.execute("SELECT tt_literal(?)", [text]).fetchall()[0][0]
    in_sql = None if sql is None else tuple(json.loads(sql)[f] for f in NOTIFICATION_FIELDS)
    assert in_python == PRINTED[text]
    assert in_sql == PRINTED[text]


def test_rails_development_log_takes_the_time_of_the_started_line(store):
    """Rails in development writes a request over several lines, the time (to the second) only on `Started`."""
    text = "".join(
        f'Started POST "/tyk/hook" for 10.42.0.9 at {received} +0100\n'
        "Processing by TykHooksController#create as HTML\n"
        "  Parameters: {" + ", ".join(f'"{k}"=>"{v}"' for k, v in b.items()) + (f', "user_id"=>"{user}"' if user else "")
        + "}\nCompleted 200 OK in 2ms (ActiveRecord: 0.0ms | Allocations: 587)\n\n\n"
        for b, received, user in ((LOGIN, "2026-12-03 10:00:00", "alice"), (REFRESH, "2026-12-03 10:40:00", None)))
    report = ingest(store, [("development.log", io.BytesIO(text.encode()))])
    assert (report.files[0].rejected, report.files[0].untimed) == (0, 0), report.files[0]
    cur = store.cursor()
    times = [t.isoformat() for (t,) in cur.execute("SELECT first_seen FROM events ORDER BY first_seen").fetchall()]
    assert times == ["2026-12-03T09:00:00", "2026-12-03T09:40:00"]
    assert cur.execute("SELECT identity, events FROM chains").fetchall() == [("alice", 2)]


def test_lines_that_each_hold_a_notification_stay_records_of_their_own(store):
    """After a line led by a time, lines that each hold a whole notification (here logfmt, a key per field, without
    a time) are records of their own: none takes the banner's time, none joins another."""
    text = "2026-12-03T08:59:00Z hook starting\n" + "".join(
        "level=info msg=notification " + " ".join(f"{k}={v}" for k, v in b.items()) + "\n" for b in (LOGIN, REFRESH))
    report = ingest(store, [("hook.log", io.BytesIO(text.encode()))])
    assert report.files[0].format == "text"
    assert (report.files[0].records, report.files[0].rejected, report.files[0].untimed) == (3, 1, 2)
    assert store.cursor().execute("SELECT count(*) FROM chains").fetchall() == [(1,)]
