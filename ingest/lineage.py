"""Rebuild token lineage from the events table, in SQL (DuckDB), as DOMAIN.md defines it.

* parent: a refresh event hangs under the event that issued its `old_refresh_token` (the earliest issuer,
  should a token ever be issued twice). A root is a `new` event or a refresh whose old token was never
  issued in the data (an orphan root).
* chain: the tree under a root. Every event's root is found by **pointer jumping** on dense integer ids:
  each round replaces an event's ancestor pointer by its ancestor's ancestor, so a chain of depth d resolves
  in ceil(log2 d) + 1 rounds of one hash join each, instead of d rounds of a recursive walk. Only unresolved
  rows do work in a round.
* cycles cannot happen with real tokens, but hostile or corrupt input can make two refreshes name each
  other's tokens. If a round resolves nothing, the rest is cycle-bound: each cycle is broken at its earliest
  event (which becomes an orphan root, flagged `cycle_broken`) and the jumping resumes. This fallback is
  the only Python loop here, and it only ever sees the events on such cycles.
* the full rebuild runs after every ingest inside its transaction, so a late parent adopts the orphan chain it
  explains and a new identity mapping labels the chains already stored.
"""

from __future__ import annotations

import time

from ingest.store import DEFAULT_REFRESH_TTL_S, set_meta

# Dense integer ids: joins on integers are several times cheaper than on 32-character fingerprints.
# Numbering needs no order: every tie-break below uses event_id, so results never depend on it.
_NUMBER_EVENTS = """
CREATE OR REPLACE TEMP TABLE tt_ev AS
SELECT row_number() OVER ()::INTEGER AS n, event_id, notification_type,
       refresh_token_fp, old_refresh_token_fp, auth_code_fp, first_seen, deliveries, identity
FROM events {scope}
"""

# The issuer of a refresh token: the earliest event that issued it (new before refresh on a tie, then
# event_id). An event that presents the token it issues cannot be its own parent. Tyk's refresh tokens are
# random, so in real data a token has exactly one issuer.
_LINK = """
CREATE OR REPLACE TEMP TABLE tt_link AS
WITH counted AS (
    SELECT refresh_token_fp AS fp, count(*) AS issuers, min(n) AS n FROM tt_ev
    WHERE refresh_token_fp IS NOT NULL AND refresh_token_fp IS DISTINCT FROM old_refresh_token_fp
    GROUP BY fp
), issuer AS (
    -- the cheap aggregate serves every token with one issuer; only the rare others pay for the ordering.
    -- (No shared CTE of the candidates: DuckDB would materialise all of them for the two readers.)
    SELECT fp, n FROM counted WHERE issuers = 1
    UNION ALL
    SELECT refresh_token_fp, arg_min(n, (coalesce(first_seen, TIMESTAMP '9999-12-31'), notification_type <> 'new', event_id))
    FROM tt_ev
    WHERE refresh_token_fp IN (SELECT fp FROM counted WHERE issuers > 1)
      AND refresh_token_fp IS DISTINCT FROM old_refresh_token_fp
    GROUP BY refresh_token_fp
)
SELECT e.n, i.n AS parent
FROM tt_ev e LEFT JOIN issuer i ON e.notification_type = 'refresh' AND i.fp = e.old_refresh_token_fp
"""

