"""The receiver's Prometheus metrics.

Counters and histograms are the receiver's own (what it answered Tyk, what it relayed). The store's figures
(events, chains, orphan chains, forks) and the spool lag come from the state the store's writer publishes in
the spool (`live.follower.publish_state`), read at scrape time: the receiver never opens the database.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

from live.spool import Cursor, SpoolSnapshot, read_state, snapshot

disable_created_metrics()  # the *_created samples only add noise to a scrape

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ReceiverMetrics:
    def __init__(self, spool: Path):
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
        self._store = _StoreCollector(spool)
        r.register(self._store)

    def lag_now(self) -> int:
        """Deliveries recorded but not yet applied to the store (as /metrics reports them)."""
        return self._store.snapshot().pending


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

    def __init__(self, spool: Path):
        self.spool = spool

    def snapshot(self, state: dict | None = None) -> SpoolSnapshot:
        """The spool against the cursor the writer last published (the receiver cannot read the store's)."""
        if state is None:
            state = read_state(self.spool) or {}
        cursor = state.get("cursor") or {}
        return snapshot(self.spool, Cursor(cursor.get("segment", ""), int(cursor.get("offset", 0) or 0)))

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
        snap = self.snapshot(state)
        lag, oldest = snap.pending, snap.oldest_pending_s or 0.0
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
