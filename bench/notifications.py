"""Synthetic Tyk OAuth notification logs for the ingest benchmark.

Writes plain receiver JSON Lines (the format of docs/design.md) with realistic lineage: sessions of 1-60
events refreshed about hourly, Tyk retries, lost notifications (orphan chains), forks and client_credentials.

The log is produced by a discrete-event simulation over a heap of pending deliveries, so lines come out
in the order a receiver would write them without sorting millions of rows afterwards. Lines are built
from one string template (no json.dumps per line: every value is a plain token, time or address that
needs no escaping) and written through a large buffer. Everything derives from one seeded
``random.Random``, so a file is a pure function of (N, seed) and can be cached; the ground truth
(events, chains, orphans, forks...) is written next to it as ``.truth.json``.
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

START_US = 1_796_083_200 * 1_000_000  # 2026-12-01T00:00:00Z
HOUR_US = 3_600 * 1_000_000
WINDOW_US = 30 * 24 * HOUR_US  # sessions start over about a month

P_RETRY = 0.03  # body delivered 2-3 times, 10 s apart, status 500 on all but the last
P_LOST = 0.01  # notification lost for good (all attempts failed): its child becomes an orphan root
P_FORK = 0.001  # a second refresh presents the same old refresh token (racing instances, replay)
P_USERNAME = 0.5  # root records that carry the user field

# kind: (share of sessions, has refresh tokens, has auth code)
SESSION_KINDS = {
    "authorization_code": (0.80, True, True),
    "password": (0.05, True, False),
    "client_credentials": (0.15, False, False),
}
MEAN_CHAIN = 11.0  # mean events per refreshable session (1-60, exponential tail)

ORG_ID = "5e9d9544a1dcd60001d0ed20"  # 24 hex chars: base64 of it is exactly 32 chars, no padding
ORG_B64 = base64.b64encode(ORG_ID.encode()).decode()
GATEWAYS = [f"10.0.3.{n}" for n in (7, 8, 12, 19)]

LINE = (
    '{"received_at": "%s", "level": "%s", "msg": "tyk oauth notification", "status": %d, '
    '"remote_addr": "%s:%d", %s"body": {"auth_code": "%s", "new_oauth_token": "%s", '
    '"refresh_token": "%s", "old_refresh_token": "%s", "notification_type": "%s"}}\n'
)

_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class TokenSource:
    """Random tokens cut from a pool refilled in bulk (one randbytes + b64 call per ~1 MB)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pool = ""
        self.pos = 0

    def _take(self, n: int) -> str:
        if self.pos + n > len(self.pool):
            self.pool = base64.urlsafe_b64encode(self.rng.randbytes(786_432)).decode()
            self.pos = 0
        s = self.pool[self.pos : self.pos + n]
        self.pos += n
        return s

    def opaque(self) -> str:
        """A refresh token or auth code: random base64url, 32-43 chars."""
        return self._take(self.rng.randint(32, 43))

    def access(self) -> str:
        """An access token like Tyk's: base64 of org id + hex key id, 60 chars."""
        key_hex = self.rng.randbytes(11).hex()[:21]
        return ORG_B64 + base64.b64encode(key_hex.encode()).decode()


@dataclass
class Session:
    refresh_token: str  # the one the next refresh will present
    remaining: int  # refresh events still to come
    parent_lost: bool = False  # the event that issued refresh_token was never delivered


@dataclass
class Truth:
    deliveries: int = 0
    events: int = 0
    new_events: int = 0
    refresh_events: int = 0
    retried_events: int = 0
    lost_events: int = 0
    sessions: int = 0
    client_credentials: int = 0
    orphan_roots: int = 0
    fork_events: int = 0
    # refresh tokens a racing twin will present too -> how many delivered events presented each
    fork_candidates: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {
            "deliveries": self.deliveries,
            "events": self.events,
            "duplicates": self.deliveries - self.events,
            "new_events": self.new_events,
            "refresh_events": self.refresh_events,
            "retried_events": self.retried_events,
            "lost_events": self.lost_events,
            "sessions": self.sessions,
            "client_credentials": self.client_credentials,
            "chains": self.new_events + self.orphan_roots,
            "orphan_chains": self.orphan_roots,
            "forks": sum(1 for n in self.fork_candidates.values() if n >= 2),
            "fork_events": self.fork_events,
        }


def _iso(us: int, _cache: dict[int, str] = {}) -> str:  # noqa: B006 - deliberate per-process memo
    sec, frac = divmod(us, 1_000_000)
    prefix = _cache.get(sec)
    if prefix is None:
        if len(_cache) > 4096:
            _cache.clear()
        prefix = _cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{prefix}.{frac:06d}Z"