# Forked events: refresh events that present the same token as another refresh event. A token has one
# issuer, and that issuer issues one token, so the events presenting an issued token are exactly the issuer's
# children: counting children per parent (integers) finds them. Only tokens without an issuer (orphan roots)
# are grouped by fingerprint, and they are few. Computed before any cycle is cut, from the links as found.
_FORKED = """
CREATE OR REPLACE TEMP TABLE tt_orphan_roots AS
SELECT l.n FROM tt_link l JOIN tt_ev e ON e.n = l.n WHERE l.parent IS NULL AND e.notification_type = 'refresh';
CREATE OR REPLACE TEMP TABLE tt_forked AS
SELECT n FROM tt_link
WHERE parent IN (SELECT parent FROM tt_link WHERE parent IS NOT NULL GROUP BY parent HAVING count(*) >= 2)
UNION ALL
SELECT e.n FROM tt_ev e SEMI JOIN tt_orphan_roots o ON o.n = e.n
WHERE e.old_refresh_token_fp IN (
    -- counted over all events (`events`, which in a full rebuild is `tt_ev`): in an incremental update the other
    -- presenter of an unissued token may be the root of a chain that is not recomputed. Every presenter of a
    -- token without an issuer is an orphan root, so all refresh events presenting it are the ones to count.
    SELECT old_refresh_token_fp FROM {all_events}
    WHERE notification_type = 'refresh'
      AND old_refresh_token_fp IN (SELECT e2.old_refresh_token_fp FROM tt_ev e2 SEMI JOIN tt_orphan_roots o2 ON o2.n = e2.n)
    GROUP BY old_refresh_token_fp HAVING count(*) >= 2
)
"""

# Pointer jumping, incremental: `tt_res` holds resolved events (n -> root, depth); `tt_pend` the others,
# each pointing at an ancestor `anc` at distance `dist`. A round resolves every pending event whose ancestor
# is resolved and lets the rest jump to their ancestor's ancestor, so the pending set halves its distance
# to the roots each round and only it is ever joined.
_JUMP_START = """
CREATE OR REPLACE TEMP TABLE tt_res AS SELECT n, parent, n AS root, 0 AS depth FROM tt_link WHERE parent IS NULL;
CREATE OR REPLACE TEMP TABLE tt_pend AS
SELECT n, parent, parent AS anc, 1 AS dist FROM tt_link WHERE parent IS NOT NULL;
"""

# The parent rides along, so that `tt_res` alone says everything about an event's place in its chain.
_JUMP_ROUND = """
INSERT INTO tt_res SELECT p.n, p.parent, r.root, p.dist + r.depth FROM tt_pend p JOIN tt_res r ON r.n = p.anc;
CREATE OR REPLACE TEMP TABLE tt_pend AS
SELECT p.n, p.parent, q.anc, p.dist + q.dist AS dist FROM tt_pend p JOIN tt_pend q ON q.n = p.anc;
"""

# Everything per event, on integer keys (kept narrow: the ingest transaction holds it until COMMIT);
# `lineage` and `chains` are both derived from it without joining
# on fingerprints again.
_MEMBERS = """
CREATE OR REPLACE TEMP TABLE tt_member AS
SELECT e.n, j.root, j.parent, j.depth::INTEGER AS depth, e.notification_type = 'refresh' AS is_refresh,
       e.first_seen, e.deliveries, e.event_id, p.event_id AS parent_id,
       date_diff('microsecond', p.first_seen, e.first_seen) / 1e6 AS interval_s,
       e.n IN (SELECT n FROM tt_forked) AS forked
FROM tt_ev e
JOIN tt_res j ON j.n = e.n
LEFT JOIN tt_ev p ON p.n = j.parent
"""

_LINEAGE = """
CREATE OR REPLACE {target} AS
SELECT m.event_id, m.parent_id, r.event_id AS chain_id, m.depth, m.interval_s,
       CASE WHEN m.interval_s IS NULL THEN NULL
            WHEN m.interval_s > $ttl THEN 'late'
            WHEN m.interval_s < $ttl / 2 THEN 'early'
            ELSE 'on_time' END AS refresh_class,
       m.forked
FROM tt_member m
JOIN tt_ev r ON r.n = m.root
"""

