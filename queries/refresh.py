"""Named queries behind the Refresh rates page: how often sessions refresh, and how close to expiry.

Every function takes a `Store`, opens its own cursor and aggregates in DuckDB; what comes back is a small
frame sized by the number of time buckets or histogram bins, never by the number of events. The time range
is `[start, end)` on the event's `first_seen` (a missing bound is open); buckets are DuckDB intervals such as
"15 minutes", bound as parameters. Time buckets are zero-filled across the range so a quiet hour shows as a
zero, not as a line drawn straight over it.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from ingest.store import DEFAULT_ACCESS_TTL_S, Store

HIST_BINS_PER_TTL = 12  # bin width = ttl / 12 (5 min for the default hour): ttl/2 and ttl fall on bin edges
HIST_TTLS = 3  # bins cover 0 .. 3 x ttl; longer intervals share one overflow bin
REFRESH_CLASSES = ("early", "on_time", "late")

# The bucket grid of the range: from the bucket holding the range start (or the first event) to the bucket
# holding its end (or the last event). Empty when there are no events and no bounds.
_GRID = """
bounds AS (
    SELECT time_bucket(CAST($bucket AS INTERVAL), coalesce(CAST($start AS TIMESTAMP), min(first_seen))) AS lo,
           time_bucket(CAST($bucket AS INTERVAL),
                       coalesce(CAST($end AS TIMESTAMP) - INTERVAL 1 microsecond, max(first_seen))) AS hi
    FROM events
), grid AS (
    SELECT unnest(range(lo, hi + CAST($bucket AS INTERVAL), CAST($bucket AS INTERVAL))) AS t
    FROM bounds WHERE lo IS NOT NULL AND hi IS NOT NULL AND lo <= hi
)
"""

_EVENTS_PER_BUCKET = f"""
WITH {_GRID}, counts AS (
    SELECT time_bucket(CAST($bucket AS INTERVAL), first_seen) AS t, notification_type AS type, count(*) AS events
    FROM events
    WHERE first_seen IS NOT NULL
      AND (CAST($start AS TIMESTAMP) IS NULL OR first_seen >= $start)
      AND (CAST($end AS TIMESTAMP) IS NULL OR first_seen < $end)
    GROUP BY ALL
)
SELECT g.t, k.type, coalesce(c.events, 0) AS events
FROM grid g CROSS JOIN (VALUES ('new'), ('refresh')) k(type)
LEFT JOIN counts c ON c.t = g.t AND c.type = k.type
ORDER BY g.t, k.type
"""

_INTERVAL_HISTOGRAM = """
WITH r AS (
    SELECT l.interval_s, l.refresh_class
    FROM lineage l JOIN events e USING (event_id)
    WHERE l.interval_s IS NOT NULL
      AND (CAST($start AS TIMESTAMP) IS NULL OR e.first_seen >= $start)
      AND (CAST($end AS TIMESTAMP) IS NULL OR e.first_seen < $end)
)
SELECT least(greatest(floor(interval_s / $width), 0), $nbins)::INTEGER AS bin, refresh_class,
       count(*) AS refreshes
FROM r GROUP BY ALL ORDER BY bin, refresh_class
"""

_CLASS_TOTALS = """
SELECT count(*) AS refreshes,
       count(*) FILTER (l.refresh_class = 'early') AS early,
       count(*) FILTER (l.refresh_class = 'on_time') AS on_time,
       count(*) FILTER (l.refresh_class = 'late') AS late,
       median(l.interval_s) AS median_interval_s
FROM lineage l JOIN events e USING (event_id)
WHERE l.interval_s IS NOT NULL
  AND (CAST($start AS TIMESTAMP) IS NULL OR e.first_seen >= $start)
  AND (CAST($end AS TIMESTAMP) IS NULL OR e.first_seen < $end)
"""

# Session time of an identity = the sum of its chains' session lifetimes (span + access-token lifetime),
# so a one-event session still counts one token lifetime and the rate is never a division by zero.
_TOP_IDENTITIES = """
SELECT identity, count(*) AS chains, sum(refreshes)::BIGINT AS refreshes,
       sum(lifetime_s) / 3600.0 AS session_hours,
       sum(refreshes) / (sum(lifetime_s) / 3600.0) AS refreshes_per_hour,
       sum(early_refreshes)::BIGINT AS early_refreshes, sum(late_refreshes)::BIGINT AS late_refreshes,
       sum(forks)::BIGINT AS forks
