"""Named queries behind the Live receiver page: what `tokentrail receive` recorded and this store applied.

Live deliveries are the rows the spool follower wrote (`live.follower`): their `source` is `live:<segment>`,
their time is the receipt time, and in relay mode `upstream_status` holds what the user's own service answered
(200 accepted, another status refused, 0 no answer: timeout or unreachable; NULL when not relaying). Bodies
that were not notifications are in the quarantine with the same `source`; the quarantine keeps no receipt
time, so they are placed at the time of the apply that stored them (`ingest_files.started_at`, about a second
after receipt while the dashboard runs).

As in `queries.overview`, a range is `[start, end)` (naive UTC, `None` = open) and everything is aggregated in
DuckDB: one row of tile values, one row per bucket, at most `MAX_RECENT` recent deliveries.

`spool_snapshot` is the one figure not read from the database: how much the receiver has recorded that the
store has not applied yet, from the spool's files and the store's cursor. It reads file sizes and only the
unapplied tail, so it is cheap enough to call on every auto-refresh tick (it is not cached).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from ingest.store import Store
from live.follower import CURSOR_KEY
from live.spool import RECEIVING_S as RECEIVING_S  # re-exported for the page
from live.spool import Cursor, SpoolSnapshot, snapshot, spool_dir_for
from queries.overview import _in_range, _range, bucket_grid
from queries.summary import short_sql

MAX_RECENT = 200

_LIVE = "starts_with(source, 'live:')"

# Rejected live bodies with the time of the apply that stored them (the quarantine has no receipt time).
_REJECTED = """
rejected AS (
    SELECT f.started_at AS applied_at, q.reason, q.excerpt, q.source
    FROM quarantine q JOIN ingest_files f ON f.run_id = q.run_id AND f.source = q.source
    WHERE starts_with(q.source, 'live:')
)"""

_TILES = f"""
WITH {_REJECTED},
d AS (
    SELECT d.received_at, d.upstream_status, d.received_at > e.first_seen AS retry
    FROM deliveries d JOIN events e USING (event_id)
    WHERE starts_with(d.source, 'live:') AND {_in_range("d.received_at")}
),
agg AS (
    SELECT count(*) AS deliveries,
           count(*) FILTER (retry) AS retries,
           count(*) FILTER (upstream_status IS NOT NULL) AS relayed,
           count(*) FILTER (upstream_status = 200) AS accepted,
           count(*) FILTER (upstream_status NOT IN (0, 200)) AS refused,
           count(*) FILTER (upstream_status = 0) AS no_answer,
           count(*) FILTER (upstream_status IS NULL) AS not_relayed
    FROM d
),
tot AS (  -- all time, whatever the range: the page's "last delivery" and its empty state
    SELECT min(received_at) AS first_live_at, max(received_at) AS last_live_at, count(*) AS live_total
    FROM deliveries WHERE {_LIVE}
)
SELECT agg.*,
       (SELECT count(*) FROM rejected WHERE {_in_range("applied_at")}) AS rejected,
       (SELECT count(*) FROM rejected) AS rejected_total,
       (SELECT min(applied_at) FROM rejected) AS first_rejected_at,
       tot.live_total, tot.first_live_at, tot.last_live_at
FROM agg, tot  -- one row each
"""

# One row per bucket of the range (all live data when the range is open), every bucket present.
_SERIES = f"""
WITH {_REJECTED},
times AS (
    SELECT received_at AS t FROM deliveries WHERE {_LIVE} AND {_in_range("received_at")}
    UNION ALL
    SELECT applied_at FROM rejected WHERE {_in_range("applied_at")}
),
{bucket_grid("(SELECT min(t) FROM times)", "(SELECT max(t) FROM times)")},
dl AS (
    SELECT time_bucket($bucket::INTERVAL, received_at) AS bucket,
           count(*) FILTER (upstream_status = 200) AS accepted,
           count(*) FILTER (upstream_status NOT IN (0, 200)) AS refused,
           count(*) FILTER (upstream_status = 0) AS no_answer,
           count(*) FILTER (upstream_status IS NULL) AS not_relayed,
           count(*) AS deliveries
    FROM deliveries WHERE {_LIVE} AND received_at IS NOT NULL AND {_in_range("received_at")} GROUP BY 1
),
rj AS (
    SELECT time_bucket($bucket::INTERVAL, applied_at) AS bucket, count(*) AS rejected
    FROM rejected WHERE {_in_range("applied_at")} GROUP BY 1
)
SELECT b.bucket,
       coalesce(dl.accepted, 0) AS accepted,
       coalesce(dl.refused, 0) AS refused,
       coalesce(dl.no_answer, 0) AS no_answer,
       coalesce(dl.not_relayed, 0) AS not_relayed,
       coalesce(dl.deliveries, 0) AS deliveries,
       coalesce(rj.rejected, 0) AS rejected
