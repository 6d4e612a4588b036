"""`tokentrail replay`: send a log export's notifications to a receiver the way Tyk does.

Reads any export the ingest reads (same format sniffing and notification locating), then POSTs each
notification's body with Tyk's headers (`Content-Type: application/json`, `User-Agent:
Tyk-Gatewy-Notifications`, `X-Tyk-Shared-Secret`), in time order, at `rate` per second, concurrently like
Tyk's goroutines. Like Tyk, only a 200 is a success: any other status, an error or a 10 s timeout is retried
after `retry_wait` seconds, 3 attempts in all, then the notification is lost (and counted as such).

By default each distinct notification is sent once: an export of a receiver's log holds Tyk's retries as
extra deliveries, which a healthy receiver would not have caused. `all_deliveries` sends every record.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pandas as pd

from ingest.formats import ReadError, open_sources
from ingest.locate import locate

TYK_USER_AGENT = "Tyk-Gatewy-Notifications"  # (sic), as Tyk sends it
# The order of Tyk's own JSON encoding of its notification struct.
TYK_BODY_ORDER = ("auth_code", "new_oauth_token", "refresh_token", "old_refresh_token", "notification_type")


@dataclass
class ReplayReport:
    notifications: int = 0  # distinct notifications read (or records, with all_deliveries)
    skipped: int = 0  # records that are not notifications
    delivered: int = 0  # answered 200 (on some attempt)
    retried: int = 0  # extra attempts made
    lost: int = 0  # 3 attempts without a 200
    statuses: Counter = field(default_factory=Counter)  # every attempt's outcome: "200", "500", "timeout"...
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # files that could not be read

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["statuses"] = dict(self.statuses)
        return d


def read_notifications(paths: Iterable[Path], *, all_deliveries: bool = False, report: ReplayReport) -> list[bytes]:
    """The notification bodies of the exports, in time order (records without a time keep file order)."""
    found: list[tuple[str | None, int, bytes]] = []
    seen: set[bytes] = set()
    for path in paths:
        try:
            with open(path, "rb") as f:
                for source in open_sources(str(path), f):
                    for table in source.batches:
                        for raw, err in zip(table.column("raw").to_pylist(), table.column("err").to_pylist(), strict=True):
                            loc = locate(raw) if err is None else None
                            if loc is None or loc.notification is None:
                                report.skipped += 1
                                continue
                            body = tyk_body(loc.notification)
                            if not all_deliveries:
                                if body in seen:
                                    continue
                                seen.add(body)
                            found.append((loc.time, len(found), body))
        except (OSError, ReadError) as e:
            report.errors.append(f"{path}: {e}")
    times = pd.to_datetime(pd.Series([t for t, _, _ in found], dtype=object), errors="coerce", utc=True, format="mixed")
    order = pd.DataFrame({"t": times, "i": range(len(found))}).sort_values(["t", "i"], na_position="last", kind="stable")
    report.notifications = len(found)
    return [found[i][2] for i in order["i"]]


def tyk_body(notification: dict) -> bytes:
    def text(v) -> str:
        return "" if v is None else v if isinstance(v, str) else json.dumps(v)

    return json.dumps({k: text(notification.get(k)) for k in TYK_BODY_ORDER}, separators=(",", ":")).encode()


async def replay(
    bodies: list[bytes],
    url: str,
    secret: str,
    *,
    rate: float = 50.0,
    retry_wait: float = 10.0,
    attempts: int = 3,
    timeout: float = 10.0,
    concurrency: int = 64,
    report: ReplayReport,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    headers = {"Content-Type": "application/json", "User-Agent": TYK_USER_AGENT, "X-Tyk-Shared-Secret": secret}
    started = time.perf_counter()
    limit = asyncio.Semaphore(concurrency)
    done = 0

    async def send(client: aiohttp.ClientSession, body: bytes) -> None:
        nonlocal done
        for attempt in range(attempts):
            if attempt:
                report.retried += 1
                await asyncio.sleep(retry_wait)
            try:
                async with limit, client.post(url, data=body, headers=headers) as r:
                    await r.read()
                    outcome = str(r.status)
            except TimeoutError:
                outcome = "timeout"
            except aiohttp.ClientError:
                outcome = "error"
            report.statuses[outcome] += 1
            if outcome == "200":
                report.delivered += 1
                break
        else:
            report.lost += 1
        done += 1
        if progress:
            progress(done, len(bodies))

    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(limit=concurrency),
        skip_auto_headers=("User-Agent",),
    ) as client:
        tasks = []
        for i, body in enumerate(bodies):
            if rate > 0:
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(client, body)))
        await asyncio.gather(*tasks)
    report.seconds = time.perf_counter() - started
    return report

