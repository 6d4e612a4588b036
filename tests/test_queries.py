"""The dashboard's named queries (queries.refresh, orphans, lifetimes, identity) against small stores whose
every number is known from the input.

Two scenarios, each built once per module from records written here:

* `SESSIONS`: two users and an orphan, with an early, a late and a forked refresh, a forced re-login, a
  retried delivery and a machine token. Expected figures are derived in plain Python from the scenario
  table (intervals, classes, lifetimes, a reference Kaplan-Meier), not read back from the database.
* the receiver scenario: a steady trickle of machine tokens every 2 minutes with a 46-minute hole and a burst
  of retried deliveries, and four orphans placed so that each has a different likely cause.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from ingest.store import Store
from queries import identity, lifetimes, orphans, refresh
from tests.helpers import ROOT, body, load, record

T0 = datetime(2026, 12, 1, 0, 0, 0)  # naive UTC, as the store returns times
TTL = 3600
REFRESH_TTL = 14 * 86400


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return at(seconds).replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the sessions scenario ------------------------------------------------------------------------------------

# name: (seconds after T0, type, access, refresh issued, refresh presented, auth code, user on the record)
SESSIONS = {
    "A1":   (0,       "new",     "a1", "r1",  "",      "cA",  "alice"),
    "A1e2": (3000,    "refresh", "a2", "r2",  "r1",    "",    None),   # 3000 s: on time
    "A1e3": (7800,    "refresh", "a3", "r3",  "r2",    "",    None),   # 4800 s: late
    "A1e4": (8400,    "refresh", "a4", "r4",  "r3",    "",    None),   # 600 s: early; r4 never presented
    "A2":   (10800,   "new",     "a5", "r5",  "",      "cA2", "alice"),  # alice again, r4 still valid
    "A2e2": (13200,   "refresh", "a6", "r6",  "r5",    "",    None),
    "A2f":  (13200.5, "refresh", "a7", "r7",  "r5",    "",    None),   # r5 presented twice: a fork
    "A2e3": (16200,   "refresh", "a8", "r8",  "r6",    "",    None),
    "B1":   (3600,    "new",     "b1", "rb1", "",      "cB",  "bob"),
    "B1e2": (6000,    "refresh", "b2", "rb2", "rb1",   "",    None),   # delivered twice (a Tyk retry)
    "O1":   (20000,   "refresh", "o1", "ro1", "lost1", "",    None),   # orphan: its parent is not logged
    "O1e2": (23000,   "refresh", "o2", "ro2", "ro1",   "",    None),
    "M1":   (1000,    "new",     "m1", "",    "",      "",    None),   # client_credentials: no refresh token
}  # fmt: skip
PARENT = {
    "A1e2": "A1",
    "A1e3": "A1e2",
    "A1e4": "A1e3",
    "A2e2": "A2",
    "A2f": "A2",
    "A2e3": "A2e2",
    "B1e2": "B1",
    "O1e2": "O1",
}
CHAINS = {
    "A1": ["A1", "A1e2", "A1e3", "A1e4"],
    "A2": ["A2", "A2e2", "A2f", "A2e3"],
    "B1": ["B1", "B1e2"],
    "O1": ["O1", "O1e2"],
    "M1": ["M1"],
}
RETRIED = {"B1e2"}


def _sessions_records() -> list[dict]:
    recs = []
    for name, (t, kind, access, issued, presented, code, user) in SESSIONS.items():
        extra = {"username": user} if user else {}
        b = body(kind, access, issued, presented, code)
        recs.append(record(iso(t), b, **extra))
        if name in RETRIED:
            recs.append(record(iso(t + 10), b, status=200, **extra))
    return recs


def _interval(name: str) -> float:
    return SESSIONS[name][0] - SESSIONS[PARENT[name]][0]


def _class(seconds: float) -> str:
    return "late" if seconds > TTL else "early" if seconds < TTL / 2 else "on_time"


def _lifetime(chain: str) -> float:
    times = [SESSIONS[e][0] for e in CHAINS[chain]]
    return max(times) - min(times) + TTL


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    s = Store.open(tmp_path_factory.mktemp("sessions") / "s.duckdb")
    load(s, _sessions_records())
    yield s
    s.close()


@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    s = Store.open(tmp_path_factory.mktemp("empty") / "e.duckdb")
    yield s
    s.close()


def test_events_per_bucket_counts_each_type_per_hour(sessions):
    got = refresh.events_per_bucket(sessions, None, None, "1 hour")
    expected = Counter((T0 + timedelta(hours=int(t // 3600)), kind) for t, kind, *_ in SESSIONS.values())
    hours = [T0 + timedelta(hours=h) for h in range(int(max(t for t, *_ in SESSIONS.values()) // 3600) + 1)]
    assert list(got["t"].drop_duplicates()) == hours  # zero-filled, no hour missing
    assert {(r.t.to_pydatetime(), r.type): r.events for r in got.itertuples()} == {
        (h, k): expected.get((h, k), 0) for h in hours for k in ("new", "refresh")
    }
    # a range keeps [start, end) only, on the same hour grid
    part = refresh.events_per_bucket(sessions, at(7200), at(14400), "1 hour")
    assert part["events"].sum() == sum(1 for t, *_ in SESSIONS.values() if 7200 <= t < 14400) == 5


def test_refresh_profile_bins_classes_and_median(sessions):
    profile = refresh.refresh_profile(sessions, None, None, "1 hour")
    intervals = {name: _interval(name) for name in PARENT}
    classes = Counter(_class(s) for s in intervals.values())
    totals = profile["totals"]
    assert (
        (totals["early"], totals["on_time"], totals["late"], totals["refreshes"])
        == (classes["early"], classes["on_time"], classes["late"], len(intervals))
        == (1, 6, 1, 8)
    )
    width = TTL / refresh.HIST_BINS_PER_TTL
    hist = profile["histogram"]
    assert {(r.bin, r.refresh_class): r.refreshes for r in hist.itertuples()} == dict(
        Counter((int(s // width), _class(s)) for s in intervals.values())
    )
    assert ((hist["hi_s"] - hist["lo_s"]) == width).all()
    # the median is read off the histogram: within one bin of the exact one
    assert abs(totals["median_interval_s"] - statistics.median(intervals.values())) <= width
    # late refreshes land in the hour of the refresh that came late
    late = profile["over_time"].set_index("t")
    late_hour = T0 + timedelta(hours=int(SESSIONS["A1e3"][0] // 3600))
    assert late.loc[late_hour, "late"] == 1 and late["late"].sum() == 1
    assert late.loc[late_hour, "late_share"] == 1 / sum(
        1 for n in PARENT if int(SESSIONS[n][0] // 3600) == late_hour.hour
    )


def test_refresh_profile_respects_the_range(sessions):
    start, end = at(7200), at(14400)
    totals = refresh.refresh_profile(sessions, start, end, "15 minutes")["totals"]
    inside = [n for n in PARENT if 7200 <= SESSIONS[n][0] < 14400]
    assert totals["refreshes"] == len(inside) == 4
    assert (totals["early"], totals["late"]) == (1, 1)


def test_top_identities_by_refresh_rate(sessions):
    top = refresh.top_identities_by_refresh_rate(sessions, None, None, 10)
    rates = {}
    for user, chains in (("alice", ["A1", "A2"]), ("bob", ["B1"])):
        refreshes = sum(1 for c in chains for e in CHAINS[c] if SESSIONS[e][1] == "refresh")
        rates[user] = refreshes / (sum(_lifetime(c) for c in chains) / 3600)
    assert list(top["identity"]) == sorted(rates, key=rates.get, reverse=True) == ["alice", "bob"]
    assert top.set_index("identity")["refreshes_per_hour"].to_dict() == pytest.approx(rates)
    assert top.set_index("identity").loc["alice", "forks"] == 1


def test_lifetime_totals_and_kinds(sessions):
    all_lifetimes = [_lifetime(c) for c in CHAINS]
    t = lifetimes.lifetime_totals(sessions, None, None, "all")
    assert t["chains"] == 5 and t["median_lifetime_s"] == pytest.approx(statistics.median(all_lifetimes))
    assert t["max_lifetime_s"] == pytest.approx(max(all_lifetimes)) == 12000
    assert (t["active"], t["forced_relogins"]) == (1, 1)  # the orphan is still running; A1 was dropped
    ids = lifetimes.lifetime_totals(sessions, None, None, "identified")
    assert ids["median_lifetime_s"] == pytest.approx(
        statistics.median(_lifetime(c) for c in ("A1", "A2", "B1"))
    )
    assert lifetimes.lifetime_totals(sessions, None, None, "orphan")["chains"] == 1
    assert lifetimes.lifetime_totals(sessions, None, None, "unidentified")["max_lifetime_s"] == TTL  # M1
    with pytest.raises(ValueError, match="unknown chain kind"):
        lifetimes.lifetime_totals(sessions, None, None, "robots")


def test_lifetime_histogram_uses_half_octave_bins(sessions):
    hist = lifetimes.lifetime_histogram(sessions, None, None)
    expected = Counter((max(math.floor(2 * math.log2(_lifetime(c) / TTL)), 0)) for c in CHAINS)
    assert hist.groupby("bin")["chains"].sum().to_dict() == dict(expected)
    assert (hist["hi_s"] / hist["lo_s"]).round(9).eq(round(math.sqrt(2), 9)).all()
    assert hist.loc[hist["end_state"] == "active", "chains"].sum() == 1


def test_survival_curve_is_kaplan_meier_with_active_sessions_censored(sessions):
    curve = lifetimes.survival_curve(sessions, None, None)
    life = {c: _lifetime(c) for c in CHAINS}
    ended = {c: c != "O1" for c in CHAINS}  # O1 is active at the end of the data: censored

    def km(t: float) -> float:
        s = 1.0
        for d in sorted({v for c, v in life.items() if ended[c] and v < t}):
            at_risk = sum(1 for v in life.values() if v >= d)
            deaths = sum(1 for c, v in life.items() if ended[c] and v == d)
            s *= 1 - deaths / at_risk
        return s

    assert list(curve["alive"][:2]) == [1.0, 1.0] and list(curve["t_s"][:2]) == [0.0, TTL]
    top = curve["t_s"].iloc[-1]
    checked = 0
    for r in curve.iloc[2:-1].itertuples():  # the last step also holds everything past the 99th percentile
        assert r.alive == pytest.approx(km(r.t_s)), r.t_s
        checked += 1
    assert checked == lifetimes.SURVIVAL_STEPS - 1
    assert curve["alive"].is_monotonic_decreasing
    assert km(top) == pytest.approx(0.3)  # 0.8 after M1, x 3/4 after B1, x 1/2 after A2 (O1 censored)


def test_identity_lifetimes_table(sessions):
    table = lifetimes.identity_lifetimes(sessions, None, None).set_index("identity")
    assert list(table.index) == ["alice", "bob"]  # worst first: alice has the forced re-login
    alice = table.loc["alice"]
    assert alice["chains"] == 2 and alice["forced_relogins"] == 1 and alice["late_refreshes"] == 1
    assert alice["median_lifetime_s"] == pytest.approx(statistics.median([_lifetime("A1"), _lifetime("A2")]))
    assert alice["max_lifetime_s"] == pytest.approx(_lifetime("A1"))
    assert alice["refreshes"] == 6 and alice["forks"] == 1
    assert table.loc["bob", "median_lifetime_s"] == pytest.approx(_lifetime("B1"))
    assert (table["identities_total"] == 2).all()


def test_identity_chains_events_and_tree(sessions):
    chains = identity.identity_chains(sessions, "alice", None, None)
    assert list(chains["events"]) == [len(CHAINS["A1"]), len(CHAINS["A2"])]
    assert list(chains["end_state"]) == ["forced_relogin", "ended"]
    assert chains["next_start"].iloc[0] == at(SESSIONS["A2"][0])
    assert chains["chain"].str.len().eq(10).all()

    events = identity.identity_events(sessions, "alice", None, None)
    assert len(events) == 8 and list(events["time"]) == sorted(
        at(SESSIONS[n][0]) for c in ("A1", "A2") for n in CHAINS[c]
    )
    assert set(events.columns) >= {"access_fp", "refresh_fp", "old_refresh_fp"}
    assert (
        events[["access_fp", "refresh_fp", "old_refresh_fp", "chain", "event", "parent"]]
        .apply(lambda col: col.dropna().str.len().le(10).all())
        .all()
    )  # fingerprints leave short
    late = events[events["refresh_class"] == "late"]
    assert list(late["time"]) == [at(SESSIONS["A1e3"][0])] and list(late["parent_time"]) == [
        at(SESSIONS["A1e2"][0])
    ]

    tree = identity.lineage_tree(sessions, chains["chain_id"].iloc[1])
    by_time = {
        t.to_pydatetime(): (lane, sub)
        for t, lane, sub in zip(tree["time"], tree["lane"], tree["subtree"], strict=True)
    }
    # A2's fork: a6 goes on (its child a8 stays on the main line), a7 opens branch 1
    assert by_time[at(SESSIONS["A2"][0])] == (0, 4)
    assert by_time[at(SESSIONS["A2e2"][0])] == (0, 2)
    assert by_time[at(SESSIONS["A2f"][0])] == (1, 1)
    assert by_time[at(SESSIONS["A2e3"][0])] == (0, 1)
    assert tree["forked"].sum() == 2


def test_session_findings_say_why_in_plain_words(sessions):
    detail = identity.identity_detail(sessions, "alice", None, None)
    f = detail["findings"]
    assert Counter(f["kind"]) == {
        "forced_relogin": 1,
        "late_refresh": 1,
        "fork": 1,
        "orphan_guess": 1,
        "ended": 1,
    }
    assert f["time"].is_monotonic_decreasing
    text = dict(zip(f["kind"], f["text"], strict=True))
    gap = SESSIONS["A2"][0] - SESSIONS["A1e4"][0]  # 2400 s: re-login 40 min after the last refresh
    assert f"{gap // 60:.0f} min after the last refresh" in text["forced_relogin"]
    assert f"still valid for {lifetimes.duration_text(REFRESH_TTL - gap)}" in text["forced_relogin"]
    assert "13 days 23 h" in text["forced_relogin"] and "lost its tokens" in text["forced_relogin"]
    assert (
        f"came {lifetimes.duration_text(_interval('A1e3') - TTL)} after the access token expired"
        in text["late_refresh"]
    )
    assert "presented 2 times, 500 ms apart" in text["fork"]
    # O1 started 63 min after A2 ended, and no other session ended in that window: still called a guess
    assert "63 min after chain" in text["orphan_guess"] and "guess" in text["orphan_guess"]
    assert "no other session ended" in text["orphan_guess"]
    assert detail["overview"]["chains"] == 2 and detail["ttl_s"] == TTL
    assert identity.session_findings(sessions, "bob", None, None)["kind"].tolist() == ["ended"]


def test_identity_options_and_overview(sessions):
    assert identity.identity_options(sessions, None, None) == ["alice", "bob"]
    assert identity.identity_options(sessions, at(3000), at(4000)) == ["bob"]
    assert identity.identity_overview(sessions, "nobody")["chains"] == 0
    assert identity.identity_chains(sessions, "alice", at(20000), None).empty


def test_every_query_on_an_empty_store(empty):
    assert refresh.events_per_bucket(empty, None, None, "1 hour").empty
    p = refresh.refresh_profile(empty, None, None, "1 hour")
    assert p["histogram"].empty and p["over_time"].empty and p["totals"]["refreshes"] == 0
    assert p["totals"]["median_interval_s"] is None
    assert refresh.top_identities_by_refresh_rate(empty, None, None).empty
    assert lifetimes.lifetime_totals(empty, None, None)["chains"] == 0
    assert (
        lifetimes.lifetime_histogram(empty, None, None).empty
        and lifetimes.survival_curve(empty, None, None).empty
    )
    assert lifetimes.identity_lifetimes(empty, None, None).empty
    r = orphans.orphan_report(empty, None, None)
    assert r["orphans"].empty and r["orphans_total"] == 0 and r["pauses"].empty and r["per_bucket"].empty
    assert identity.identity_options(empty, None, None) == []
    d = identity.identity_detail(empty, "alice", None, None)
    assert d["chains"].empty and d["findings"].empty and d["overview"]["chains"] == 0
    # a range over an empty store still gives the zero-filled grid
    grid = refresh.events_per_bucket(empty, at(0), at(3 * 3600), "1 hour")
    assert len(grid) == 3 * 2 and grid["events"].sum() == 0


@pytest.mark.parametrize(
    "text,expected",
    [
        (0.5, "500 ms"),
        (4.25, "4.2 s"),
        (45, "45 s"),
        (600, "10 min"),
        (7500, "2 h 5 min"),
        (2 * 86400 + 4 * 3600, "2 days 4 h"),
        (None, "-"),
        (-120, "-2 min"),
    ],
)
def test_duration_text(text, expected):
    assert lifetimes.duration_text(text) == expected


# -- the receiver scenario: steady traffic, a hole, a retry burst, four orphans --------------------------------

STEP = 120  # a machine token every 2 minutes, 12 hours long
HOLE = (28800, 31500)  # nothing delivered strictly inside: 08:00 .. 08:45
BURST = [15000 + 300 * k for k in range(6)]  # 04:10 .. 04:35, each delivered twice (Tyk retried)
ORPHANS = {  # unknown parent token -> (first event, expected cause)
    "pre": (607, "start of data"),  # 00:10, within one token lifetime of the data's start
    "lostB": (18007, "retry burst"),  # 05:00, the burst in the hour before
    "lostG": (32407, "delivery gap"),  # 09:00, the hole in the hour before
    "lostU": (39607, "unexplained"),  # 11:00, nothing wrong in the hour before
}


def _receiver_deliveries() -> list[tuple[float, dict]]:
    out = [(float(t), body("new", f"m{t}")) for t in range(0, 43200 + 1, STEP) if not HOLE[0] < t < HOLE[1]]
    for t in BURST:
        b = body("new", f"burst{t}")
        out += [(t + 1.0, b), (t + 11.0, b)]
    for parent, (t, _) in ORPHANS.items():
        out += [(float(t), body("refresh", f"o-{parent}", f"ro-{parent}", parent))]
    return sorted(out, key=lambda d: d[0])


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    s = Store.open(tmp_path_factory.mktemp("receiver") / "r.duckdb")
    load(s, [record(iso(t), b) for t, b in _receiver_deliveries()])
    yield s
    s.close()


def _reference_gaps(factor: float, min_s: float) -> list[tuple[float, float, float]]:
    """(start, end, times usual) of every pause of min_s or more whose spacing is factor x the 3 h before."""
    times = [t for t, _ in _receiver_deliveries()]
    out = []
    for a, b in zip(times, times[1:], strict=False):
        if b - a < min_s:
            continue
        lo = max(a - 3 * 3600, times[0])
        n = sum(1 for t in times if lo <= t <= a)
        if n < 2 or a - lo < 600:
            continue
        usual = (a - lo) / n
        if (b - a) >= factor * usual:
            out.append((a, b, (b - a) / usual))
    return out


def test_delivery_gaps_match_a_reference(receiver):
    pauses = orphans.delivery_pauses(receiver, None, None)
    gaps = pauses[pauses["flagged"]]
    ref = _reference_gaps(orphans.GAP_FACTOR, orphans.GAP_MIN_S)
    assert [(a, b) for a, b, _ in ref] == [(28800.0, 31560.0)]
    assert [(g.gap_start, g.gap_end) for g in gaps.itertuples()] == [(at(28800), at(31560))]
    assert gaps["gap_s"].iloc[0] == pytest.approx(2760)
    # the usual spacing comes from 10-second buckets: within a few percent of the exact one
    assert gaps["times_usual"].iloc[0] == pytest.approx(ref[0][2], rel=0.05)
    # every other 2-minute pause is a pause, not a gap
    assert len(pauses) > 300 and pauses.loc[~pauses["flagged"], "times_usual"].max() < orphans.GAP_FACTOR
    # a range keeps the pauses that overlap it
    assert orphans.delivery_pauses(receiver, at(30000), at(30100))["gap_start"].tolist() == [at(28800)]


def test_orphan_causes(receiver):
    report = orphans.orphan_report(receiver, None, None, "1 hour")
    got = dict(zip(report["orphans"]["first_seen"], report["orphans"]["cause"], strict=True))
    assert got == {at(t): cause for t, cause in ORPHANS.values()}
    assert report["causes"] == Counter(cause for _, cause in ORPHANS.values())
    assert report["orphans_total"] == 4 and len(report["gaps"]) == 1
    by_cause = report["orphans"].set_index("cause")
    burst = by_cause.loc["retry burst"]
    assert burst["window_retries"] == len(BURST)  # one extra delivery per burst notification
    assert "6 retried deliveries" in burst["evidence"]
    assert "no delivery for 46 min from 2026-12-01 08:00:00" in by_cause.loc["delivery gap", "evidence"]
    assert "into the data" in by_cause.loc["start of data", "evidence"]
    assert by_cause["unknown_parent"].str.len().le(10).all()
    # per bucket, the causes add up to the orphan chains
    pb = report["per_bucket"]
    assert (pb[list(orphans.CAUSES)].sum(axis=1) == pb["orphan_chains"]).all()
    assert pb["chains"].sum() == len(_receiver_deliveries()) - len(
        BURST
    )  # one chain per distinct notification


def test_orphan_report_range_and_lookback(receiver):
    part = orphans.orphan_report(receiver, at(4 * 3600), at(10 * 3600), "1 hour")
    assert sorted(part["orphans"]["cause"]) == ["delivery gap", "retry burst"]
    assert len(part["gaps"]) == 1
    # a 10-minute look-back reaches neither the hole (it ended 14 min before lostG) nor the burst (25 min)
    short = orphans.orphan_report(receiver, None, None, "1 hour", lookback_s=600.0)
    causes = dict(zip(short["orphans"]["first_seen"], short["orphans"]["cause"], strict=True))
    assert causes[at(ORPHANS["lostB"][0])] == "unexplained"
    assert causes[at(ORPHANS["lostG"][0])] == "unexplained"


# -- the boundary -----------------------------------------------------------------------------------------------


def test_the_dashboard_queries_never_import_streamlit():
    code = (
        "import sys, queries.refresh, queries.orphans, queries.lifetimes, queries.identity; "
        "sys.exit(1 if 'streamlit' in sys.modules or 'plotly' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
