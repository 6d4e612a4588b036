"""Named queries behind the Identity drill-down: one identity's chains, events and lineage trees, and a
plain-words answer to "why did this user's session drop?".

Everything is selected by identity first (a few hundred events at most for a person), so these queries stay
fast on a large store. The answer (`session_findings`) only says what the data shows:

* **forced re-login**: the identity started a new chain while the previous chain's last refresh token was
  never presented and still valid: the app lost its tokens;
* **late refresh**: a refresh came after the access token it replaced had expired;
* **fork**: one refresh token was presented by two refresh events (two app instances racing, or a replay);
* **possible continuation**: an orphan chain (which has no identity) started soon after one of this
  identity's chains ended. One lost notification hides one refresh, so the orphan's first event comes one
  to two token lifetimes after the chain's last event; the match is by time only, and the finding says how
  many other sessions ended in the same window, so it reads as the guess it is.

Times are `[start, end)` on the chain's `first_seen`. Fingerprints leave here short (`queries.summary.short`).
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from ingest import fingerprint
from ingest.fingerprint import text_sql
from ingest.store import DEFAULT_REFRESH_TTL_S, Store
from queries.lifetimes import duration_text
from queries.refresh import access_ttl_s
from queries.summary import short_sql

CONTINUATION_SLACK_S = (
    900  # beyond two token lifetimes, how late an orphan may start to count as a continuation
)
STRONG_GUESS_RIVALS = 3  # more sessions than this ending in the same window make a continuation a weak guess

_IN_RANGE = """
  AND (CAST($start AS TIMESTAMP) IS NULL OR c.first_seen >= $start)
  AND (CAST($end AS TIMESTAMP) IS NULL OR c.first_seen < $end)
"""

_OPTIONS = f"""
SELECT identity FROM chains c WHERE identity IS NOT NULL {_IN_RANGE}
GROUP BY identity ORDER BY identity LIMIT $limit
"""

_IDENTITY_OVERVIEW = """
SELECT count(*) AS chains, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
       sum(events)::BIGINT AS events
FROM chains WHERE identity = $identity
"""

_CHAIN_ID = fingerprint.from_text_sql("$chain_id")  # the text form in, the stored integer out

# A chain's columns as the drill-down shows them (`identity_chains`, `chain_by_short`)
_CHAIN_COLUMNS = f"""{text_sql('c.chain_id')} AS chain_id, {short_sql('c.chain_id')} AS chain, c.first_seen, c.last_seen,
       c.events, c.refreshes, c.deliveries, c.forks, c.late_refreshes, c.early_refreshes, c.span_s, c.lifetime_s,
       c.end_state"""

# next_start: the identity's first chain started after this chain's last event (as ingest.lineage defines a
# forced re-login), over all its chains whatever the range.
_CHAINS = f"""
WITH mine AS (
    SELECT * FROM chains WHERE identity = $identity
), nxt AS (
    SELECT c.chain_id, d.first_seen AS next_start, d.chain_id AS next_chain_id
    FROM mine c ASOF JOIN mine d ON d.first_seen > c.last_seen
)
SELECT {_CHAIN_COLUMNS}, n.next_start, {short_sql('n.next_chain_id')} AS next_chain
FROM mine c LEFT JOIN nxt n USING (chain_id)
WHERE TRUE {_IN_RANGE}
ORDER BY c.first_seen NULLS LAST, c.chain_id
"""

# A parent is always in its child's chain, so the parent's time comes from the same small set: the large
# events table is probed once.
_EVENTS = f"""
WITH mine AS (
    SELECT chain_id FROM chains c
    WHERE identity = $identity AND (CAST($chain_id AS VARCHAR) IS NULL OR chain_id = {_CHAIN_ID})
          {_IN_RANGE}
), ev AS (
    SELECT l.event_id, l.chain_id, l.parent_id, l.refresh_class, l.interval_s, l.depth, l.forked,
           e.first_seen, e.notification_type, e.deliveries, e.access_token_fp, e.refresh_token_fp,
           e.old_refresh_token_fp
    FROM lineage l JOIN mine USING (chain_id) JOIN events e USING (event_id)
)
SELECT {text_sql('ev.event_id')} AS event_id, {short_sql('ev.event_id')} AS event,
       {text_sql('ev.chain_id')} AS chain_id, {short_sql('ev.chain_id')} AS chain,
       ev.first_seen AS time, ev.notification_type AS type, ev.deliveries,
       {short_sql('ev.access_token_fp')} AS access_fp, {short_sql('ev.refresh_token_fp')} AS refresh_fp,
       {short_sql('ev.old_refresh_token_fp')} AS old_refresh_fp,
       ev.refresh_class, ev.interval_s, ev.depth, ev.forked, {text_sql('ev.parent_id')} AS parent_id, {short_sql('ev.parent_id')} AS parent,
       p.first_seen AS parent_time