_CHAINS = """
CREATE OR REPLACE {target} AS
WITH fork_counts AS (
    -- apart from the main aggregate: a DISTINCT there would group every event by (root, token)
    SELECT m.root, count(DISTINCT e.old_refresh_token_fp)::INTEGER AS forks
    FROM tt_member m JOIN tt_ev e ON e.n = m.n WHERE m.forked GROUP BY m.root
), agg AS (
    SELECT root, count(*)::INTEGER AS events, sum(deliveries)::INTEGER AS deliveries,
           count(*) FILTER (is_refresh)::INTEGER AS refreshes,
           count(*) FILTER (interval_s > $ttl)::INTEGER AS late_refreshes,
           count(*) FILTER (interval_s < $ttl / 2)::INTEGER AS early_refreshes,
           count(*) FILTER (first_seen IS NULL)::INTEGER AS untimed_events,
           min(first_seen) AS first_seen, max(first_seen) AS last_seen,
           -- the last event in time (an untimed event has no place in time); its refresh token is fetched below
           arg_max(n, (first_seen, event_id)) FILTER (first_seen IS NOT NULL) AS last_n
    FROM tt_member GROUP BY root
), base AS (
    SELECT a.*, coalesce(f.forks, 0) AS forks, l.last_refresh_fp, r.event_id AS chain_id,
           r.notification_type AS root_type,
           r.notification_type = 'refresh' AS orphan,
           CASE WHEN r.notification_type = 'refresh' THEN r.old_refresh_token_fp END AS unknown_parent_fp,
           CASE WHEN r.notification_type = 'new' THEN coalesce(r.identity, m.identity) END AS identity,
           r.event_id IN (SELECT event_id FROM tt_cycle_roots) AS cycle_broken,
           date_diff('microsecond', a.first_seen, a.last_seen) / 1e6 AS span_s
    FROM agg a JOIN tt_ev r ON r.n = a.root LEFT JOIN fork_counts f ON f.root = a.root
    LEFT JOIN (SELECT n, refresh_token_fp AS last_refresh_fp FROM tt_ev) l ON l.n = a.last_n
    LEFT JOIN (SELECT auth_code_fp, any_value(identity) AS identity FROM identity_map GROUP BY 1) m
        ON m.auth_code_fp = r.auth_code_fp
), relogin AS (
    -- the identity's next chain, started after this one's last event
    SELECT c.chain_id, d.first_seen AS next_start
    FROM base c ASOF JOIN base d ON c.identity = d.identity AND d.first_seen > c.last_seen
    WHERE c.identity IS NOT NULL
)
SELECT b.chain_id, b.orphan OR b.cycle_broken AS orphan, b.root_type, b.identity, b.first_seen, b.last_seen,
       b.events, b.deliveries, b.refreshes, b.forks, b.late_refreshes, b.early_refreshes, b.untimed_events,
       b.span_s, b.span_s + $ttl AS lifetime_s,
       CASE WHEN b.last_refresh_fp IS NOT NULL AND r.next_start < b.last_seen + to_seconds($refresh_ttl)
                 AND b.last_refresh_fp NOT IN (SELECT old_refresh_token_fp FROM events
                                               WHERE old_refresh_token_fp IS NOT NULL)
                THEN 'forced_relogin'
            WHEN b.last_seen IS NULL THEN 'untimed'
            WHEN b.last_seen + to_seconds($ttl) >= $as_of::TIMESTAMP THEN 'active'
            ELSE 'ended' END AS end_state,
       b.unknown_parent_fp, b.cycle_broken
FROM base b LEFT JOIN relogin r USING (chain_id)
"""


def rebuild(cur, *, access_ttl_s: int = 3600, refresh_ttl_s: int = DEFAULT_REFRESH_TTL_S) -> dict:
    """Recompute `lineage` and `chains` from `events` (inside the caller's transaction). Returns stats."""
    return _build(cur, access_ttl_s, refresh_ttl_s, scoped=False)