def generate(path: Path, n_lines: int, seed: int = 1) -> dict[str, int]:
    """Write exactly ``n_lines`` notification lines to ``path``; return the ground truth."""
    rng = random.Random(seed)
    rnd, randint, expo = rng.random, rng.randint, rng.expovariate
    tokens = TokenSource(rng)
    truth = Truth()
    # mean lines per session, to pick a session arrival rate that spreads N lines over the window
    share_refreshable = sum(s for s, refreshable, _ in SESSION_KINDS.values() if refreshable)
    lines_per_session = (share_refreshable * MEAN_CHAIN + (1 - share_refreshable)) * (1 + 2.5 * P_RETRY)
    mean_gap_us = WINDOW_US / max(1.0, n_lines / lines_per_session)
    n_users = max(10, int(n_lines / lines_per_session / 5))
    kinds = list(SESSION_KINDS)
    weights = [SESSION_KINDS[k][0] for k in kinds]

    # heap entries: (time_us, seq, action, payload)
    #   action 0: a new session starts; 1: a session's next refresh; 2: a retry delivery (payload: line args)
    heap: list[tuple] = [(START_US, 0, 0, None)]
    seq = 1
    push, pop = heapq.heappush, heapq.heappop

    def deliver(t: int, user: str, body: tuple[str, str, str, str, str]) -> None:
        """Log one event (1-3 deliveries) or lose it; retries go back on the heap."""
        nonlocal seq
        truth.events += 1
        if rnd() < P_RETRY:
            truth.retried_events += 1
            attempts = randint(2, 3)
            for a in range(1, attempts):
                t_retry = t + a * 10_000_000 + randint(1_000, 50_000)
                status = 200 if a == attempts - 1 else 500
                push(heap, (t_retry, seq, 2, (status, user, body)))
                seq += 1
            write(t, 500, user, body)
        else:
            write(t, 200, user, body)

    out = open(path, "w", buffering=16 * 1024 * 1024)  # noqa: SIM115 - closed in finally
    write_raw = out.write

    def write(t: int, status: int, user: str, body: tuple[str, str, str, str, str]) -> None:
        # receiver time = send time + network/queue delay: slightly out of order across lines
        received = t + randint(2_000, 200_000)
        write_raw(
            LINE
            % (
                _iso(received),
                "info" if status == 200 else "error",
                status,
                GATEWAYS[randint(0, 3)],
                randint(32768, 60999),
                user,
                *body,
            )
        )
        truth.deliveries += 1

    try:
        while truth.deliveries < n_lines:
            t, _, action, payload = pop(heap)
            if action == 2:
                status, user, body = payload
                write(t, status, user, body)
                continue
            if action == 0:
                push(heap, (t + int(expo(1.0) * mean_gap_us) + 1, seq, 0, None))
                seq += 1
                truth.sessions += 1
                kind = rng.choices(kinds, weights)[0]
                _, refreshable, has_code = SESSION_KINDS[kind]
                has_user = kind != "client_credentials" and rnd() < P_USERNAME
                user = f'"username": "user{randint(1, n_users):06d}", ' if has_user else ""
                code = tokens.opaque() if has_code else ""
                refresh = tokens.opaque() if refreshable else ""
                body = (code, tokens.access(), refresh, "", "new")
                if not refreshable:
                    truth.client_credentials += 1
                length = min(60, 1 + int(expo(1.0 / (MEAN_CHAIN - 1)))) if refreshable else 1
                session = Session(refresh, length - 1)
                if session.remaining and rnd() < P_LOST:
                    truth.lost_events += 1
                    session.parent_lost = True
                else:
                    truth.new_events += 1
                    deliver(t, user, body)
                if session.remaining:
                    push(heap, (t + _refresh_gap(rng), seq, 1, session))
                    seq += 1
                continue
            # action == 1: the session presents its refresh token
            session = payload
            old = session.refresh_token
            if rnd() < P_FORK:
                # a racing instance presents the same token moments later and lives on for 0-3 refreshes
                twin = Session(old, randint(0, 3) + 1, session.parent_lost)
                push(heap, (t + randint(50_000, 5_000_000), seq, 1, twin))
                seq += 1
                truth.fork_events += 1
                truth.fork_candidates.setdefault(old, 0)
            session.refresh_token = tokens.opaque()
            session.remaining -= 1
            body = ("", tokens.access(), session.refresh_token, old, "refresh")
            if session.remaining and rnd() < P_LOST:
                truth.lost_events += 1
                session.parent_lost = True
            else:
                truth.refresh_events += 1
                if session.parent_lost:
                    truth.orphan_roots += 1
                    session.parent_lost = False
                if old in truth.fork_candidates:
                    truth.fork_candidates[old] += 1
                deliver(t, "", body)
            if session.remaining:
                push(heap, (t + _refresh_gap(rng), seq, 1, session))
                seq += 1
    finally:
        out.close()
    return truth.as_dict()


def _refresh_gap(rng: random.Random) -> int:
    """About hourly: most clients refresh in the last third of the hour, some early, some late."""
    r = rng.random()
    if r < 0.80:
        frac = rng.uniform(0.70, 1.0)
    elif r < 0.92:
        frac = rng.uniform(0.10, 0.50)  # early
    else:
        frac = rng.uniform(1.0, 3.0)  # late: the client held an expired token
    return int(frac * HOUR_US)


def cached(out_dir: Path, n_lines: int, seed: int = 1) -> tuple[Path, dict]:
    """The file for (N, seed) under ``out_dir``, generated once; returns (path, truth)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"notifications-{n_lines}-s{seed}.jsonl"
    meta = path.with_suffix(".truth.json")
    if path.exists() and meta.exists():
        truth = json.loads(meta.read_text())
        if truth.get("deliveries") == n_lines:
            return path, truth
    tmp = path.with_suffix(".jsonl.tmp")
    t0 = time.perf_counter()
    truth = generate(tmp, n_lines, seed)
    truth["generate_s"] = round(time.perf_counter() - t0, 2)
    truth["bytes"] = tmp.stat().st_size
    os.replace(tmp, path)
    meta.write_text(json.dumps(truth, indent=1) + "\n")
    return path, truth


def main() -> None:
    ap = argparse.ArgumentParser(description="Generate synthetic Tyk OAuth notification logs (JSON Lines).")
    ap.add_argument("n", type=int, help="number of lines")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args()
    path, truth = cached(args.out, args.n, args.seed)
    print(path)
    print(json.dumps(truth, indent=1))


if __name__ == "__main__":
    main()