FROM ev LEFT JOIN ev p ON p.event_id = ev.parent_id
ORDER BY ev.first_seen NULLS LAST, ev.event_id
"""

_CHAIN_EVENTS = f"""
SELECT {text_sql('e.event_id')} AS event_id, {text_sql('l.parent_id')} AS parent_id, e.first_seen AS time, e.notification_type AS type, e.deliveries, l.depth,
       l.forked, l.refresh_class, l.interval_s,
       {short_sql('e.access_token_fp')} AS access_fp, {short_sql('e.refresh_token_fp')} AS refresh_fp,
       {short_sql('e.old_refresh_token_fp')} AS old_refresh_fp
FROM lineage l JOIN events e USING (event_id)
WHERE l.chain_id = {_CHAIN_ID}
ORDER BY e.first_seen NULLS LAST, e.event_id
"""

_FORKS = f"""
WITH mine AS (
    SELECT chain_id FROM chains c WHERE identity = $identity AND forks > 0 {_IN_RANGE}
)
SELECT {short_sql('l.chain_id')} AS chain, {short_sql('e.old_refresh_token_fp')} AS token_fp,
       min(e.first_seen) AS first_at, max(e.first_seen) AS last_at, count(*) AS presented
FROM (SELECT event_id, chain_id FROM lineage WHERE forked) l JOIN mine USING (chain_id) JOIN events e USING (event_id)
GROUP BY ALL ORDER BY first_at
"""

# Orphan chains that started one to two token lifetimes (plus slack) after one of the identity's chains
# ended, with the number of sessions (any identity) that ended in the same window before each orphan.
_CONTINUATIONS = f"""
WITH mine AS (
    SELECT chain_id, last_seen FROM chains c
    WHERE identity = $identity AND end_state IN ('ended', 'forced_relogin') AND last_seen IS NOT NULL {_IN_RANGE}
), cand AS (
    SELECT m.chain_id, m.last_seen, o.chain_id AS orphan_id, o.first_seen AS orphan_start, o.events AS orphan_events,
           o.span_s AS orphan_span_s
    FROM mine m JOIN chains o
      ON o.orphan AND o.first_seen > m.last_seen AND o.first_seen <= m.last_seen + to_seconds($window_s)
    -- an orphan within one token lifetime of the data's start has its parent before the data
    WHERE o.first_seen >= (SELECT min(received_at) FROM deliveries) + to_seconds($ttl)
    QUALIFY row_number() OVER (PARTITION BY m.chain_id ORDER BY o.first_seen) = 1
), rivals AS (
    SELECT c.orphan_id, count(*) - 1 AS other_sessions
    FROM (SELECT DISTINCT orphan_id, orphan_start FROM cand) c
    JOIN chains r ON NOT r.orphan AND r.end_state IN ('ended', 'forced_relogin')
                 AND r.last_seen < c.orphan_start AND r.last_seen >= c.orphan_start - to_seconds($window_s)
    GROUP BY c.orphan_id
)
SELECT {short_sql('c.chain_id')} AS chain, c.last_seen, {short_sql('c.orphan_id')} AS orphan_chain,
       c.orphan_start, c.orphan_events, c.orphan_span_s, coalesce(r.other_sessions, 0) AS other_sessions