# The events whose chains a batch of changed events (`tt_changed`) can alter: the changed events; the events
# they link to through a token (the issuer of the token they present, the events presenting a token they issue
# -- orphan roots they adopt --, the events presenting the same token -- forks); every event of those events'
# chains; and every chain of the identities involved (one chain's end state depends on the identity's next
# chain). Chains are closed under links, so recomputing whole chains from these events alone is exact.
_TOUCHED = """
CREATE OR REPLACE TEMP TABLE tt_touched AS
WITH n AS MATERIALIZED (SELECT * FROM events WHERE event_id IN (SELECT event_id FROM tt_changed)),
linked AS (  -- one scan of the events
    SELECT event_id FROM events
    WHERE event_id IN (SELECT event_id FROM n)
       OR refresh_token_fp IN (SELECT old_refresh_token_fp FROM n)
       OR old_refresh_token_fp IN (SELECT refresh_token_fp FROM n UNION SELECT old_refresh_token_fp FROM n)
), hit AS (
    SELECT DISTINCT chain_id FROM lineage WHERE event_id IN (SELECT event_id FROM linked)
), who AS (
    SELECT identity FROM chains WHERE chain_id IN (SELECT chain_id FROM hit) AND identity IS NOT NULL
    UNION SELECT identity FROM n WHERE identity IS NOT NULL
    UNION SELECT m.identity FROM identity_map m JOIN n ON m.auth_code_fp = n.auth_code_fp
), old_chains AS (
    SELECT chain_id FROM hit
    UNION SELECT chain_id FROM chains WHERE identity IN (SELECT identity FROM who)
)
SELECT event_id FROM lineage WHERE chain_id IN (SELECT chain_id FROM old_chains)
UNION SELECT event_id FROM linked
"""


# Above this share of all events, recomputing everything is as cheap as finding what to recompute.
FULL_REBUILD_SHARE = 0.25


def update(cur, *, access_ttl_s: int = 3600, refresh_ttl_s: int = DEFAULT_REFRESH_TTL_S) -> dict:
    """Bring `lineage` and `chains` up to date after the events listed in the temp table `tt_changed` were added
    or changed, recomputing only the chains they can affect (the live follower's small, frequent batches).
    Falls back to `rebuild` when more than `FULL_REBUILD_SHARE` of all events are affected. Same results as `rebuild`
    (tests/test_properties.py compares them)."""
    cur.execute(_TOUCHED)
    touched, total = cur.execute(
        "SELECT (SELECT count(*) FROM tt_touched), (SELECT count(*) FROM events)"
    ).fetchall()[0]
    if not total or touched > FULL_REBUILD_SHARE * total:
        cur.execute("DROP TABLE IF EXISTS tt_touched")
        return dict(rebuild(cur, access_ttl_s=access_ttl_s, refresh_ttl_s=refresh_ttl_s), scoped=False)
    stats = _build(cur, access_ttl_s, refresh_ttl_s, scoped=True)
    for sql in (
        "DELETE FROM chains WHERE chain_id IN "
        "(SELECT chain_id FROM lineage WHERE event_id IN (SELECT event_id FROM tt_touched))",
        "DELETE FROM lineage WHERE event_id IN (SELECT event_id FROM tt_touched)",
        "INSERT INTO lineage SELECT * FROM tt_lineage_new",
        "INSERT INTO chains SELECT * FROM tt_chains_new",
        "DROP TABLE tt_lineage_new",
        "DROP TABLE tt_chains_new",
        "DROP TABLE tt_touched",
    ):
        cur.execute(sql)
    # time moved on for every other chain too: a session past its last access token's lifetime has ended
    cur.execute(
        "UPDATE chains SET end_state = 'ended' WHERE end_state = 'active' AND last_seen + to_seconds($ttl) < $as_of",
        {"ttl": float(access_ttl_s), "as_of": _as_of(cur)},
    )
    return dict(stats, scoped=True, touched_events=touched)


def _as_of(cur):
    return cur.execute("SELECT max(first_seen) FROM events").fetchall()[0][0]


