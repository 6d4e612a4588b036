"""Writes the golden inputs (run once; the .jsonl files are checked in). Tokens are labels like T1, R1."""
import json
from pathlib import Path

HERE = Path(__file__).parent


def b(kind, access, refresh="", old="", code=""):
    return {"auth_code": code, "new_oauth_token": access, "refresh_token": refresh,
            "old_refresh_token": old, "notification_type": kind}


def r(at, body, **extra):
    return {"received_at": at, **extra, "body": body}


CASES = {
    # login, a retried refresh (2 deliveries), a second refresh, an orphan, a client_credentials token
    "basic": [
        r("2026-12-03T09:00:00Z", b("new", "T1", "R1", code="A1"), user_id="alice"),
        r("2026-12-03T09:50:00Z", b("refresh", "T2", "R2", "R1")),
        r("2026-12-03T09:50:10Z", b("refresh", "T2", "R2", "R1")),
        r("2026-12-03T10:40:00Z", b("refresh", "T3", "R3", "R2")),
        r("2026-12-03T11:00:00Z", b("refresh", "T9", "R9", "RX")),
        r("2026-12-03T11:30:00Z", b("new", "T5")),
    ],
    # two app instances present R1 within a second: a fork; the session goes on from one branch
    "fork": [
        r("2026-12-03T09:00:00Z", b("new", "T1", "R1", code="A1"), user_id="bob"),
        r("2026-12-03T09:55:00.100Z", b("refresh", "T2", "R2", "R1")),
        r("2026-12-03T09:55:00.400Z", b("refresh", "T2b", "R2b", "R1")),
        r("2026-12-03T10:50:00Z", b("refresh", "T3", "R3", "R2")),
    ],
    # Tyk's goroutines: the child is logged 3 ms before its parent; a late refresh (2 h after the previous)
    "out_of_order_and_late": [
        r("2026-12-03T09:00:00.005Z", b("refresh", "T2", "R2", "R1")),
        r("2026-12-03T09:00:00.002Z", b("new", "T1", "R1", code="A1"), username="carol"),
        r("2026-12-03T11:10:00Z", b("refresh", "T3", "R3", "R2")),
    ],
    # dave's app loses its tokens: he logs in again 10 minutes after the last refresh (R2 never used)
    "forced_relogin": [
        r("2026-12-03T08:00:00Z", b("new", "T1", "R1", code="A1"), user_id="dave"),
        r("2026-12-03T08:45:00Z", b("refresh", "T2", "R2", "R1")),
        r("2026-12-03T08:55:00Z", b("new", "T3", "R3", code="A2"), user_id="dave"),
        r("2026-12-03T09:50:00Z", b("refresh", "T4", "R4", "R3")),
        r("2026-12-03T12:00:00Z", b("new", "T5")),
    ],
    # hostile input: two refreshes name each other's tokens (a cycle), and one hangs below them
    "cycle": [
        r("2026-12-03T09:00:00Z", b("refresh", "T1", "RA", "RB")),
        r("2026-12-03T09:10:00Z", b("refresh", "T2", "RB", "RA")),
        r("2026-12-03T09:20:00Z", b("refresh", "T3", "RC", "RB")),
    ],
}

if __name__ == "__main__":
    for name, records in CASES.items():
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))
