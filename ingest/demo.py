"""A seeded simulation of a Tyk fleet and of the webhook receiver that logs its OAuth notifications.

This is the data set the dashboard opens on, and a source of known answers for tests. Design choices:

* **Two sides, simulated separately.** First the *Tyk side*: what token requests happen (logins, refreshes,
  machine tokens) and which notification each one causes. Then the *receiver side*: which delivery attempts
  reach the receiver, what it answers, and what it logs. Delivery never changes the token flow (an app keeps
  refreshing whether or not the receiver heard about it), which is exactly why lost notifications turn the
  rest of a session into an orphan chain.
* **Tyk's real behaviour** (see /work/shared/DOMAIN.md): `refresh` bodies have an empty `auth_code`;
  password and client_credentials logins are `new` with an empty `auth_code`; refresh tokens are single-use;
  only HTTP 200 stops the retries; 3 attempts 10 s apart, then the notification is gone; sending happens in
  goroutines, so close notifications can be logged out of order.
* **People, not a Poisson process.** Users live in time zones and have devices: a browser used during
  working hours (overnight gaps give *late* refreshes next morning), phones that refresh in the background
  (some around the clock), a few tablets, a legacy desktop client on the password grant. Sessions end after a
  variable number of refreshes; some users log in many times a day; some apps lose their token and the user
  logs in again while the old refresh token is still valid (a forced re-login).
* **The rare things are placed, not hoped for.** Refresh races (forks), double refreshes within 50 ms (out of
  order deliveries) and receiver outages are inserted at randomly chosen refreshes, so even a small simulation
  shows each of them and tests need no lucky seed.
* **A warm-up before the window.** The fleet runs two days before `end - days`, and only deliveries inside
  the window are kept, as when a receiver's logs start at some date: sessions already running at the start
  show up as orphan chains whose parent "lies outside the data" (counted apart in `truth`).
* **Truth two ways.** `truth` holds what the simulator did (lost notifications, refresh races, token losses,
  outage windows) and what a correct lineage must find in the records, computed here by a small independent
  reference implementation of the DOMAIN.md definitions (chains, orphan chains, forks, forced re-logins, ...).
* **Deterministic and standard library only.** One `random.Random(seed)` drives everything in a fixed order
  (no iteration over sets of strings, whose order changes between processes); times are integer
  microseconds; gzip headers carry no mtime or name. Same seed and end give byte-identical files.
"""

from __future__ import annotations

import base64
import bisect
import csv
import gzip
import json
import random
import statistics
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ACCESS_TOKEN_LIFETIME_S = 3600  # Tyk's oauth_token_expire default
REFRESH_TOKEN_LIFETIME_S = 14 * 86400  # Tyk's oauth_refresh_token_expire default
RETRY_WAIT_S = 10
ATTEMPTS = 3
ES_EXPORT_HOURS = 6
WARMUP_DAYS = 2

_US = 1_000_000  # microseconds per second; all times are integer microseconds since the epoch
_HOUR = 3600 * _US
_DAY = 24 * _HOUR
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TYK_KEYS = ("auth_code", "new_oauth_token", "refresh_token", "old_refresh_token", "notification_type")

_GATEWAYS = ("10.0.3.7", "10.0.3.8", "10.0.4.12")
_BASE_FAILURE = 0.03  # share of deliveries the receiver answers non-200 on an ordinary day
_BURST_FAILURE = 0.5  # during the overload burst
# What a receiver answers when it is not answering 200; 204 and 201 count as failures for Tyk too.
_FAIL_STATUSES = (500, 502, 503, 503, 504, 429, 204)
_BURST_STATUSES = (503, 503, 503, 502, 504)

