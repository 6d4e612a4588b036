"""Named queries behind the Overview page and the Upload page's store figures.

Everything is aggregated in DuckDB: the pages receive one small row of tile values and one row per time
bucket, never raw events. A range is `[start, end)` on event time (naive UTC); `None` leaves that side open,
and with both open (the "all" range) the figures include untimed rows, so they equal `tokentrail summary`.

What each figure is counted by, so that a range means the same thing everywhere:

* events, refreshes, new events, the retry (duplicate) rate: `events.first_seen` and `deliveries.received_at`;
* chains started, orphan chains: the chain's first event (`chains.first_seen`);
* forced re-logins and session lifetime: the chain's last event (`chains.last_seen`), when the session was
  lost or last seen. (By first event, a range ending at the data's end would hold only young sessions that
  are still running, and their median would look alarmingly short.)
* forks: the moment the refresh token was presented the second time, when the reuse happened;
* active sessions: chains still valid (last event + access-token lifetime) at the data's end, and per bucket
  the sessions alive at some time in the bucket, from a running sum of starts and expiries.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from ingest.store import DEFAULT_ACCESS_TTL_S, Store

# In range: an open side (NULL bound) does not filter, so the "all" range keeps untimed rows too.
_IN_RANGE = "($start::TIMESTAMP IS NULL OR {col} >= $start::TIMESTAMP) AND ($end::TIMESTAMP IS NULL OR {col} < $end::TIMESTAMP)"


def _in_range(col: str) -> str:
    return _IN_RANGE.format(col=col)


# Forked refresh tokens and when each was reused (the second presentation). `lineage.forked` marks exactly the
# refresh events whose presented token was presented by another refresh event too (ingest.lineage).
_FORKS = """
forks AS (
    SELECT old_refresh_token_fp, list_sort(list(first_seen) FILTER (first_seen IS NOT NULL))[2] AS fork_at
    FROM events
    WHERE event_id IN (SELECT event_id FROM lineage WHERE forked)  -- a semi-join: a few rows of millions
    GROUP BY old_refresh_token_fp
)"""

_TILES = f"""
WITH {_FORKS},
ev AS (
    SELECT count(*) FILTER (notification_type = 'refresh') AS refreshes,
           count(*) FILTER (notification_type = 'new') AS new_events, count(*) AS events
    FROM events WHERE {_in_range("first_seen")}
),
dl AS (SELECT count(*) AS deliveries FROM deliveries WHERE {_in_range("received_at")}),
started AS (
    SELECT count(*) AS chains_started, count(*) FILTER (orphan) AS orphan_chains
    FROM chains WHERE {_in_range("first_seen")}
),
ended AS (
    SELECT count(*) FILTER (end_state = 'forced_relogin') AS forced_relogins,
           count(*) FILTER (identity IS NOT NULL) AS identified_chains_ended,
           median(lifetime_s) AS median_session_lifetime_s
    FROM chains WHERE {_in_range("last_seen")}
)
SELECT (SELECT count(*) FROM chains WHERE end_state = 'active') AS active_sessions,
       ev.refreshes, ev.new_events, ev.events, dl.deliveries, started.chains_started, started.orphan_chains,
       (SELECT count(*) FROM forks WHERE {_in_range("fork_at")}) AS forks,
       ended.forced_relogins, ended.identified_chains_ended, ended.median_session_lifetime_s