FROM chains
WHERE identity IS NOT NULL AND lifetime_s > 0
  AND (CAST($start AS TIMESTAMP) IS NULL OR first_seen >= $start)
  AND (CAST($end AS TIMESTAMP) IS NULL OR first_seen < $end)
GROUP BY identity
ORDER BY refreshes_per_hour DESC, refreshes DESC, identity
LIMIT $limit
"""

_LATE_PER_BUCKET = f"""
WITH {_GRID}, counts AS (
    SELECT time_bucket(CAST($bucket AS INTERVAL), e.first_seen) AS t,
           count(*) AS refreshes,
           count(*) FILTER (l.refresh_class = 'late') AS late,
           count(*) FILTER (l.refresh_class = 'early') AS early
    FROM lineage l JOIN events e USING (event_id)
    WHERE l.interval_s IS NOT NULL AND e.first_seen IS NOT NULL
      AND (CAST($start AS TIMESTAMP) IS NULL OR e.first_seen >= $start)
      AND (CAST($end AS TIMESTAMP) IS NULL OR e.first_seen < $end)
    GROUP BY ALL
)
SELECT g.t, coalesce(c.refreshes, 0) AS refreshes, coalesce(c.late, 0) AS late, coalesce(c.early, 0) AS early,
       coalesce(c.late, 0) / nullif(c.refreshes, 0) AS late_share
FROM grid g LEFT JOIN counts c USING (t)
ORDER BY g.t
"""


def access_ttl_s(store: Store) -> int:
    """The access-token lifetime the lineage was built with (Tyk's `oauth_token_expire`)."""
    return int(store.get_meta("access_ttl_s", str(DEFAULT_ACCESS_TTL_S)) or DEFAULT_ACCESS_TTL_S)


def events_per_bucket(store: Store, start: datetime | None, end: datetime | None, bucket: str) -> pd.DataFrame:
    """Events per time bucket and notification type: columns t, type ('new' | 'refresh'), events."""
    cur = store.cursor()
    cur.execute(_EVENTS_PER_BUCKET, {"start": start, "end": end, "bucket": bucket})
    return cur.df()


def interval_histogram(store: Store, start: datetime | None, end: datetime | None) -> pd.DataFrame:
    """Refresh intervals (parent to child) binned against the access-token lifetime.

    Columns: bin, lo_s, hi_s (the bin's edges in seconds; the last bin is open: hi_s = inf), refresh_class,
    refreshes. Bins are ttl/12 wide, so the early/on-time/late boundaries (ttl/2, ttl) are bin edges; an
    interval below zero (a child logged a few ms before its parent) counts in the first bin.
    """
    ttl = access_ttl_s(store)
    width = ttl / HIST_BINS_PER_TTL
    nbins = HIST_BINS_PER_TTL * HIST_TTLS
    cur = store.cursor()
    cur.execute(_INTERVAL_HISTOGRAM, {"start": start, "end": end, "width": width, "nbins": nbins})
    df = cur.df()
    df["lo_s"] = df["bin"] * width
    df["hi_s"] = [float("inf") if b >= nbins else (b + 1) * width for b in df["bin"]]
    return df[["bin", "lo_s", "hi_s", "refresh_class", "refreshes"]]


def refresh_class_totals(store: Store, start: datetime | None, end: datetime | None) -> dict:
    """Refreshes with a known parent in the range, by class, and their median interval."""
    cur = store.cursor()
    cur.execute(_CLASS_TOTALS, {"start": start, "end": end})
    cols = [d[0] for d in cur.description]
    row = dict(zip(cols, cur.fetchall()[0], strict=True))
    row["ttl_s"] = access_ttl_s(store)
    return row


def top_identities_by_refresh_rate(
    store: Store, start: datetime | None, end: datetime | None, limit: int = 20
) -> pd.DataFrame:
    """Identities by refreshes per hour of session time (chains starting in the range)."""
    cur = store.cursor()
    cur.execute(_TOP_IDENTITIES, {"start": start, "end": end, "limit": limit})
    return cur.df()


def late_refreshes_per_bucket(
    store: Store, start: datetime | None, end: datetime | None, bucket: str
) -> pd.DataFrame:
    """Refreshes with a known parent per bucket: columns t, refreshes, late, early, late_share (NaN if none)."""
    cur = store.cursor()
    cur.execute(_LATE_PER_BUCKET, {"start": start, "end": end, "bucket": bucket})
    return cur.df()
