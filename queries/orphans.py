"""Named queries behind the Orphaned tokens page: orphan chains, why each one is likely orphaned, and the
gaps in the receiver's deliveries that lose notifications.

An orphan chain starts with a refresh whose parent notification is not in the data. Either the parent was
sent before the data begins, or the receiver never logged it: it was down (Tyk's three attempts, 10 s apart,
all failed, so the deliveries show a gap) or it answered non-200 (Tyk retried; if the failed attempts were
logged they show as duplicate deliveries, a retry burst). The parent went out before the orphan's first
event, most likely within one access-token lifetime, so each orphan looks back over that window:

* **start of data**: its first event lies within one access-token lifetime of the data's first delivery;
* **delivery gap**: a pause in deliveries much longer than usual (see `_PAUSES`) overlaps the window;
* **retry burst**: the window holds many retried deliveries (at least 5, and at least 3 times the data's
  overall retry share, and at least 5 %);
* otherwise **unexplained**; the evidence then says how many refreshes come as long after their parent
  as this orphan comes after the data's start (refresh tokens live 14 days: an idle device can surface
  days later with a parent from before the data).

Cost: the deliveries are scanned twice (10-second buckets for the pauses, minutes for the window counts);
window counts are differences of running totals picked with ASOF joins, so nothing grows with orphans times
deliveries, and the gaps found by the first query reach the second one as bound list parameters. Times are
`[start, end)` on the chain's `first_seen` (a pause is in the range when it overlaps it).
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from ingest.fingerprint import text_sql
from ingest.store import Store
from queries.lifetimes import duration_text
from queries.refresh import access_ttl_s
from queries.summary import short_sql

GAP_FACTOR = 15.0  # a gap counts when it is this many times the usual spacing between deliveries ...
GAP_MIN_S = 30.0  # ... and at least this long (Tyk's 3 attempts span ~20 s: shorter outages lose nothing)
USUAL_WINDOW_S = 3 * 3600  # "usual spacing" = the mean spacing over the 3 hours before the gap
BURST_MIN_RETRIES = 5
BURST_FACTOR = 3.0
BURST_MIN_SHARE = 0.05

CAUSES = ("start of data", "delivery gap", "retry burst", "unexplained")

# Deliveries in 10-second buckets (one hash aggregate, no sort of the deliveries): a pause of 20 s or more
# always spans an empty bucket, so every such pause lies between two consecutive non-empty buckets, from the
# earlier one's last delivery to the later one's first. The same buckets give running totals for the usual
# spacing: the mean spacing over the 3 hours before the pause (at least 10 minutes of history, at least 2
# deliveries, so the data's first minutes never count as a gap).
_PAUSES = """
WITH buckets AS (
    SELECT time_bucket(INTERVAL 10 second, received_at) AS b, min(received_at) AS lo, max(received_at) AS hi,
           count(*) AS n
    FROM deliveries WHERE received_at IS NOT NULL GROUP BY 1
), running AS (
    SELECT b, lo, n, lag(hi) OVER (ORDER BY b) AS prev_hi, sum(n) OVER (ORDER BY b) AS cum FROM buckets
), candidates AS (
    SELECT prev_hi AS gs, lo AS ge, date_diff('microsecond', prev_hi, lo) / 1e6 AS gap_s,
           cum - n AS cum_gs,  -- deliveries up to and including the one that opens the pause
           greatest(prev_hi - to_seconds($usual_window_s), (SELECT min(lo) FROM buckets)) AS usual_from
    FROM running
    WHERE prev_hi IS NOT NULL AND lo - prev_hi >= to_seconds($gap_min_s)
), rated AS (
    SELECT g.gs, g.ge, g.gap_s, g.cum_gs - coalesce(r.cum, 0) AS before_n,
           date_diff('microsecond', g.usual_from, g.gs) / 1e6 AS before_s
    FROM candidates g ASOF LEFT JOIN running r ON r.b < g.usual_from
)
SELECT gs AS gap_start, ge AS gap_end, gap_s, before_s / before_n AS usual_gap_s,
       gap_s / (before_s / before_n) AS times_usual, gap_s >= $gap_factor * before_s / before_n AS flagged
FROM rated
WHERE before_n >= 2 AND before_s >= 600
  AND (CAST($start AS TIMESTAMP) IS NULL OR ge >= $start)
  AND (CAST($end AS TIMESTAMP) IS NULL OR gs < $end)
