"""The receiver's Prometheus metrics.

Counters and histograms are the receiver's own (what it answered Tyk, what it relayed). The store's figures
(events, chains, orphan chains, forks) and the spool lag come from the state the store's writer publishes in
the spool (`live.follower.publish_state`), read at scrape time: the receiver never opens the database.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

from live.spool import count_lines, read_state, segments

disable_created_metrics()  # the *_created samples only add noise to a scrape

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ReceiverMetrics:
    def __init__(self, spool: Path, recorder_lines=lambda: (None, 0)):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.deliveries = Counter(
            "tokentrail_deliveries", "Deliveries received on the notification endpoints, by the HTTP status answered",
            ["status"], registry=r,
        )
        self.recorded = Counter(
            "tokentrail_recorded_deliveries", "Deliveries durably recorded in the spool (valid or rejected)", registry=r
        )
        self.duplicates = Counter(
            "tokentrail_duplicate_deliveries",
            "Deliveries of a notification recorded moments before (Tyk retries after a non-200 or a timeout)",
            registry=r,
        )
        self.rejected = Counter(
            "tokentrail_rejected_deliveries", "Bodies that are not a Tyk notification (kept in the quarantine)", registry=r
        )
        self.relay_failures = Counter(
            "tokentrail_relay_failures",
            "Relayed deliveries the user's service did not accept: status (answered non-200), timeout, unreachable",
            ["reason"], registry=r,
        )
        self.latency = Histogram(
            "tokentrail_request_duration_seconds", "Time to answer a notification (relay included)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.relay_latency = Histogram(
            "tokentrail_relay_duration_seconds", "Time the user's service took to answer a relayed delivery",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        for reason in ("status", "timeout", "unreachable"):  # present from the start, so alerts see a 0
            self.relay_failures.labels(reason)
        self.deliveries.labels("200")
        self._store = _StoreCollector(spool, recorder_lines)
        r.register(self._store)

    def lag_now(self) -> int:
        """Deliveries recorded but not yet applied to the store (as /metrics reports them)."""
        state = read_state(self._store.spool) or {}
        return int(self._store._lag(state.get("cursor") or {})[0])


class _StoreCollector:
    """Gauges from the writer's published state and the spool itself, computed at scrape time."""

    _STORE = {
        "deliveries": "Deliveries in the store",
        "events": "Distinct notifications (events) in the store",
        "chains": "Chains (sessions) in the store",
        "orphan_chains": "Chains whose root is a refresh: the parent notification was lost (dropped sessions)",
        "forks": "Refresh tokens presented by two or more refreshes (racing clients or replayed tokens)",
        "rejected": "Records in the quarantine",
    }

    def __init__(self, spool: Path, recorder_lines):
        self.spool = spool
        self.recorder_lines = recorder_lines  # () -> (current segment name, its complete lines)
        self._closed_lines: dict[str, int] = {}  # line counts of closed segments (immutable)

    def describe(self):
        return []

    def collect(self):
        state = read_state(self.spool) or {}
        store = state.get("store") or {}
        for name, doc in self._STORE.items():
            g = GaugeMetricFamily(f"tokentrail_store_{name}", doc)
            if name in store:
                g.add_metric([], float(store[name]))
            yield g
        lag, oldest = self._lag(state.get("cursor") or {})
        yield GaugeMetricFamily(
            "tokentrail_spool_lag_deliveries",
            "Deliveries recorded in the spool but not yet applied to the store by its writer", value=lag,
        )
        yield GaugeMetricFamily(
            "tokentrail_spool_lag_seconds",
            "Age of the oldest delivery not yet applied to the store (0 when none waits)", value=oldest,
        )
        g = GaugeMetricFamily(
            "tokentrail_writer_last_apply_timestamp_seconds",
            "When the store's writer (dashboard or `tokentrail follow`) last published its state",
        )
        if "updated_at" in state:
            g.add_metric([], float(state["updated_at"]))
        yield g

    def _lag(self, cursor: dict) -> tuple[float, float]:
        seg_name, applied = cursor.get("segment", ""), int(cursor.get("record_no", 0) or 0)
        offset = int(cursor.get("offset", 0) or 0)
        current, current_lines = self.recorder_lines()
        present = segments(self.spool)
        for gone in set(self._closed_lines) - {p.name for p in present}:
            del self._closed_lines[gone]
        lag = 0
        first_pending: tuple[Path, int] | None = None
        for seg in present:
            if seg.name < seg_name:
                continue
            if seg.name == current:
                total = current_lines
            else:
                if seg.name not in self._closed_lines:
                    self._closed_lines[seg.name] = count_lines(seg)
                total = self._closed_lines[seg.name]
            pending = total - (applied if seg.name == seg_name else 0)
            if pending > 0:
                lag += pending
                if first_pending is None:
                    first_pending = (seg, offset if seg.name == seg_name else 0)
        oldest = 0.0
        if first_pending is not None:
            oldest = _age_of_line(*first_pending)
        return float(lag), oldest


def _age_of_line(seg: Path, offset: int) -> float:
    try:
        with open(seg, "rb") as f:
            f.seek(offset)
            line = f.readline()
        received = json.loads(line).get("received_at")
    except (OSError, ValueError, AttributeError):
        return 0.0
    if not received:
        return 0.0
    from datetime import datetime

    t = datetime.fromisoformat(received.replace("Z", "+00:00")).timestamp()
    return max(0.0, time.time() - t)
