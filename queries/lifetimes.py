"""Named queries behind the Session lifetimes page: how long sessions live, and who loses theirs.

A session's lifetime is its chain's span plus one access-token lifetime (DOMAIN.md), so it is never shorter
than one token lifetime, and lifetimes spread from that hour to weeks. Both the histogram and the survival
curve therefore use a log scale of time starting at one token lifetime: histogram bins are half octaves
(each √2 times longer than the one before), the survival grid is geometric. The survival curve is a Kaplan-Meier estimate computed in SQL on a fixed grid:
sessions still `active` at the end of the data have not ended yet, so they count as alive up to their
current lifetime and then leave the population (censored) instead of counting as ended. Chains are
selected by `first_seen` in `[start, end)` and by kind: all, identified (an identity is known), orphan, or
unidentified (neither: client_credentials and logins without an identity mapping).
"""

from __future__ import annotations

import math
from datetime import datetime

import pandas as pd

from ingest.store import Store
from queries.refresh import access_ttl_s

KINDS = {
    "all": "All chains",
    "identified": "Identified users",
    "orphan": "Orphan chains",
    "unidentified": "Unidentified (machines, unmapped logins)",
}
BINS_PER_OCTAVE = 2  # histogram bins: ttl x 2^(k/2)
SURVIVAL_STEPS = 120

_SELECT = """
WITH c AS (
    SELECT * FROM chains
    WHERE lifetime_s IS NOT NULL
      AND (CAST($start AS TIMESTAMP) IS NULL OR first_seen >= $start)
      AND (CAST($end AS TIMESTAMP) IS NULL OR first_seen < $end)
      AND ($kind = 'all'
           OR ($kind = 'identified' AND identity IS NOT NULL)
           OR ($kind = 'orphan' AND orphan)
           OR ($kind = 'unidentified' AND identity IS NULL AND NOT orphan))
)
"""

_TOTALS = f"""{_SELECT}
SELECT count(*) AS chains, median(lifetime_s) AS median_lifetime_s,
       quantile_cont(lifetime_s, 0.9) AS p90_lifetime_s, quantile_cont(lifetime_s, 0.98) AS p98_lifetime_s,
       quantile_cont(lifetime_s, 0.99) AS p99_lifetime_s, max(lifetime_s) AS max_lifetime_s,
       count(*) FILTER (end_state = 'active') AS active, count(*) FILTER (end_state = 'forced_relogin') AS forced_relogins,
       count(*) FILTER (identity IS NOT NULL) AS identified
FROM c
"""

_HISTOGRAM = f"""{_SELECT}
SELECT greatest(floor($per_octave * log2(lifetime_s / $ttl)), 0)::INTEGER AS bin, end_state, count(*) AS chains
FROM c GROUP BY ALL ORDER BY bin, end_state
"""

# Kaplan-Meier on a geometric grid of `steps` intervals from one token lifetime to `top` seconds: ended
# sessions are events, active ones are censored; S(t) is the running product of (1 - ended / at risk).
# Lifetimes beyond `top` fall in the last step.
_SURVIVAL = f"""{_SELECT}, steps AS (
    SELECT least(greatest(floor($steps * ln(lifetime_s / $ttl) / ln($top / $ttl)), 0), $steps - 1)::INTEGER AS k,
           count(*) FILTER (end_state <> 'active') AS ended, count(*) FILTER (end_state = 'active') AS censored
    FROM c GROUP BY 1
), grid AS (
    SELECT g.k, coalesce(s.ended, 0) AS ended, coalesce(s.censored, 0) AS censored
    FROM range(0, $steps) g(k) LEFT JOIN steps s USING (k)
), risk AS (
    SELECT k, ended, censored,
           (SELECT count(*) FROM c) - coalesce(sum(ended + censored) OVER (ORDER BY k ROWS BETWEEN UNBOUNDED PRECEDING
                                                                          AND 1 PRECEDING), 0) AS at_risk
    FROM grid
)
SELECT $ttl * pow($top / $ttl, (k + 1) / $steps) AS t_s, at_risk, ended, censored,
       product(CASE WHEN at_risk > 0 THEN 1 - ended / at_risk ELSE 1 END) OVER (ORDER BY k) AS alive
FROM risk
ORDER BY k
"""