_FIRST_NAMES = (
    "alice", "amir", "ana", "ben", "carla", "chen", "daniel", "dana", "elena", "emeka", "fatima", "felix",
    "grace", "hana", "hugo", "ines", "ivan", "jana", "jonas", "kai", "kofi", "lara", "leo", "lucia", "maria",
    "mateo", "mei", "nadia", "noah", "olga", "omar", "paula", "priya", "quentin", "rosa", "sami", "sofia",
    "tariq", "uma", "victor", "wei", "yara", "yusuf", "zoe",
)  # fmt: skip
_LAST_NAMES = (
    "adeyemi", "andersen", "bauer", "becker", "costa", "dubois", "evans", "fischer", "garcia", "haddad",
    "hansen", "ito", "jansen", "kim", "kowalski", "larsen", "lopez", "martin", "meyer", "moreau", "nakamura",
    "novak", "okafor", "olsen", "patel", "perez", "quinn", "rossi", "schmidt", "silva", "singh", "smith",
    "tanaka", "torres", "vargas", "weber", "wong", "yilmaz", "zhang",
)  # fmt: skip
_DOMAINS = ("example.com", "example.com", "example.com", "example.org", "acme.example")
# Offsets of the users' home time zones (hours), weighted towards Europe and the Americas.
_TIMEZONES = (0, 1, 1, 1, 2, 2, -5, -5, -6, -8, 8, 9, 5)
_MACHINES = (  # client_credentials clients: (name, seconds between token requests)
    ("billing-sync", 3300),
    ("reporting-etl", 1800),
    ("inventory-bot", 3500),
    ("audit-exporter", 3000),
)


# --------------------------------------------------------------------------------------------- records


