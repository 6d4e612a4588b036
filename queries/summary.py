"""Named read-only queries behind `tokentrail summary`, `chains` and `quarantine` (and the dashboard's tiles).

Every function takes a `Store` and opens its own cursor, so callers on different threads never share one.
Times leave here as ISO 8601 UTC strings ("...Z"); fingerprints leave as short prefixes.
"""

from __future__ import annotations

from datetime import datetime

from ingest.fingerprint import text_sql
from ingest.store import DEFAULT_ACCESS_TTL_S, Store

SHORT_FP = 10  # characters of a fingerprint shown to people


def short_sql(column: str) -> str:
    """SQL: the first SHORT_FP characters of an id's or a fingerprint's text form, as people see it."""
    return f"left({text_sql(column)}, {SHORT_FP})"


_SUMMARY = """
SELECT
    (SELECT count(*) FROM deliveries) AS deliveries,
    (SELECT count(*) FROM events) AS events,
    (SELECT count(*) FROM deliveries) - (SELECT count(*) FROM events) AS duplicates,
    (SELECT count(*) FROM quarantine) AS rejected,
    (SELECT count(*) FROM chains) AS chains,
    (SELECT count(*) FROM chains WHERE orphan) AS orphan_chains,
    (SELECT count(*) FROM (SELECT old_refresh_token_fp FROM events WHERE notification_type = 'refresh'
                           GROUP BY 1 HAVING count(*) >= 2)) AS forks,
    (SELECT count(DISTINCT identity) FROM chains WHERE identity IS NOT NULL) AS identities,
    (SELECT median(span_s) FROM chains WHERE span_s IS NOT NULL) AS median_chain_span_s,
    (SELECT median(lifetime_s) FROM chains WHERE lifetime_s IS NOT NULL) AS median_session_lifetime_s,
    (SELECT count(*) FROM deliveries WHERE received_at IS NULL) AS untimed,
    (SELECT count(*) FROM events WHERE notification_type = 'new') AS new_events,
    (SELECT count(*) FROM events WHERE notification_type = 'refresh') AS refresh_events,
    (SELECT count(*) FROM chains WHERE end_state = 'active') AS active_chains,
    (SELECT count(*) FROM chains WHERE end_state = 'forced_relogin') AS forced_relogins,
    (SELECT count(*) FROM lineage WHERE refresh_class = 'late') AS late_refreshes,
    (SELECT count(*) FROM chains WHERE cycle_broken) AS cycles_broken,
    (SELECT min(received_at) FROM deliveries) AS first_seen,
    (SELECT max(received_at) FROM deliveries) AS last_seen
"""

_CHAINS_FOR_IDENTITY = f"""
SELECT {text_sql('chain_id')} AS chain_id, first_seen, last_seen, events, refreshes, deliveries, forks, late_refreshes, early_refreshes,
       span_s, lifetime_s, end_state, root_type, orphan, untimed_events
FROM chains WHERE identity = ? ORDER BY first_seen NULLS LAST, chain_id
"""

_QUARANTINE = """
SELECT source, record_no, reason, excerpt FROM quarantine ORDER BY source, record_no LIMIT ?
"""


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def short(fp: str | None) -> str | None:
    return None if fp is None else fp[:SHORT_FP]


def summary(store: Store) -> dict:
    cur = store.cursor()
    cols = [d[0] for d in cur.execute(_SUMMARY).description]
    row = dict(zip(cols, cur.fetchall()[0], strict=True))
    for k in ("first_seen", "last_seen"):
        row[k] = iso(row[k])
    for k in ("median_chain_span_s", "median_session_lifetime_s"):
        row[k] = None if row[k] is None else round(float(row[k]), 3)
    row["access_token_lifetime_s"] = int(store.get_meta("access_ttl_s", str(DEFAULT_ACCESS_TTL_S)))
    row["as_of"] = store.get_meta("as_of")
    return row


def chains_for_identity(store: Store, identity: str) -> list[dict]:
    cur = store.cursor()
    cur.execute(_CHAINS_FOR_IDENTITY, [identity])
    cols = [d[0] for d in cur.description]
    out = []
    for values in cur.fetchall():
        row = dict(zip(cols, values, strict=True))
        row["chain_id"] = short(row["chain_id"])
        row["first_seen"], row["last_seen"] = iso(row["first_seen"]), iso(row["last_seen"])
        out.append(row)
    return out


def quarantine(store: Store, limit: int = 1000) -> list[dict]:
    cur = store.cursor()
    return [
        {"file": s, "record_no": n, "reason": r, "excerpt": e}
        for s, n, r, e in cur.execute(_QUARANTINE, [limit]).fetchall()
    ]