FROM buckets b LEFT JOIN dl USING (bucket) LEFT JOIN rj USING (bucket)
ORDER BY b.bucket
"""

# The newest live deliveries of the range (top-N first, then the joins for those few rows only).
_RECENT = f"""
WITH d AS (
    SELECT delivery_id, event_id, received_at, upstream_status, source FROM deliveries
    WHERE {_LIVE} AND {_in_range("received_at")}
    ORDER BY received_at DESC, delivery_id LIMIT $limit
)
SELECT d.received_at,
       e.notification_type,
       {short_sql('d.event_id')} AS event,
       {short_sql('e.access_token_fp')} AS access_fp,
       {short_sql('e.refresh_token_fp')} AS refresh_fp,
       {short_sql('e.old_refresh_token_fp')} AS old_refresh_fp,
       d.received_at > e.first_seen AS retry,
       d.upstream_status,
       CASE WHEN d.upstream_status IS NULL THEN 'not relayed' WHEN d.upstream_status = 0 THEN 'no answer'
            ELSE d.upstream_status::VARCHAR END AS upstream,
       c.identity,
       c.orphan AS orphan_chain
FROM d
JOIN events e USING (event_id)
LEFT JOIN lineage l ON l.event_id = d.event_id
LEFT JOIN chains c ON c.chain_id = l.chain_id
ORDER BY d.received_at DESC, d.delivery_id
"""

_RECENT_REJECTED = f"""
WITH {_REJECTED}
SELECT applied_at, reason, excerpt, replace(source, 'live:', '') AS segment
FROM rejected WHERE {_in_range("applied_at")}
ORDER BY applied_at DESC, segment DESC LIMIT $limit
"""


def tiles(store: Store, start: datetime | None = None, end: datetime | None = None) -> dict:
    """Counts of live deliveries in `[start, end)` by outcome, and the live data's extent (all time)."""
    cur = store.cursor()
    cur.execute(_TILES, _range(start, end))
    cols = [c[0] for c in cur.description]
    row = dict(zip(cols, cur.fetchall()[0], strict=True))
    failed = row["refused"] + row["no_answer"]
    row["accepted_rate"] = row["accepted"] / row["relayed"] if row["relayed"] else None
    row["failed_rate"] = failed / row["relayed"] if row["relayed"] else None
    return row


def series(store: Store, start: datetime | None, end: datetime | None, bucket: str) -> pd.DataFrame:
    """Live deliveries per `bucket` (a DuckDB interval) by outcome, plus rejected bodies."""
    return store.cursor().execute(_SERIES, {**_range(start, end), "bucket": bucket}).df()


def recent(
    store: Store, start: datetime | None = None, end: datetime | None = None, limit: int = MAX_RECENT
) -> pd.DataFrame:
    """The newest live deliveries of the range, newest first: short ids and fingerprints only."""
    params = {**_range(start, end), "limit": max(0, min(int(limit), MAX_RECENT))}
    return store.cursor().execute(_RECENT, params).df()


def recent_rejected(
    store: Store, start: datetime | None = None, end: datetime | None = None, limit: int = 50
) -> pd.DataFrame:
    """The newest rejected live bodies (masked excerpts), newest first."""
    params = {**_range(start, end), "limit": max(0, min(int(limit), MAX_RECENT))}
    return store.cursor().execute(_RECENT_REJECTED, params).df()


# -- the spool (files, not SQL) --------------------------------------------------------------------------------


def spool_snapshot(store: Store, spool: Path | None = None) -> SpoolSnapshot:
    """The spool of `store` against the store's own cursor (which commits with the data it covers)."""
    return snapshot(spool or spool_dir_for(store.path), Cursor.from_json(store.get_meta(CURSOR_KEY)))