def _iso_us(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _to_us(dt: datetime) -> int:
    if dt.tzinfo is None:  # a naive time is taken as UTC, the receiver's zone
        dt = dt.replace(tzinfo=UTC)
    delta = dt.astimezone(UTC) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * _US + delta.microseconds


def receiver_record(
    received_at: datetime,
    body: dict,
    *,
    status: int = 200,
    remote_addr: str = "10.0.0.1:40000",
    extra: dict | None = None,
) -> dict:
    """One line of the plain receiver log (docs/design.md): the receiver's own time, what it answered, the body."""
    record = {
        "received_at": _iso_us(_to_us(received_at)),
        "level": "info" if status == 200 else "warn",
        "msg": "tyk oauth notification",
        "status": status,
        "remote_addr": remote_addr,
    }
    if extra:
        record.update(extra)
    record["body"] = body
    return record


@dataclass
class Simulation:
    """The receiver's log, the service's identity export, and the known answers.

    `truth` keys, as found in the records by the DOMAIN.md definitions: deliveries, events, duplicates,
    rejected (always 0), chains, orphan_chains, forks, identities, median_chain_span_s, retried_bodies,
    out_of_order (refresh events first logged before their parent), early_refreshes, late_refreshes,
    forced_relogins, authorization_code_logins, password_logins, client_credentials.
    As done by the simulator: notifications_sent (inside the window), lost_notifications (no attempt
    received), exhausted_retries (3 non-200 answers, all logged), refresh_races, double_refreshes,
    token_loss_relogins (logins after an app lost a valid token), orphan_chains_window_start (parent sent
    before the data begins), orphan_chains_lost_parent, users, outage_windows and burst_window (ISO pairs).
    """

    records: list[dict]  # receiver records, in the order the receiver logged them
    identities: list[tuple[str, str]]  # (auth_code, user) rows of the service's identity export
    truth: dict  # what the simulator did and what a correct lineage must find
    start: datetime | None = None
    end: datetime | None = None


# --------------------------------------------------------------------------------------------- Tyk side


class _Tokens:
    """Token strings shaped like Tyk's; drawn from the simulation's generator so they are reproducible."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        # Tyk prefixes key ids with the org id; a short one keeps access tokens near 60 characters.
        self.org_id = f"{rng.getrandbits(48):012x}"

    def _b64url(self, n_bytes: int) -> str:
        raw = self.rng.getrandbits(8 * n_bytes).to_bytes(n_bytes, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def auth_code(self) -> str:
        return self._b64url(24)  # 32 characters

    def refresh_token(self) -> str:
        return self._b64url(32)  # 43 characters

    def access_token(self) -> str:
        key_id = uuid.UUID(int=self.rng.getrandbits(128), version=4).hex
        return base64.b64encode((self.org_id + key_id).encode()).decode()  # 60 characters


@dataclass(slots=True, eq=False)
class _Note:
    """One notification Tyk sends, with what the simulator knows about it."""

    t: int  # when Tyk handled the token request
    body: dict
    kind: str  # authorization_code | password | client_credentials | refresh
    user: str | None = None
    username: str | None = None  # logged by the receiver for password logins
    child: _Note | None = None  # the refresh that continued the session from this one
    latency: int | None = None  # delivery delay of the first attempt; drawn if None
    token_loss: bool = False  # a login that follows an app losing its still-valid token
    seq: int = 0


@dataclass
class _Device:
    user: str
    grant: str  # authorization_code | password
    starts: list[int]  # active intervals, sorted
    ends: list[int]
    mean_refreshes: float  # mean session length, in refreshes
    relogin_gap_h: tuple[float, float]  # how long after a logout the user comes back
    token_loss: float  # chance that a session ends because the app lost its token

    def next_active(self, t: int) -> int | None:
        i = bisect.bisect_right(self.starts, t) - 1
        if i >= 0 and t < self.ends[i]:
            return t
        return self.starts[i + 1] if i + 1 < len(self.starts) else None


def _users(rng: random.Random, n: int) -> list[str]:
    combos = len(_FIRST_NAMES) * len(_LAST_NAMES)
    picks = rng.sample(range(combos), min(n, combos))
    users = []
    for i in range(n):
        if i < len(picks):
            first, last = divmod(picks[i], len(_LAST_NAMES))
            local = f"{_FIRST_NAMES[first]}.{_LAST_NAMES[last]}"
        else:  # more users than name pairs: fall back to numbered accounts
            local = f"user-{i:04d}"
        users.append(f"{local}@{rng.choice(_DOMAINS)}")
    return users


def _intervals(rng: random.Random, lo: int, hi: int, tz_h: int, pattern: str) -> tuple[list[int], list[int]]:
    """Active intervals of one device over [lo, hi]: when its app is used (or allowed to run) and refreshes."""
    if pattern == "always":
        return [lo], [hi]
    starts, ends = [], []
    day = (lo // _DAY - 1) * _DAY
    work_start = rng.uniform(7, 10)
    work_len = rng.uniform(7, 10.5)
    while day < hi:
        local_midnight = day - tz_h * _HOUR
        weekend = (_EPOCH + timedelta(microseconds=day)).weekday() >= 5
        spans = []
        if pattern == "work":
            if rng.random() < (0.2 if weekend else 0.95):
                on = work_start + rng.gauss(0, 0.4)
                spans.append((on, on + work_len + rng.gauss(0, 0.8)))
            if rng.random() < 0.2:  # an evening check
                on = rng.uniform(19, 21)
                spans.append((on, on + rng.uniform(0.5, 2.5)))
        elif pattern == "waking":  # phones whose background refresh stops at night
            spans.append((rng.uniform(6, 8.5), rng.uniform(22, 24.5)))
        elif pattern == "evening" and rng.random() < 0.5:
            on = rng.uniform(18.5, 21)
            spans.append((on, on + rng.uniform(1, 3)))
        for on, off in spans:
            a, b = local_midnight + int(on * _HOUR), local_midnight + int(off * _HOUR)
            if starts and a <= ends[-1]:
                ends[-1] = max(ends[-1], b)
            else:
                starts.append(a)
                ends.append(b)
        day += _DAY
    return starts, ends


def _devices(rng: random.Random, users: list[str], lo: int, hi: int) -> list[_Device]:
    devices = []
    n_password = max(2, round(len(users) * 0.1))
    for i, user in enumerate(users):
        tz = rng.choice(_TIMEZONES)
        # A fifth of the users end their sessions quickly and log in again several times a day.
        frequent = rng.random() < 0.2
        scale = 0.12 if frequent else 1.0
        gap = (0.3, 3.0) if frequent else (0.5, 16.0)
        kinds = []
        if i < n_password:  # a legacy desktop client on the password grant
            kinds.append(("work", "password", 14))
        else:
            if rng.random() < 0.9:
                kinds.append(("work", "authorization_code", 30))
            if rng.random() < 0.85:
                always = rng.random() < 0.6
                kinds.append(("always" if always else "waking", "authorization_code", 90 if always else 45))
            if rng.random() < 0.15:
                kinds.append(("evening", "authorization_code", 8))
            if rng.random() < 0.45:
                # A third-party integration the user authorized (calendar sync, backup): it refreshes around
                # the clock on the user's behalf and rarely needs a new login.
                kinds.append(("always", "authorization_code", 150))
            if not kinds:
                kinds.append(("work", "authorization_code", 30))
        for pattern, grant, mean in kinds:
            starts, ends = _intervals(rng, lo, hi, tz, pattern)
            mean_refreshes = mean * scale * rng.uniform(0.5, 1.5)
            devices.append(_Device(user, grant, starts, ends, mean_refreshes, gap, rng.uniform(0.03, 0.15)))
    return devices


class _Fleet:
    def __init__(self, rng: random.Random, lo: int, hi: int) -> None:
        self.rng = rng
        self.tokens = _Tokens(rng)
        self.lo, self.hi = lo, hi
        self.notes: list[_Note] = []

    def _add(self, note: _Note) -> _Note:
        note.seq = len(self.notes)
        self.notes.append(note)
        return note

    def login(self, t: int, dev: _Device) -> _Note:
        tok = self.tokens
        if dev.grant == "password":
            body = _body("", tok.access_token(), tok.refresh_token(), "", "new")
            return self._add(_Note(t, body, "password", user=dev.user, username=dev.user))
        body = _body(tok.auth_code(), tok.access_token(), tok.refresh_token(), "", "new")
        return self._add(_Note(t, body, "authorization_code", user=dev.user))

    def refresh(self, t: int, old_refresh_token: str, user: str | None) -> _Note:
        tok = self.tokens
        body = _body("", tok.access_token(), tok.refresh_token(), old_refresh_token, "refresh")
        return self._add(_Note(t, body, "refresh", user=user))

    def interval(self) -> int:
        r = self.rng.random()
        if r < 0.08:  # app restarted or a second tab: refreshes before it has to
            return int(self.rng.uniform(15, 1800) * _US)
        if r < 0.16:  # idle user came back after the access token expired
            return int((ACCESS_TOKEN_LIFETIME_S + self.rng.expovariate(1 / 2400)) * _US)
        # Most clients refresh shortly before expiry.
        return int(self.rng.triangular(1800, ACCESS_TOKEN_LIFETIME_S, 3300) * _US)

    def run_device(self, dev: _Device) -> None:
        rng = self.rng
        t = dev.next_active(self.lo + int(rng.uniform(0, 1) * _DAY))
        last: _Note | None = None
        left = 0
        token_loss = False
        while t is not None and t < self.hi:
            if last is None or t - last.t >= REFRESH_TOKEN_LIFETIME_S * _US:
                note = self.login(t, dev)
                note.token_loss, token_loss = token_loss, False
                left = int(rng.expovariate(1 / dev.mean_refreshes))
            else:
                note = self.refresh(t, last.body["refresh_token"], last.user)
                last.child = note
                left -= 1
            last = note
            if left <= 0:
                last = None
                if rng.random() < dev.token_loss:
                    # The app lost its token; the user is sent to log in again, well before the refresh
                    # token would have expired.
                    token_loss = True
                    t = dev.next_active(t + int(rng.uniform(60, 3000) * _US))
                else:
                    t = dev.next_active(t + int(rng.uniform(*dev.relogin_gap_h) * _HOUR))
                continue
            # Outside the active hours nothing refreshes; the next refresh comes when the user is back.
            t = dev.next_active(t + self.interval())

    def run_machines(self) -> None:
        for _name, every_s in _MACHINES:
            t = self.lo + int(self.rng.uniform(0, every_s) * _US)
            while t < self.hi:
                body = _body("", self.tokens.access_token(), "", "", "new")
                self._add(_Note(t, body, "client_credentials"))
                t += int(every_s * self.rng.uniform(0.9, 1.1) * _US)


def _body(auth_code: str, access: str, refresh: str, old_refresh: str, kind: str) -> dict:
    return {
        "auth_code": auth_code,
        "new_oauth_token": access,
        "refresh_token": refresh,
        "old_refresh_token": old_refresh,
        "notification_type": kind,
    }


def _place_rare_events(fleet: _Fleet, start: int, end: int, users: int) -> tuple[dict, list[tuple[int, int]]]:
    """Insert refresh races and double refreshes, and choose outage windows, at random refreshes."""
    rng = fleet.rng
    candidates = [
        n
        for n in fleet.notes
        if n.kind == "refresh" and n.child is not None and start + _HOUR < n.t < end - _HOUR
    ]
    n_forks = max(3, users // 25)
    n_double = max(8, users // 12)
    n_outages = rng.randint(2, 3)  # the brief allows 1-3; one short window often loses a single notification
    picks = rng.sample(candidates, min(len(candidates), n_double + n_forks + n_outages))
    doubles, picks = picks[:n_double], picks[n_double:]
    forks, anchors = picks[:n_forks], picks[n_forks:]

    for i, note in enumerate(doubles):
        # The app refreshes, then at once refreshes again with the token it just got.
        gap = int(rng.uniform(0.005, 0.05) * _US)
        second = fleet.refresh(note.t + gap, note.body["refresh_token"], note.user)
        second.child, note.child = note.child, second
        second.child.body["old_refresh_token"] = second.body["refresh_token"]
        if i % 3 != 2:
            # The parent's goroutine is scheduled late: the child reaches the receiver a few ms first.
            # (The other third keep their natural order, which is usually, not always, the right one.)
            second.latency = _latency(rng)
            note.latency = gap + second.latency + int(rng.uniform(0.5, 8) * 1000)

    for note in forks:
        # A second app instance presents the same refresh token within a second; it wins a token pair of its
        # own that nobody uses afterwards (the session continues from the other one).
        dt = int(rng.uniform(0.05, 0.95) * _US) * rng.choice((-1, 1))
        fleet.refresh(note.t + dt, note.body["old_refresh_token"], note.user)

    outages = []
    for note in anchors:
        # The receiver is down long enough to swallow all three attempts of this notification.
        length = rng.uniform(30, 120)
        lead = rng.uniform(0.5, length - 22)
        a = note.t - int(lead * _US)
        outages.append((a, a + int(length * _US)))
    outages.sort()
    return {"refresh_races": len(forks), "double_refreshes": len(doubles)}, outages


def _latency(rng: random.Random) -> int:
    return int(rng.lognormvariate(1.6, 0.6) * 1000)  # a few ms, now and then tens of ms


# --------------------------------------------------------------------------------------------- receiver side


def _deliver(
    rng: random.Random,
    notes: list[_Note],
    start: int,
    end: int,
    outages: list[tuple[int, int]],
    burst: tuple[int, int],
) -> tuple[list[tuple[int, int, dict]], dict]:
    out: list[tuple[int, int, dict]] = []
    lost = exhausted = 0
    outage_starts = [a for a, _ in outages]

    def down(t: int) -> bool:
        i = bisect.bisect_right(outage_starts, t) - 1
        return i >= 0 and t < outages[i][1]

    for note in notes:
        gateway = rng.choice(_GATEWAYS)
        t = note.t + (note.latency if note.latency is not None else _latency(rng))
        received = 0
        attempts_in_window = 0
        for _attempt in range(ATTEMPTS):
            if t > end:
                break
            attempts_in_window += t >= start
            if not down(t):
                received += 1
                in_burst = burst[0] <= t < burst[1]
                if rng.random() < (_BURST_FAILURE if in_burst else _BASE_FAILURE):
                    status = rng.choice(_BURST_STATUSES if in_burst else _FAIL_STATUSES)
                else:
                    status = 200
                if t >= start:
                    extra = {"username": note.username} if note.username else None
                    remote = f"{gateway}:{rng.randint(32768, 60999)}"
                    rec = receiver_record(
                        _EPOCH + timedelta(microseconds=t),
                        dict(note.body),
                        status=status,
                        remote_addr=remote,
                        extra=extra,
                    )
                    out.append((t, len(out), rec))
                if status == 200:
                    break
            # Tyk waits 10 s after a failure; the extra is the failed request's own duration.
            t += RETRY_WAIT_S * _US + int(rng.uniform(0.002, 0.3) * _US)
        else:
            if received == 0 and attempts_in_window == ATTEMPTS:
                lost += 1
            elif received and note.t >= start:
                exhausted += 1
    out.sort(key=lambda x: (x[0], x[1]))
    return out, {"lost_notifications": lost, "exhausted_retries": exhausted}


# --------------------------------------------------------------------------------------------- truth


def _reference_lineage(records: list[dict], codes: dict[str, str]) -> dict:
    """The DOMAIN.md definitions applied to the records, plainly, as a cross-check for ingest.lineage."""
    first: dict[tuple, int] = {}  # event (body) -> index of its first delivery
    deliveries: dict[tuple, int] = {}
    times: list[datetime] = []
    for i, rec in enumerate(records):
        b = rec["body"]
        key = tuple(b[k] for k in _TYK_KEYS)
        times.append(datetime.fromisoformat(rec["received_at"]))
        if key not in first:
            first[key] = i
        deliveries[key] = deliveries.get(key, 0) + 1
    events = list(first)  # in order of first delivery
    ev_time = {e: times[first[e]] for e in events}
    issuer = {e[2]: e for e in events if e[2]}
    presented: dict[str, list[tuple]] = {}
    for e in events:
        if e[4] == "refresh":
            presented.setdefault(e[3], []).append(e)

    def parent(e: tuple) -> tuple | None:
        return issuer.get(e[3]) if e[4] == "refresh" else None

    root_of: dict[tuple, tuple] = {}
    for e in events:
        path = []
        while e not in root_of and (p := parent(e)) is not None:
            path.append(e)
            e = p
        r = root_of.get(e, e)
        root_of[e] = r
        for x in path:
            root_of[x] = r

    chains: dict[tuple, list[tuple]] = {}
    for e in events:
        chains.setdefault(root_of[e], []).append(e)
    roots = list(chains)
    orphan_roots = [r for r in roots if r[4] == "refresh"]

    early = late = out_of_order = 0
    life = ACCESS_TOKEN_LIFETIME_S
    for e in events:
        p = parent(e)
        if p is None:
            continue
        dt = (ev_time[e] - ev_time[p]).total_seconds()
        early += dt < life / 2
        late += dt > life
        out_of_order += first[e] < first[p]

    usernames = {}
    for rec in records:
        b = rec["body"]
        if b["notification_type"] == "new" and rec.get("username"):
            usernames.setdefault(b["new_oauth_token"], rec["username"])
    by_identity: dict[str, list[tuple]] = {}
    for r in roots:
        who = codes.get(r[0]) if r[0] else usernames.get(r[1])
        if r[4] == "new" and who:
            by_identity.setdefault(who, []).append(r)
    forced = 0
    for chain_roots in by_identity.values():
        spans = []
        for r in chain_roots:
            evs = chains[r]
            last = max(evs, key=lambda e: (ev_time[e], first[e]))
            spans.append((ev_time[r], ev_time[last], last[2]))
        starts = sorted(s[0] for s in spans)
        for _, prev_last, prev_token in spans:
            # The identity's first chain started after this one's last event (an overlapping chain is a
            # second device, not a re-login) while this chain's last refresh token was unused and valid.
            nxt_first = next((t for t in starts if t > prev_last), None)
            unused = prev_token and prev_token not in presented
            if unused and nxt_first and (nxt_first - prev_last).total_seconds() < REFRESH_TOKEN_LIFETIME_S:
                forced += 1

    spans_s = [
        (max(ev_time[e] for e in evs) - min(ev_time[e] for e in evs)).total_seconds()
        for evs in chains.values()
    ]
    return {
        "deliveries": len(records),
        "events": len(events),
        "duplicates": len(records) - len(events),
        "rejected": 0,
        "chains": len(roots),
        "orphan_chains": len(orphan_roots),
        "forks": sum(1 for evs in presented.values() if len(evs) > 1),
        "identities": len(by_identity),
        "median_chain_span_s": statistics.median(spans_s) if spans_s else 0.0,
        "retried_bodies": sum(1 for n in deliveries.values() if n > 1),
        "out_of_order": out_of_order,
        "early_refreshes": early,
        "late_refreshes": late,
        "forced_relogins": forced,
        "authorization_code_logins": sum(1 for e in events if e[4] == "new" and e[0]),
        "password_logins": sum(1 for e in events if e[4] == "new" and not e[0] and e[2]),
        "client_credentials": sum(1 for e in events if e[4] == "new" and not e[0] and not e[2]),
        "_orphan_parents": [r[3] for r in orphan_roots],
    }


# --------------------------------------------------------------------------------------------- public API


def simulate(*, days: int = 5, users: int = 150, seed: int = 7, end: datetime | None = None) -> Simulation:
    """Simulate `users` people and a few machine clients on Tyk for `days` days ending at `end` (default: now)."""
    if end is None:
        end = datetime.now(UTC).replace(second=0, microsecond=0)
    end_us = _to_us(end)
    start_us = end_us - days * _DAY
    lo = start_us - WARMUP_DAYS * _DAY
    rng = random.Random(seed)

    fleet = _Fleet(rng, lo, end_us)
    for dev in _devices(rng, _users(rng, users), lo, end_us):
        fleet.run_device(dev)
    fleet.run_machines()
    placed, outages = _place_rare_events(fleet, start_us, end_us, users)
    burst_at = int(rng.uniform(start_us + 6 * _HOUR, max(start_us + 6 * _HOUR, end_us - 6 * _HOUR)))
    burst = (burst_at, burst_at + int(rng.uniform(20, 45) * 60 * _US))

    notes = sorted(fleet.notes, key=lambda n: (n.t, n.seq))
    delivered, delivery_truth = _deliver(rng, notes, start_us, end_us, outages, burst)
    records = [rec for _, _, rec in delivered]

    logged_new = {r["body"]["auth_code"] for r in records if r["body"]["auth_code"]}
    identities = [
        (n.body["auth_code"], n.user)
        for n in notes
        if n.kind == "authorization_code" and n.body["auth_code"] in logged_new
    ]
    truth = _reference_lineage(records, dict(identities))

    # Why each orphan chain has no parent: the parent was lost in an outage, or was sent before the data.
    issued_at = {n.body["refresh_token"]: n.t for n in notes if n.body["refresh_token"]}
    orphan_parents = truth.pop("_orphan_parents")
    before = sum(1 for tok in orphan_parents if issued_at.get(tok, start_us) < start_us)
    in_window = [n for n in notes if start_us <= n.t <= end_us]
    truth.update(delivery_truth)
    truth.update(placed)
    truth.update(
        {
            "orphan_chains_window_start": before,
            "orphan_chains_lost_parent": len(orphan_parents) - before,
            "token_loss_relogins": sum(1 for n in in_window if n.token_loss),
            "notifications_sent": len(in_window),
            "users": users,
            "outage_windows": [[_iso_us(a), _iso_us(b)] for a, b in outages],
            "burst_window": [_iso_us(burst[0]), _iso_us(burst[1])],
        }
    )
    return Simulation(
        records=records,
        identities=identities,
        truth=truth,
        start=_EPOCH + timedelta(microseconds=start_us),
        end=_EPOCH + timedelta(microseconds=end_us),
    )


def _es_export(sim: Simulation, seed: int) -> dict:
    """The last hours of records as an Elasticsearch `_search` response, as shipped by a log agent."""
    rng = random.Random(f"{seed}:elasticsearch")
    since = _iso_us(_to_us(sim.end) - ES_EXPORT_HOURS * _HOUR)
    hits = []
    for rec in sim.records:
        if rec["received_at"] < since:  # same fixed-width format, so text order is time order
            continue
        shipped = datetime.fromisoformat(rec["received_at"]) + timedelta(seconds=rng.uniform(1, 3))
        source = {
            "@timestamp": shipped.strftime("%Y-%m-%dT%H:%M:%S.") + f"{shipped.microsecond // 1000:03d}Z"
        }
        source.update(rec)
        doc_id = base64.urlsafe_b64encode(rng.getrandbits(120).to_bytes(15, "big")).decode()
        hits.append(
            {"_index": f"receiver-logs-{shipped:%Y.%m.%d}", "_id": doc_id, "_score": 1.0, "_source": source}
        )
    n_indices = len({h["_index"] for h in hits}) or 1
    return {
        "took": rng.randint(8, 90),
        "timed_out": False,
        "_shards": {"total": n_indices, "successful": n_indices, "skipped": 0, "failed": 0},
        "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": 1.0, "hits": hits},
    }


def write_demo(
    out_dir: Path, *, days: int = 5, users: int = 150, seed: int = 7, end: datetime | None = None
) -> list[Path]:
    """Write the demo files: one gzip JSON Lines file per UTC day, an Elasticsearch export, the identity map."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sim = simulate(days=days, users=users, seed=seed, end=end)

    by_day: dict[str, list[str]] = {}
    for rec in sim.records:
        by_day.setdefault(rec["received_at"][:10], []).append(json.dumps(rec, separators=(",", ":")))
    paths = []
    for day in sorted(by_day):
        path = out_dir / f"receiver-{day}.jsonl.gz"
        data = ("\n".join(by_day[day]) + "\n").encode()
        with (
            open(path, "wb") as fh,
            gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=6) as gz,
        ):
            gz.write(data)
        paths.append(path)

    es_path = out_dir / "elasticsearch-export.json"
    es_path.write_text(json.dumps(_es_export(sim, seed), separators=(",", ":")) + "\n", encoding="utf-8")
    paths.append(es_path)

    ids_path = out_dir / "identities.csv"
    with open(ids_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["auth_code", "user_id"])
        writer.writerows(sim.identities)
    paths.append(ids_path)
    return paths


__all__ = ["Simulation", "receiver_record", "simulate", "write_demo"]