ORDER BY gs
"""

_ORPHAN_CHAINS = f"""
WITH gaps AS (
    SELECT unnest($gap_starts::TIMESTAMP[]) AS gap_start, unnest($gap_ends::TIMESTAMP[]) AS gap_end,
           unnest($gap_lengths::DOUBLE[]) AS gap_s, unnest($gap_usual::DOUBLE[]) AS usual_gap_s
), orphans AS (
    SELECT chain_id, first_seen, last_seen, events, deliveries, refreshes, span_s, end_state, unknown_parent_fp,
           first_seen - to_seconds($lookback_s) AS look_from
    FROM chains
    WHERE orphan AND first_seen IS NOT NULL
      AND (CAST($start AS TIMESTAMP) IS NULL OR first_seen >= $start)
      AND (CAST($end AS TIMESTAMP) IS NULL OR first_seen < $end)
), dmin AS (
    SELECT time_bucket(INTERVAL 1 minute, received_at) AS t, count(*) AS n
    FROM deliveries WHERE received_at IS NOT NULL GROUP BY 1
), emin AS (
    SELECT time_bucket(INTERVAL 1 minute, first_seen) AS t, count(*) AS n
    FROM events WHERE first_seen IS NOT NULL GROUP BY 1
), running AS (
    -- deliveries and first deliveries (= events) through each minute; retries = the difference
    SELECT t, sum(coalesce(d.n, 0)) OVER w AS deliveries_through, sum(coalesce(e.n, 0)) OVER w AS events_through
    FROM dmin d FULL JOIN emin e USING (t)
    WINDOW w AS (ORDER BY t)
), totals AS (
    SELECT (SELECT count(*) FROM deliveries) AS deliveries, (SELECT count(*) FROM events) AS events,
           (SELECT min(received_at) FROM deliveries) AS first_at
), windowed AS (
    SELECT o.*,
           coalesce(a.deliveries_through, 0) - coalesce(b.deliveries_through, 0) AS window_deliveries,
           (coalesce(a.deliveries_through, 0) - coalesce(b.deliveries_through, 0))
             - (coalesce(a.events_through, 0) - coalesce(b.events_through, 0)) AS window_retries
    FROM orphans o
    ASOF LEFT JOIN running a ON a.t <= o.first_seen
    ASOF LEFT JOIN running b ON b.t <= o.look_from
), interval_q AS (
    -- t-digest: a few percent off at worst, and 4x faster than exact quantiles on millions of intervals
    SELECT approx_quantile(interval_s, $pcts::FLOAT[]) AS q FROM lineage WHERE interval_s IS NOT NULL
), gap_hit AS (
    SELECT o.chain_id, arg_max(g.gap_start, g.gap_s) AS gap_start, max(g.gap_s) AS gap_s,
           arg_max(g.usual_gap_s, g.gap_s) AS usual_gap_s
    FROM orphans o JOIN gaps g ON g.gap_start < o.first_seen AND g.gap_end > o.look_from
    GROUP BY o.chain_id
), result AS MATERIALIZED (
SELECT w.chain_id, {short_sql('w.chain_id')} AS chain, w.first_seen, w.last_seen, w.events, w.deliveries,
       w.refreshes, w.span_s, w.end_state, {short_sql('w.unknown_parent_fp')} AS unknown_parent,
       date_diff('microsecond', t.first_at, w.first_seen) / 1e6 AS after_data_start_s,
       1 - len(list_filter(iq.q, lambda v: v < date_diff('microsecond', t.first_at, w.first_seen) / 1e6)) / 100.0
           AS later_refresh_share,
       h.gap_start, h.gap_s, h.usual_gap_s,
       w.window_deliveries, w.window_retries,
       w.window_retries / nullif(w.window_deliveries, 0) AS window_retry_share,
       (t.deliveries - t.events) / nullif(t.deliveries, 0) AS overall_retry_share,
       CASE WHEN w.first_seen < t.first_at + to_seconds($ttl) THEN 'start of data'
            WHEN h.chain_id IS NOT NULL THEN 'delivery gap'
            WHEN w.window_retries >= $burst_min
                 AND w.window_retries / nullif(w.window_deliveries, 0)
                     >= greatest($burst_factor * (t.deliveries - t.events) / nullif(t.deliveries, 0), $burst_share)
                THEN 'retry burst'
            ELSE 'unexplained' END AS cause
FROM windowed w CROSS JOIN totals t CROSS JOIN interval_q iq
LEFT JOIN gap_hit h USING (chain_id)
), by_cause AS (
    SELECT list({{'t': t, 'cause': cause, 'orphans': n}}) AS cause_counts
    FROM (SELECT time_bucket(CAST($bucket AS INTERVAL), first_seen) AS t, cause, count(*) AS n
          FROM result GROUP BY ALL)
)
SELECT r.* REPLACE ({text_sql('r.chain_id')} AS chain_id), c.cause_counts FROM result r CROSS JOIN by_cause c
ORDER BY r.first_seen DESC, r.chain_id
LIMIT $limit
"""

_ORPHANS_PER_BUCKET = """
WITH bounds AS (
    SELECT time_bucket(CAST($bucket AS INTERVAL), coalesce(CAST($start AS TIMESTAMP), min(first_seen))) AS lo,
           time_bucket(CAST($bucket AS INTERVAL),
                       coalesce(CAST($end AS TIMESTAMP) - INTERVAL 1 microsecond, max(first_seen))) AS hi
    FROM chains
), grid AS (
    SELECT unnest(range(lo, hi + CAST($bucket AS INTERVAL), CAST($bucket AS INTERVAL))) AS t
    FROM bounds WHERE lo IS NOT NULL AND hi IS NOT NULL AND lo <= hi
), counts AS (
    SELECT time_bucket(CAST($bucket AS INTERVAL), first_seen) AS t, count(*) AS chains,
           count(*) FILTER (orphan) AS orphan_chains
    FROM chains
    WHERE first_seen IS NOT NULL
      AND (CAST($start AS TIMESTAMP) IS NULL OR first_seen >= $start)
      AND (CAST($end AS TIMESTAMP) IS NULL OR first_seen < $end)
    GROUP BY 1
)
SELECT g.t, coalesce(c.chains, 0) AS chains, coalesce(c.orphan_chains, 0) AS orphan_chains,
       c.orphan_chains / nullif(c.chains, 0) AS orphan_rate