FROM cand c LEFT JOIN rivals r USING (orphan_id)
ORDER BY c.orphan_start
"""


def _range(start, end) -> dict:
    return {"start": start, "end": end}


def refresh_ttl_s(store: Store) -> int:
    return int(store.get_meta("refresh_ttl_s", str(DEFAULT_REFRESH_TTL_S)) or DEFAULT_REFRESH_TTL_S)


def identity_options(
    store: Store, start: datetime | None, end: datetime | None, limit: int = 5000
) -> list[str]:
    """Identities with a chain starting in the range, alphabetically (at most `limit`)."""
    cur = store.cursor()
    return [r[0] for r in cur.execute(_OPTIONS, {**_range(start, end), "limit": int(limit)}).fetchall()]


def identity_overview(store: Store, identity: str) -> dict:
    """All of an identity's chains, whatever the range: chains, first_seen, last_seen, events."""
    cur = store.cursor()
    cur.execute(_IDENTITY_OVERVIEW, {"identity": identity})
    cols = [d[0] for d in cur.description]
    return dict(zip(cols, cur.fetchall()[0], strict=True))


def identity_chains(
    store: Store, identity: str, start: datetime | None, end: datetime | None
) -> pd.DataFrame:
    """The identity's chains starting in the range, oldest first, with the next chain's start (any time)."""
    cur = store.cursor()
    cur.execute(_CHAINS, {**_range(start, end), "identity": identity})
    return cur.df()


_CHAIN_BY_SHORT = f"""
SELECT {_CHAIN_COLUMNS}, NULL::TIMESTAMP AS next_start, NULL::VARCHAR AS next_chain, c.identity
FROM chains c WHERE {short_sql('c.chain_id')} = $short
ORDER BY c.chain_id LIMIT 1
"""


def chain_by_short(store: Store, short: str) -> pd.DataFrame:
    """The chain a short id (as pages show it) names, with its identity (None: an orphan chain), in the columns
    of `identity_chains`; no rows when there is none."""
    cur = store.cursor()
    cur.execute(_CHAIN_BY_SHORT, {"short": short})
    return cur.df()


def identity_events(
    store: Store, identity: str, start: datetime | None, end: datetime | None, chain_id: str | None = None
) -> pd.DataFrame:
    """Events of the identity's chains in the range (or of one of them), with short fingerprints."""
    cur = store.cursor()
    cur.execute(_EVENTS, {**_range(start, end), "identity": identity, "chain_id": chain_id})
    return cur.df()


def lineage_tree(store: Store, chain_id: str) -> pd.DataFrame:
    """One chain's events laid out as a tree: x = time, y = `lane` (0 = the main line).

    At each event, the child with the largest subtree continues its parent's lane (the session that went
    on); every other child (the losing side of a fork) opens a new lane below. Columns: event_id, parent_id,
    time, type, deliveries, depth, forked, refresh_class, interval_s, short fingerprints, lane, subtree.
    """
    cur = store.cursor()
    cur.execute(_CHAIN_EVENTS, {"chain_id": chain_id})
    df = cur.df()
    if df.empty:
        df["lane"] = pd.Series(dtype="int64")
        df["subtree"] = pd.Series(dtype="int64")
        return df
    ids = list(df["event_id"])
    order = {eid: i for i, eid in enumerate(ids)}  # time order (untimed last)
    children: dict[str, list[str]] = {eid: [] for eid in ids}
    roots = []
    for eid, parent in zip(df["event_id"], df["parent_id"], strict=True):
        if isinstance(parent, str) and parent in children:
            children[parent].append(eid)
        else:
            roots.append(eid)
    size: dict[str, int] = {}
    for eid in _postorder(roots, children):
        size[eid] = 1 + sum(size[c] for c in children[eid])
    lane: dict[str, int] = {}
    next_lane = 0
    stack = []
    for r in roots:
        lane[r] = next_lane
        next_lane += 1
        stack.append(r)
    while stack:
        eid = stack.pop()
        kids = sorted(children[eid], key=lambda c: (-size[c], order[c]))
        for i, c in enumerate(kids):
            if i == 0:
                lane[c] = lane[eid]
            else:
                lane[c] = next_lane
                next_lane += 1
        stack.extend(reversed(kids))
    df["lane"] = [lane[e] for e in ids]
    df["subtree"] = [size[e] for e in ids]
    return df