def _build(cur, access_ttl_s: int, refresh_ttl_s: int, *, scoped: bool) -> dict:
    t0 = time.perf_counter()
    cur.execute(_NUMBER_EVENTS.format(scope="WHERE event_id IN (SELECT event_id FROM tt_touched)" if scoped else ""))
    cur.execute(_LINK)
    cur.execute(_FORKED.format(all_events="events" if scoped else "tt_ev"))
    cur.execute("CREATE OR REPLACE TEMP TABLE tt_cycle_roots (event_id VARCHAR)")
    rounds = _resolve(cur)
    assigned = time.perf_counter() - t0  # every event has its chain: the connected-components part
    as_of = _as_of(cur)
    params = {"ttl": float(access_ttl_s), "refresh_ttl": float(refresh_ttl_s), "as_of": as_of}
    cur.execute(_MEMBERS)
    for t in ("tt_link", "tt_res", "tt_pend"):  # free memory for the two big tables below
        cur.execute(f"DROP TABLE IF EXISTS {t}")
    cur.execute(_LINEAGE.format(target="TEMP TABLE tt_lineage_new" if scoped else "TABLE lineage"),
                {"ttl": float(access_ttl_s)})
    cur.execute(_CHAINS.format(target="TEMP TABLE tt_chains_new" if scoped else "TABLE chains"), params)
    set_meta(cur, "as_of", as_of.isoformat() if as_of else None)
    cycles = cur.execute("SELECT count(*) FROM tt_cycle_roots").fetchall()[0][0]
    for t in ("tt_ev", "tt_link", "tt_res", "tt_pend", "tt_member", "tt_forked", "tt_orphan_roots", "tt_cycle_roots"):
        cur.execute(f"DROP TABLE IF EXISTS {t}")
    return {"rounds": rounds, "cycles_broken": cycles, "chain_assignment_s": assigned,
            "tables_s": time.perf_counter() - t0 - assigned}


def _resolve(cur) -> int:
    rounds = 0
    cur.execute(_JUMP_START)
    pending = cur.execute("SELECT count(*) FROM tt_pend").fetchall()[0][0]
    while pending:
        resolved_before = cur.execute("SELECT count(*) FROM tt_res").fetchall()[0][0]
        cur.execute(_JUMP_ROUND)
        rounds += 1
        resolved = cur.execute("SELECT count(*) FROM tt_res").fetchall()[0][0] - resolved_before
        cur.execute("DELETE FROM tt_pend WHERE n IN (SELECT n FROM tt_res)")
        pending = cur.execute("SELECT count(*) FROM tt_pend").fetchall()[0][0]
        if pending and not resolved and rounds > 1:
            _break_cycles(cur)  # nothing resolved: what is left hangs on cycles
            cur.execute(_JUMP_START)
            pending = cur.execute("SELECT count(*) FROM tt_pend").fetchall()[0][0]
    return rounds


def _break_cycles(cur) -> None:
    """Cut each parent cycle at its earliest event. Sees only the unresolved events (those on or under cycles)."""
    rows = cur.execute(
        """
        SELECT l.n, l.parent, e.first_seen, e.event_id
        FROM tt_link l JOIN tt_ev e USING (n) WHERE l.n NOT IN (SELECT n FROM tt_res)
        """
    ).fetchall()
    parent = {n: p for n, p, _, _ in rows}
    order = {n: (t is None, t, eid) for n, _, t, eid in rows}
    state: dict[int, int] = {}  # 1 = on the current walk, 2 = finished
    cuts = []
    for start in parent:
        walk = []
        n = start
        while n in parent and state.get(n) is None:
            state[n] = 1
            walk.append(n)
            n = parent[n]
        if n in parent and state.get(n) == 1:
            cycle = walk[walk.index(n) :]
            cuts.append(min(cycle, key=lambda m: order[m]))
        for m in walk:
            state[m] = 2
    if not cuts:  # cannot happen: unresolved rows always hang on a cycle; avoid looping forever regardless
        cuts = [min(parent, key=lambda m: order[m])]
    cur.executemany("UPDATE tt_link SET parent = NULL WHERE n = ?", [(c,) for c in cuts])
    cur.executemany(
        "INSERT INTO tt_cycle_roots SELECT event_id FROM tt_ev WHERE n = ?", [(c,) for c in cuts]
    )