_PER_IDENTITY = f"""{_SELECT}
SELECT identity, count(*) AS chains, median(lifetime_s) AS median_lifetime_s, max(lifetime_s) AS max_lifetime_s,
       count(*) FILTER (end_state = 'forced_relogin') AS forced_relogins,
       sum(late_refreshes)::BIGINT AS late_refreshes, sum(refreshes)::BIGINT AS refreshes,
       sum(forks)::BIGINT AS forks, max(last_seen) AS last_seen,
       count(*) OVER () AS identities_total
FROM c WHERE identity IS NOT NULL
GROUP BY identity
ORDER BY forced_relogins DESC, chains DESC, identity
LIMIT $limit
"""


def duration_text(seconds: float | None) -> str:
    """A duration in the words an on-call engineer uses: 45 s, 12 min, 2 h 5 min, 3 days 4 h."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    s = abs(float(seconds))
    sign = "-" if seconds < 0 else ""
    if s < 1:
        return f"{sign}{s * 1000:.0f} ms"
    if s < 10:
        return f"{sign}{s:.1f} s"
    if s < 90:
        return f"{sign}{s:.0f} s"
    m = round(s / 60)
    if m < 90:
        return f"{sign}{m} min"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{sign}{h} h" + (f" {m} min" if m else "")
    d, h = divmod(h, 24)
    return f"{sign}{d} days" + (f" {h} h" if h else "")


def _params(start, end, kind: str) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown chain kind {kind!r}; use one of {', '.join(KINDS)}")
    return {"start": start, "end": end, "kind": kind}


def lifetime_totals(store: Store, start: datetime | None, end: datetime | None, kind: str = "all") -> dict:
    """Chains, median / p90 / p98 / p99 / max lifetime, active and forced re-login counts."""
    cur = store.cursor()
    cur.execute(_TOTALS, _params(start, end, kind))
    cols = [d[0] for d in cur.description]
    return dict(zip(cols, cur.fetchall()[0], strict=True))


def _ttl(store: Store) -> float:
    return float(access_ttl_s(store))


def lifetime_histogram(
    store: Store, start: datetime | None, end: datetime | None, kind: str = "all"
) -> pd.DataFrame:
    """Session lifetimes in half-octave bins from one token lifetime: columns bin, lo_s, hi_s, end_state, chains.

    Bin k holds lifetimes in [ttl x 2^(k/2), ttl x 2^((k+1)/2)); a lifetime under one token lifetime (the
    lifetime setting changed between ingests) counts in bin 0.
    """
    ttl = _ttl(store)
    cur = store.cursor()
    cur.execute(_HISTOGRAM, {**_params(start, end, kind), "ttl": ttl, "per_octave": float(BINS_PER_OCTAVE)})
    df = cur.df()
    df["lo_s"] = ttl * 2.0 ** (df["bin"] / BINS_PER_OCTAVE)
    df["hi_s"] = ttl * 2.0 ** ((df["bin"] + 1) / BINS_PER_OCTAVE)
    return df[["bin", "lo_s", "hi_s", "end_state", "chains"]]


def survival_curve(
    store: Store, start: datetime | None, end: datetime | None, kind: str = "all"
) -> pd.DataFrame:
    """Share of sessions still alive after t (Kaplan-Meier, active sessions censored).

    Columns: t_s, alive (0..1), at_risk, ended, censored. The grid is geometric, 120 steps from one token
    lifetime to the 99th percentile lifetime, and starts with (0 s, 1.0) and (ttl, 1.0): no session ends
    before one token lifetime.
    """
    totals = lifetime_totals(store, start, end, kind)
    if not totals["chains"]:
        return pd.DataFrame({"t_s": [], "alive": [], "at_risk": [], "ended": [], "censored": []})
    ttl = _ttl(store)
    top = max(float(totals["p99_lifetime_s"] or 0.0), ttl * 1.01)
    cur = store.cursor()
    cur.execute(_SURVIVAL, {**_params(start, end, kind), "ttl": ttl, "top": top, "steps": SURVIVAL_STEPS})
    df = cur.df()
    n = totals["chains"]
    head = pd.DataFrame(
        {"t_s": [0.0, ttl], "at_risk": [n, n], "ended": [0, 0], "censored": [0, 0], "alive": [1.0, 1.0]}
    )
    return pd.concat([head, df], ignore_index=True)[["t_s", "alive", "at_risk", "ended", "censored"]]


def identity_lifetimes(
    store: Store, start: datetime | None, end: datetime | None, limit: int = 2000
) -> pd.DataFrame:
    """Per identity: chains, median and max lifetime, forced re-logins, late refreshes, refreshes, forks,
    last_seen, and identities_total (all identities in the range, whatever the limit). Worst first."""
    cur = store.cursor()
    cur.execute(_PER_IDENTITY, {**_params(start, end, "identified"), "limit": int(limit)})
    return cur.df()