def _postorder(roots: list[str], children: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    stack = [(r, False) for r in roots]
    while stack:
        eid, done = stack.pop()
        if done:
            out.append(eid)
            continue
        stack.append((eid, True))
        stack.extend((c, False) for c in children[eid])
    return out


def fmt_count(n: int) -> str:
    return f"{int(n):,}"


def _ts(value) -> str:
    return (
        "an unknown time" if value is None or pd.isna(value) else f"{pd.Timestamp(value):%Y-%m-%d %H:%M} UTC"
    )


def identity_detail(store: Store, identity: str, start: datetime | None, end: datetime | None) -> dict:
    """Everything the drill-down shows for one identity in the range, each query run once.

    Returns {"overview", "chains", "events", "findings", "ttl_s"}: see `identity_overview`,
    `identity_chains`, `identity_events` (all chains) and `session_findings`.
    """
    chains = identity_chains(store, identity, start, end)
    events = identity_events(store, identity, start, end)
    return {
        "overview": identity_overview(store, identity),
        "chains": chains,
        "events": events,
        "findings": session_findings(store, identity, start, end, chains=chains, events=events),
        "ttl_s": access_ttl_s(store),
    }


def session_findings(
    store: Store,
    identity: str,
    start: datetime | None,
    end: datetime | None,
    *,
    chains: pd.DataFrame | None = None,
    events: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """What the data says about why this identity's sessions dropped, newest first.

    Columns: time, chain, kind (forced_relogin | orphan_guess | fork | late_refresh | ended | active),
    severity (bad | warn | info | ok), text (one plain sentence or two), rivals (orphan guesses only: how many
    other sessions ended in the same window; the fewer, the better the guess). `chains` and `events` may be passed
    in when the caller has them already (`identity_chains`, `identity_events` for the same arguments).
    """
    ttl = access_ttl_s(store)
    rttl = refresh_ttl_s(store)
    if chains is None:
        chains = identity_chains(store, identity, start, end)
    if events is None:
        events = identity_events(store, identity, start, end)
    rows: list[dict] = []

    for c in chains.itertuples(index=False):
        if c.end_state == "forced_relogin" and not pd.isna(c.next_start):
            after = (pd.Timestamp(c.next_start) - pd.Timestamp(c.last_seen)).total_seconds()
            last = "the last refresh" if c.refreshes else "logging in"
            why = (
                "the app lost its tokens (storage cleared, a crash, a second device without them)"
                if after <= 2 * ttl
                else "the app dropped the session without using its refresh token (a logout that did not revoke "
                "it, storage cleared, or a new device)"
            )
            rows.append(
                {
                    "time": c.last_seen,
                    "chain": c.chain,
                    "kind": "forced_relogin",
                    "severity": "bad",
                    "text": f"Chain {c.chain} ended in a forced re-login at {_ts(c.last_seen)}: the user logged in "
                    f"again (chain {c.next_chain}) {duration_text(after)} after {last}, while its refresh "
                    f"token was still valid for {duration_text(rttl - after)}: {why}.",
                }
            )
        elif c.end_state == "active":
            rows.append(
                {
                    "time": c.last_seen,
                    "chain": c.chain,
                    "kind": "active",
                    "severity": "ok",
                    "text": f"Chain {c.chain} is still active: its last access token was issued at {_ts(c.last_seen)} "
                    "and is valid at the end of the data.",
                }
            )
        elif c.end_state == "ended":
            why = "its last refresh token was never presented"
            later = (
                f"; the user came back {duration_text((pd.Timestamp(c.next_start) - pd.Timestamp(c.last_seen)).total_seconds())} later"
                if not pd.isna(c.next_start)
                else ""
            )
            rows.append(
                {
                    "time": c.last_seen,
                    "chain": c.chain,
                    "kind": "ended",
                    "severity": "info",
                    "text": f"Chain {c.chain} ended at {_ts(c.last_seen)}: {why}{later}. The notifications do not "
                    "say why (a logout, an idle app, or a lost notification: see the continuations).",
                }
            )

    late = events[events["refresh_class"] == "late"]
    for e in late.itertuples(index=False):
        over = float(e.interval_s) - ttl
        rows.append(
            {
                "time": e.time,
                "chain": e.chain,
                "kind": "late_refresh",
                "severity": "warn",
                "text": f"The refresh at {_ts(e.time)} (chain {e.chain}) came {duration_text(over)} after the access "
                f"token expired (late refresh): the client held an expired token from "
                f"{_ts(pd.Timestamp(e.parent_time) + pd.Timedelta(seconds=ttl))}, or was idle.",
            }
        )

    cur = store.cursor()
    cur.execute(_FORKS, {**_range(start, end), "identity": identity})
    for f in cur.df().itertuples(index=False):
        apart = (pd.Timestamp(f.last_at) - pd.Timestamp(f.first_at)).total_seconds()
        rows.append(
            {
                "time": f.first_at,
                "chain": f.chain,
                "kind": "fork",
                "severity": "warn",
                "text": f"Chain {f.chain} forked at {_ts(f.first_at)}: the same refresh token ({f.token_fp}) was "
                f"presented {f.presented} times, {duration_text(apart)} apart: two app instances racing, or a "
                "replay (a stolen token).",
            }
        )

    cur.execute(
        _CONTINUATIONS,
        {
            **_range(start, end),
            "identity": identity,
            "window_s": float(2 * ttl + CONTINUATION_SLACK_S),
            "ttl": float(ttl),
        },
    )
    for o in cur.df().itertuples(index=False):
        after = (pd.Timestamp(o.orphan_start) - pd.Timestamp(o.last_seen)).total_seconds()
        if o.other_sessions == 0:
            how = "a guess by time, but no other session ended in that window"
        elif o.other_sessions <= STRONG_GUESS_RIVALS:
            how = (
                f"a guess by time: {o.other_sessions} other session{'s' if o.other_sessions > 1 else ''} ended "
                "in the same window"
            )
        else:
            how = (
                f"a weak guess by time: {fmt_count(o.other_sessions)} other sessions ended in the same window"
            )
        events = f"{o.orphan_events} event{'s' if o.orphan_events != 1 else ''}"
        rows.append(
            {
                "time": o.orphan_start,
                "chain": o.chain,
                "kind": "orphan_guess",
                "severity": "warn",
                "rivals": int(o.other_sessions),
                "text": f"Possible continuation ({how}): orphan chain {o.orphan_chain} ({events}) started at "
                f"{_ts(o.orphan_start)} with no parent, {duration_text(after)} after chain {o.chain} ended. If "
                "it is this session, the receiver missed the notification that continued it.",
            }
        )

    out = pd.DataFrame(rows, columns=["time", "chain", "kind", "severity", "text", "rivals"])
    if not out.empty:
        out["time"] = pd.to_datetime(out["time"])
        out = out.sort_values("time", ascending=False, kind="stable").reset_index(drop=True)
    return out