FROM grid g LEFT JOIN counts c USING (t)
ORDER BY g.t
"""


def orphans_per_bucket(
    store: Store, start: datetime | None, end: datetime | None, bucket: str
) -> pd.DataFrame:
    """Chains started per bucket: columns t, chains, orphan_chains, orphan_rate (NaN when no chain started)."""
    cur = store.cursor()
    cur.execute(_ORPHANS_PER_BUCKET, {"start": start, "end": end, "bucket": bucket})
    return cur.df()


def delivery_pauses(
    store: Store,
    start: datetime | None,
    end: datetime | None,
    gap_factor: float = GAP_FACTOR,
    gap_min_s: float = GAP_MIN_S,
) -> pd.DataFrame:
    """Every pause of at least `gap_min_s` between deliveries that overlaps the range, oldest first.

    Columns: gap_start, gap_end (the deliveries either side), gap_s, usual_gap_s (mean spacing over the
    3 hours before), times_usual, flagged (a delivery gap: at least `gap_factor` times the usual spacing).
    """
    params = {
        "start": start,
        "end": end,
        "gap_factor": float(gap_factor),
        "gap_min_s": float(gap_min_s),
        "usual_window_s": float(USUAL_WINDOW_S),
    }
    cur = store.cursor()
    cur.execute(_PAUSES, params)
    return cur.df()


def orphan_report(
    store: Store,
    start: datetime | None,
    end: datetime | None,
    bucket: str = "1 hour",
    lookback_s: float | None = None,
    limit: int = 1000,
    gap_factor: float = GAP_FACTOR,
    gap_min_s: float = GAP_MIN_S,
) -> dict:
    """The orphan chains starting in the range with their likely cause, and the delivery pauses behind them.

    Returns {"orphans", "orphans_total", "causes", "per_bucket", "pauses", "gaps", "lookback_s"}. `orphans`
    (latest first, at most `limit` rows; `orphans_total` counts them all, `causes` maps each of `CAUSES` to its
    count, `per_bucket` is `orphans_per_bucket` with one more column per cause) has chain_id, chain (short), first_seen, last_seen, events,
    deliveries, refreshes, span_s, end_state, unknown_parent (short fingerprint), cause (see `CAUSES`),
    evidence (plain words), and the numbers behind them (after_data_start_s, later_refresh_share,
    gap_start, gap_s, usual_gap_s, window_deliveries, window_retries, window_retry_share,
    overall_retry_share). `pauses` are those overlapping the range (see `delivery_pauses`), `gaps` the
    flagged ones among them. `lookback_s` defaults to the access-token lifetime.
    """
    ttl = access_ttl_s(store)
    lookback = float(lookback_s if lookback_s is not None else ttl)
    # Gaps may explain orphans up to one lookback after them, so they are read from that much earlier.
    since = None if start is None else start - pd.Timedelta(seconds=lookback).to_pytimedelta()
    pauses = delivery_pauses(store, since, end, gap_factor, gap_min_s)
    gaps = pauses[pauses["flagged"]]
    params = {
        "start": start,
        "end": end,
        "bucket": bucket,
        "lookback_s": lookback,
        "ttl": float(ttl),
        "limit": int(limit),
        "pcts": [i / 100 for i in range(1, 100)],
        "burst_min": BURST_MIN_RETRIES,
        "burst_factor": BURST_FACTOR,
        "burst_share": BURST_MIN_SHARE,
        "gap_starts": [t.to_pydatetime() for t in gaps["gap_start"]],
        "gap_ends": [t.to_pydatetime() for t in gaps["gap_end"]],
        "gap_lengths": [float(x) for x in gaps["gap_s"]],
        "gap_usual": [float(x) for x in gaps["usual_gap_s"]],
    }
    cur = store.cursor()
    cur.execute(_ORPHAN_CHAINS, params)
    orphans = cur.df()
    per_bucket = orphans_per_bucket(store, start, end, bucket).set_index("t")
    for cause in CAUSES:
        per_bucket[cause] = 0
    if len(orphans):
        for d in orphans["cause_counts"].iloc[0]:
            per_bucket.loc[pd.Timestamp(d["t"]), d["cause"]] = int(d["orphans"])
    counts = {c: int(per_bucket[c].sum()) for c in CAUSES}
    orphans = orphans.drop(columns=["cause_counts"])
    orphans["evidence"] = [_evidence(r, lookback) for r in orphans.itertuples(index=False)]
    in_range = pauses if start is None else pauses[pauses["gap_end"] >= pd.Timestamp(start)]
    in_range = in_range.reset_index(drop=True)
    return {
        "orphans": orphans,
        "orphans_total": sum(counts.values()),
        "causes": counts,
        "per_bucket": per_bucket.reset_index(),
        "pauses": in_range,
        "gaps": in_range[in_range["flagged"]].reset_index(drop=True),
        "lookback_s": lookback,
    }


def _evidence(r, lookback_s: float) -> str:
    """The plain-words reason behind a cause, from the numbers the query returned."""
    into = f"starts {duration_text(r.after_data_start_s)} into the data"
    if r.cause == "start of data":
        return f"{into}: its parent was sent before the export begins"
    if r.cause == "delivery gap":
        return (
            f"no delivery for {duration_text(r.gap_s)} from {pd.Timestamp(r.gap_start):%Y-%m-%d %H:%M:%S} "
            f"(usually one every {duration_text(r.usual_gap_s)}): the receiver was down and Tyk's 3 attempts "
            "failed"
        )
    if r.cause == "retry burst":
        return (
            f"{int(r.window_retries)} retried deliveries in the {duration_text(lookback_s)} before "
            f"({r.window_retry_share:.0%} of deliveries, {r.overall_retry_share:.1%} overall): the receiver "
            "was answering non-200"
        )
    if (
        r.later_refresh_share is not None
        and not pd.isna(r.later_refresh_share)
        and r.later_refresh_share > 0.015
    ):
        return (
            f"no gap or retry burst in the {duration_text(lookback_s)} before; {into}, and "
            f"{r.later_refresh_share:.0%} of refreshes wait that long: the parent may predate the data"
        )
    return (
        f"no gap or retry burst in the {duration_text(lookback_s)} before; {into}, later than 99 % of "
        "refreshes wait: most likely lost silently (answered 200 but not logged, or dropped on its way to "
        "the log store)"
    )


__all__ = ["CAUSES", "delivery_pauses", "orphan_report", "orphans_per_bucket"]
