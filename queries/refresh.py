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

# One pass over the refreshes in the range (the lineage x events join is the expensive part on a large
# store) feeds three panels through grouping sets: per (time bucket, class), per (time bucket, histogram bin)
# for the median over time, per (histogram bin, class), per class, and overall.
_PROFILE = """
WITH r AS (
    SELECT time_bucket(CAST($bucket AS INTERVAL), e.first_seen) AS t,
           least(greatest(floor(l.interval_s / $width), 0), $nbins)::INTEGER AS bin,
           l.refresh_class, l.interval_s
    FROM lineage l JOIN events e USING (event_id)
    WHERE l.interval_s IS NOT NULL
      AND (CAST($start AS TIMESTAMP) IS NULL OR e.first_seen >= $start)
      AND (CAST($end AS TIMESTAMP) IS NULL OR e.first_seen < $end)
)
SELECT grouping(t, bin, refresh_class) AS grp, t, bin, refresh_class, count(*) AS refreshes
FROM r
GROUP BY GROUPING SETS ((t, refresh_class), (t, bin), (bin, refresh_class), (refresh_class), ())
"""

_GRID_ONLY = f"""
WITH {_GRID}
SELECT t FROM grid ORDER BY t
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


def access_ttl_s(store: Store) -> int:
    """The access-token lifetime the lineage was built with (Tyk's `oauth_token_expire`)."""
    return int(store.get_meta("access_ttl_s", str(DEFAULT_ACCESS_TTL_S)) or DEFAULT_ACCESS_TTL_S)


def events_per_bucket(
    store: Store, start: datetime | None, end: datetime | None, bucket: str
) -> pd.DataFrame:
    """Events per time bucket and notification type: columns t, type ('new' | 'refresh'), events."""
    cur = store.cursor()
    cur.execute(_EVENTS_PER_BUCKET, {"start": start, "end": end, "bucket": bucket})
    return cur.df()


def refresh_profile(store: Store, start: datetime | None, end: datetime | None, bucket: str) -> dict:
    """Refreshes with a known parent in the range: interval histogram, class totals, late ones over time.

    Returns {"histogram", "totals", "over_time"}:

    * histogram: bin, lo_s, hi_s (the last bin is open: hi_s = inf), refresh_class, refreshes. Bins are
      ttl/12 wide, so the early / on-time / late boundaries (ttl/2, ttl) are bin edges; an interval below
      zero (a child logged a few ms before its parent) counts in the first bin.
    * totals: refreshes, early, on_time, late, ttl_s, median_interval_s (read off the histogram, so within
      half a bin: 2.5 min for a one-hour token; inf when it lies in the overflow bin, None without refreshes).
    * over_time: t (zero-filled buckets), refreshes, early, on_time, late, late_share (NaN without refreshes),
      median_interval_s (per bucket, read off that bucket's histogram).
    """
    ttl = access_ttl_s(store)
    width = ttl / HIST_BINS_PER_TTL
    nbins = HIST_BINS_PER_TTL * HIST_TTLS
    params = {"start": start, "end": end, "bucket": bucket}
    cur = store.cursor()
    cur.execute(_PROFILE, {**params, "width": width, "nbins": nbins})
    df = cur.df()
    # grouping() bits, highest first: t, bin, refresh_class (a set bit = rolled up)
    by_time = df[df["grp"] == 0b010]
    by_time_bin = df[df["grp"] == 0b001]
    by_bin = df[df["grp"] == 0b100]
    by_class = df[df["grp"] == 0b110].set_index("refresh_class")["refreshes"]
    overall = df[df["grp"] == 0b111]

    hist = (
        by_bin[["bin", "refresh_class", "refreshes"]]
        .astype({"bin": "int64"})
        .sort_values(["bin", "refresh_class"])
    )
    hist.insert(1, "lo_s", hist["bin"] * width)
    hist.insert(2, "hi_s", [float("inf") if b >= nbins else (b + 1) * width for b in hist["bin"]])

    totals = {k: int(by_class.get(k, 0)) for k in REFRESH_CLASSES}
    totals["refreshes"] = int(overall["refreshes"].iloc[0]) if len(overall) else 0
    totals["median_interval_s"] = _histogram_median(hist, width, nbins)
    totals["ttl_s"] = ttl

    cur.execute(_GRID_ONLY, params)
    grid = cur.df()
    wide = by_time.pivot_table(index="t", columns="refresh_class", values="refreshes", aggfunc="first")
    over = grid.set_index("t").join(wide).reindex(columns=list(REFRESH_CLASSES)).fillna(0).astype("int64")
    over["refreshes"] = over[list(REFRESH_CLASSES)].sum(axis=1)
    over["late_share"] = over["late"] / over["refreshes"].where(over["refreshes"] > 0)
    medians = {t: _histogram_median(part, width, nbins) for t, part in by_time_bin.groupby("t")}
    over["median_interval_s"] = [medians.get(t) for t in over.index]
    return {"histogram": hist.reset_index(drop=True), "totals": totals, "over_time": over.reset_index()}


def _histogram_median(hist: pd.DataFrame, width: float, nbins: int) -> float | None:
    counts = hist.groupby("bin")["refreshes"].sum().sort_index()
    total = int(counts.sum())
    if not total:
        return None
    half, seen = total / 2, 0
    for b, n in counts.items():
        if seen + n >= half:
            return float("inf") if b >= nbins else float(b * width + width * (half - seen) / n)
        seen += n
    return None


def top_identities_by_refresh_rate(
    store: Store, start: datetime | None, end: datetime | None, limit: int = 20
) -> pd.DataFrame:
    """Identities by refreshes per hour of session time (chains starting in the range)."""
    cur = store.cursor()
    cur.execute(_TOP_IDENTITIES, {"start": start, "end": end, "limit": limit})
    return cur.df()