FROM ev, dl, started, ended
"""

def bucket_grid(first: str, last: str) -> str:
    """CTEs `bounds` and `buckets`: every `$bucket` of the range `[$start, $end)`, an open side taken from the
    SQL expressions `first` / `last` (the data's own bounds), so a series has a row for every bucket."""
    return f"""bounds AS (
    SELECT coalesce($start::TIMESTAMP, {first}) AS lo,
           coalesce($end::TIMESTAMP - INTERVAL 1 MICROSECOND, {last}) AS hi
),
buckets AS (
    SELECT unnest(generate_series(time_bucket($bucket::INTERVAL, lo), hi, $bucket::INTERVAL)) AS bucket
    FROM bounds WHERE lo IS NOT NULL AND hi IS NOT NULL AND lo <= hi
)"""


# One row per bucket of the range, every bucket present (zero when nothing happened), so sparklines and
# panels have an honest time axis.
_SERIES = f"""
WITH {_FORKS},
{bucket_grid("(SELECT min(first_seen) FROM events)", "(SELECT max(first_seen) FROM events)")},
ev AS (
    SELECT time_bucket($bucket::INTERVAL, first_seen) AS bucket,
           count(*) FILTER (notification_type = 'new') AS new_events,
           count(*) FILTER (notification_type = 'refresh') AS refreshes,
           count(*) AS events
    FROM events WHERE first_seen IS NOT NULL AND {_in_range("first_seen")} GROUP BY 1
),
dl AS (
    SELECT time_bucket($bucket::INTERVAL, received_at) AS bucket, count(*) AS deliveries
    FROM deliveries WHERE received_at IS NOT NULL AND {_in_range("received_at")} GROUP BY 1
),
st AS (
    SELECT time_bucket($bucket::INTERVAL, first_seen) AS bucket, count(*) AS chains_started,
           count(*) FILTER (orphan) AS orphan_chains
    FROM chains WHERE first_seen IS NOT NULL AND {_in_range("first_seen")} GROUP BY 1
),
en AS (
    SELECT time_bucket($bucket::INTERVAL, last_seen) AS bucket,
           count(*) FILTER (end_state = 'forced_relogin') AS forced_relogins,
           median(lifetime_s) AS median_session_lifetime_s
    FROM chains WHERE last_seen IS NOT NULL AND {_in_range("last_seen")} GROUP BY 1
),
fk AS (
    SELECT time_bucket($bucket::INTERVAL, fork_at) AS bucket, count(*) AS forks
    FROM forks WHERE fork_at IS NOT NULL AND {_in_range("fork_at")} GROUP BY 1
),
alive_delta AS (
    SELECT time_bucket($bucket::INTERVAL, first_seen) AS bucket, count(*) AS d
    FROM chains WHERE first_seen IS NOT NULL GROUP BY 1
    UNION ALL
    -- a session counts in every bucket it was alive in, the one holding its expiry included
    SELECT time_bucket($bucket::INTERVAL, last_seen + to_seconds($ttl)) + $bucket::INTERVAL, -count(*)
    FROM chains WHERE last_seen IS NOT NULL GROUP BY 1
),
alive AS (
    SELECT bucket, sum(sum(d)) OVER (ORDER BY bucket) AS active_sessions FROM alive_delta GROUP BY bucket
)
SELECT b.bucket,
       coalesce(ev.new_events, 0) AS new_events,
       coalesce(ev.refreshes, 0) AS refreshes,
       coalesce(ev.events, 0) AS events,
       coalesce(dl.deliveries, 0) AS deliveries,
       coalesce(dl.deliveries, 0) - coalesce(ev.events, 0) AS duplicates,
       coalesce(st.chains_started, 0) AS chains_started,
       coalesce(st.orphan_chains, 0) AS orphan_chains,
       en.median_session_lifetime_s,
       coalesce(en.forced_relogins, 0) AS forced_relogins,
       coalesce(fk.forks, 0) AS forks,
       coalesce(a.active_sessions, 0) AS active_sessions
FROM buckets b
LEFT JOIN ev USING (bucket)
LEFT JOIN dl USING (bucket)
LEFT JOIN st USING (bucket)
LEFT JOIN en USING (bucket)
LEFT JOIN fk USING (bucket)
ASOF LEFT JOIN alive a ON a.bucket <= b.bucket
ORDER BY b.bucket
"""

_STORE_COUNTS = """
SELECT (SELECT count(*) FROM deliveries) AS deliveries,
       (SELECT count(*) FROM events) AS events,
       (SELECT count(*) FROM chains) AS chains,
       (SELECT count(*) FROM quarantine) AS rejected,
       (SELECT count(*) FROM identity_map) AS mapped_auth_codes,
       (SELECT count(DISTINCT source) FROM ingest_files WHERE error IS NULL) AS files
"""

_INGEST_HISTORY = """
SELECT run_id, started_at, source AS file, format, records, new_deliveries, known_deliveries AS already_stored,
       rejected, untimed, error
FROM ingest_files ORDER BY run_id DESC, source LIMIT ?
"""


def _range(start: datetime | None, end: datetime | None) -> dict:
    return {"start": start, "end": end}


def access_ttl_s(store: Store) -> int:
    return int(store.get_meta("access_ttl_s", str(DEFAULT_ACCESS_TTL_S)) or DEFAULT_ACCESS_TTL_S)


def tiles(store: Store, start: datetime | None = None, end: datetime | None = None) -> dict:
    """The Overview's tile values for `[start, end)`, with the rates derived from the counts."""
    cur = store.cursor()
    cur.execute(_TILES, _range(start, end))
    cols = [d[0] for d in cur.description]
    row = dict(zip(cols, cur.fetchall()[0], strict=True))
    row["duplicates"] = row["deliveries"] - row["events"]
    row["duplicate_rate"] = row["duplicates"] / row["deliveries"] if row["deliveries"] else None
    row["orphan_rate"] = row["orphan_chains"] / row["chains_started"] if row["chains_started"] else None
    row["forced_relogin_rate"] = (
        row["forced_relogins"] / row["identified_chains_ended"] if row["identified_chains_ended"] else None
    )
    if row["median_session_lifetime_s"] is not None:
        row["median_session_lifetime_s"] = round(float(row["median_session_lifetime_s"]), 3)
    row["access_token_lifetime_s"] = access_ttl_s(store)
    return row


def series(store: Store, start: datetime | None, end: datetime | None, bucket: str) -> pd.DataFrame:
    """Per-bucket counts for the sparklines and panels; `bucket` is a DuckDB interval such as '5 minutes'."""
    params = {**_range(start, end), "bucket": bucket, "ttl": float(access_ttl_s(store))}
    return store.cursor().execute(_SERIES, params).df()


def store_counts(store: Store) -> dict:
    """What the store holds in all: shown on the Upload page and used for the empty state."""
    cur = store.cursor()
    cur.execute(_STORE_COUNTS)
    cols = [d[0] for d in cur.description]
    return dict(zip(cols, cur.fetchall()[0], strict=True))


def ingest_history(store: Store, limit: int = 200) -> pd.DataFrame:
    """The files read by past ingests, newest run first."""
    return store.cursor().execute(_INGEST_HISTORY, [limit]).df()
