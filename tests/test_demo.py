"""The demo fleet: Tyk-shaped bodies, Tyk's retry and ordering behaviour, the rare cases, the files it writes.

Everything is checked on the records themselves in plain Python, so these tests need no engine and pin down
what the rest of tokentrail can rely on when it opens the demo.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from ingest.demo import receiver_record, simulate, write_demo

END = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
TYK_KEYS = ["auth_code", "new_oauth_token", "refresh_token", "old_refresh_token", "notification_type"]
ISO_US_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _t(rec: dict) -> datetime:
    return datetime.fromisoformat(rec["received_at"])


def _key(body: dict) -> tuple:
    return tuple(body[k] for k in TYK_KEYS)


@pytest.fixture(scope="module")
def sim():
    return simulate(days=2, users=40, seed=11, end=END)


@pytest.fixture(scope="module")
def deliveries(sim):
    """Records grouped by body, in logging order: one list per distinct notification."""
    groups = defaultdict(list)
    for rec in sim.records:
        groups[_key(rec["body"])].append(rec)
    return groups


@pytest.fixture(scope="module")
def first_seen(sim):
    """Index of the record that first logged each issued refresh token."""
    issued = {}
    for i, rec in enumerate(sim.records):
        issued.setdefault(rec["body"]["refresh_token"], i)
    issued.pop("", None)
    return issued


def test_receiver_record_is_the_plain_log_line():
    body = dict.fromkeys(TYK_KEYS, "")
    rec = receiver_record(datetime(2026, 12, 4, 10, 0, 0, 123456, tzinfo=UTC), body)
    assert rec == {
        "received_at": "2026-12-04T10:00:00.123456Z",
        "level": "info",
        "msg": "tyk oauth notification",
        "status": 200,
        "remote_addr": "10.0.0.1:40000",
        "body": body,
    }
    warn = receiver_record(datetime(2026, 12, 4, 10), body, status=503, extra={"username": "alice"})
    assert warn["received_at"] == "2026-12-04T10:00:00.000000Z"
    assert (warn["level"], warn["status"], warn["username"]) == ("warn", 503, "alice")
    assert list(warn)[-1] == "body"


def test_same_seed_and_end_give_the_same_records(sim):
    again = simulate(days=2, users=40, seed=11, end=END)
    assert again.records == sim.records
    assert again.identities == sim.identities
    assert again.truth == sim.truth
    other = simulate(days=2, users=40, seed=12, end=END)
    assert other.records != sim.records


def test_end_defaults_to_now_truncated_to_the_minute():
    before = datetime.now(UTC)
    s = simulate(days=1, users=5, seed=3)
    assert s.end.second == 0 and s.end.microsecond == 0
    assert before - timedelta(minutes=1) <= s.end <= datetime.now(UTC)
    assert s.start == s.end - timedelta(days=1)
    assert all(s.start <= _t(r) <= s.end for r in s.records)


def test_records_are_receiver_lines_in_logging_order(sim):
    times = [_t(r) for r in sim.records]
    assert times == sorted(times)
    assert times[0] >= END - timedelta(days=2) and times[-1] <= END
    for rec in sim.records:
        assert ISO_US_Z.match(rec["received_at"])
        assert rec["msg"] == "tyk oauth notification"
        assert rec["level"] == ("info" if rec["status"] == 200 else "warn")
        assert re.match(r"^10\.0\.\d+\.\d+:\d+$", rec["remote_addr"])


def test_bodies_are_tyk_notifications(sim):
    for rec in sim.records:
        body = rec["body"]
        assert list(body) == TYK_KEYS
        assert all(isinstance(v, str) for v in body.values())
        assert body["notification_type"] in {"new", "refresh"}
        assert body["new_oauth_token"]
        if body["notification_type"] == "refresh":
            assert body["auth_code"] == ""
            assert body["old_refresh_token"] and body["refresh_token"]
            assert body["old_refresh_token"] != body["refresh_token"]
        else:
            assert body["old_refresh_token"] == ""


def test_tokens_look_like_tyks(sim):
    body = next(r["body"] for r in sim.records if r["body"]["auth_code"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", body["auth_code"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", body["refresh_token"])
    assert re.fullmatch(r"[A-Za-z0-9+/]{58}==?|[A-Za-z0-9+/]{59}=", body["new_oauth_token"])


def test_tokens_are_issued_once(deliveries):
    refresh_tokens = [k[2] for k in deliveries if k[2]]
    access_tokens = [k[1] for k in deliveries]
    assert len(set(refresh_tokens)) == len(refresh_tokens)
    assert len(set(access_tokens)) == len(access_tokens)


def test_retries_repeat_the_body_10_s_later_until_a_200(deliveries):
    retried = [recs for recs in deliveries.values() if len(recs) > 1]
    assert retried
    assert any(len(recs) == 3 for recs in retried)
    for recs in retried:
        assert len(recs) <= 3
        assert all(r["status"] != 200 for r in recs[:-1])
        gaps = [(_t(b) - _t(a)).total_seconds() for a, b in zip(recs, recs[1:], strict=False)]
        # 10 s between attempts; 20 s when the receiver was down for the attempt in between.
        assert all(10 <= g < 10.5 or 20 <= g < 21 for g in gaps), gaps
        assert len({r["remote_addr"].split(":")[0] for r in recs}) == 1  # the same gateway retries


def test_some_non_200_answers_are_not_retried_into_a_200(deliveries):
    # Three failures in a row and Tyk gives up, although the receiver logged the body each time.
    assert any(len(r) == 3 and all(x["status"] != 200 for x in r) for r in deliveries.values())


def test_lost_notifications_leave_orphan_refreshes(sim, deliveries):
    issued = {k[2] for k in deliveries if k[2]}
    orphans = [k for k in deliveries if k[4] == "refresh" and k[3] not in issued]
    assert len(orphans) == sim.truth["orphan_chains"]
    assert sim.truth["lost_notifications"] > 0
    assert sim.truth["orphan_chains_lost_parent"] > 0
    assert 0 < sim.truth["orphan_chains_lost_parent"] <= sim.truth["lost_notifications"] + sim.truth["forks"]


def test_nothing_is_logged_during_an_outage(sim):
    windows = [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in sim.truth["outage_windows"]]
    assert 1 <= len(windows) <= 3
    for a, b in windows:
        assert 30 <= (b - a).total_seconds() <= 120
        assert not any(a <= _t(r) < b for r in sim.records)


def test_forks_present_one_refresh_token_twice_within_a_second(sim, deliveries):
    presented = defaultdict(list)
    for key, recs in deliveries.items():
        if key[4] == "refresh":
            presented[key[3]].append(_t(recs[0]))
    forks = {tok: ts for tok, ts in presented.items() if len(ts) > 1}
    assert len(forks) == sim.truth["forks"] >= 3
    assert any(abs((ts[1] - ts[0]).total_seconds()) < 1 for ts in forks.values())


def test_children_are_sometimes_logged_a_few_ms_before_their_parent(sim, first_seen):
    early = []
    for i, rec in enumerate(sim.records):
        body = rec["body"]
        parent = first_seen.get(body["old_refresh_token"]) if body["notification_type"] == "refresh" else None
        if parent is not None and parent > i:
            early.append((_t(sim.records[parent]) - _t(rec)).total_seconds())
    assert len(early) >= 5
    assert sim.truth["out_of_order"] == len(early)
    assert any(0 < dt < 0.05 for dt in early)


def test_password_logins_carry_the_username(sim):
    logins = [
        r
        for r in sim.records
        if r["body"]["notification_type"] == "new"
        and not r["body"]["auth_code"]
        and r["body"]["refresh_token"]
    ]
    assert logins
    assert all(re.fullmatch(r"[\w.-]+@[\w.-]+", r["username"]) for r in logins)
    assert not any("username" in r for r in sim.records if r not in logins)


def test_client_credentials_have_no_code_and_no_refresh_token(sim):
    tokens = [
        r for r in sim.records if r["body"]["notification_type"] == "new" and not r["body"]["refresh_token"]
    ]
    assert tokens
    assert all(r["body"]["auth_code"] == "" and "username" not in r for r in tokens)
    hours = (sim.end - sim.start).total_seconds() / 3600
    assert 1 <= len({_key(r["body"]) for r in tokens}) / hours <= 10


def test_identities_map_every_logged_auth_code(sim):
    codes = {r["body"]["auth_code"] for r in sim.records if r["body"]["auth_code"]}
    mapped = [code for code, _ in sim.identities]
    assert len(mapped) == len(set(mapped))
    assert set(mapped) == codes
    assert all(re.fullmatch(r"[\w.-]+@[\w.-]+", user) for _, user in sim.identities)
    per_user = defaultdict(int)
    for _, user in sim.identities:
        per_user[user] += 1
    assert max(per_user.values()) > 1  # users log in more than once: several chains per identity


def test_truth_counts_agree_with_the_records(sim, deliveries):
    truth = sim.truth
    assert truth["deliveries"] == len(sim.records)
    assert truth["events"] == len(deliveries)
    assert truth["duplicates"] == len(sim.records) - len(deliveries)
    assert truth["retried_bodies"] == sum(1 for recs in deliveries.values() if len(recs) > 1)
    news = [k for k in deliveries if k[4] == "new"]
    assert truth["authorization_code_logins"] == sum(1 for k in news if k[0])
    assert truth["password_logins"] == sum(1 for k in news if not k[0] and k[2])
    assert truth["client_credentials"] == sum(1 for k in news if not k[2])
    assert truth["forced_relogins"] >= truth["token_loss_relogins"] > 0
    assert truth["early_refreshes"] > 0 and truth["late_refreshes"] > 0
    json.dumps(truth)  # plain data, so other tests can store or print it


def test_default_demo_size_and_speed():
    started = time.perf_counter()
    s = simulate(end=END)
    assert time.perf_counter() - started < 5
    assert 20_000 <= len(s.records) <= 60_000
    assert s.truth["users"] == 150


def test_write_demo_files(tmp_path):
    sim = simulate(days=2, users=40, seed=5, end=END)
    paths = write_demo(tmp_path / "demo", days=2, users=40, seed=5, end=END)
    names = [p.name for p in paths]
    assert names == [
        "receiver-2026-12-02.jsonl.gz",
        "receiver-2026-12-03.jsonl.gz",
        "receiver-2026-12-04.jsonl.gz",
        "elasticsearch-export.json",
        "identities.csv",
    ]
    assert all(p.parent == tmp_path / "demo" and p.is_file() for p in paths)

    lines = []
    for path in paths[:3]:
        day = path.name[len("receiver-") : -len(".jsonl.gz")]
        text = gzip.decompress(path.read_bytes()).decode()
        assert text.endswith("\n") and '": ' not in text and ', "' not in text  # compact separators
        for line in text.splitlines():
            rec = json.loads(line)
            assert rec["received_at"].startswith(day)
            lines.append(rec)
    assert lines == sim.records

    export = json.loads(paths[3].read_text())
    assert export["timed_out"] is False and export["_shards"]["failed"] == 0
    hits = export["hits"]["hits"]
    assert export["hits"]["total"] == {"value": len(hits), "relation": "eq"}
    logged = {(r["received_at"], json.dumps(r["body"])) for r in lines}
    since = END - timedelta(hours=6)
    for hit in hits:
        source = hit["_source"]
        assert (source["received_at"], json.dumps(source["body"])) in logged
        shipped = datetime.fromisoformat(source["@timestamp"])
        assert 1 <= (shipped - _t(source)).total_seconds() <= 3.001
        assert hit["_index"] == f"receiver-logs-{shipped:%Y.%m.%d}"
    assert len(hits) == sum(1 for r in lines if _t(r) >= since)
    assert len({h["_id"] for h in hits}) == len(hits)

    with open(paths[4], newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["auth_code", "user_id"]
    assert [tuple(r) for r in rows[1:]] == sim.identities


def test_write_demo_is_byte_identical_for_the_same_seed(tmp_path):
    a = write_demo(tmp_path / "a", days=1, users=10, seed=9, end=END)
    b = write_demo(tmp_path / "b", days=1, users=10, seed=9, end=END)
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))


def test_demo_does_not_load_the_ui():
    code = "import sys, ingest.demo; print(sorted(m for m in ('streamlit', 'plotly') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
