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

from ingest.store import DEFAULT_REFRESH_TTL_S, set_meta

_NUMBER_EVENTS = """
CREATE OR REPLACE TEMP TABLE tt_ev AS
SELECT row_number() OVER (ORDER BY event_id)::INTEGER AS n, event_id, notification_type,
       refresh_token_fp, old_refresh_token_fp, first_seen
FROM events
"""

# The issuer of a refresh token: the earliest event that issued it (new before refresh on a tie), never the
# presenting event itself. Tyk's refresh tokens are random, so a token has one issuer in real data.
_LINK = """
CREATE OR REPLACE TEMP TABLE tt_link AS
WITH issuers AS (
    SELECT refresh_token_fp AS fp, n,
           row_number() OVER (PARTITION BY refresh_token_fp
                              ORDER BY first_seen NULLS LAST, notification_type <> 'new', n) AS rank
    FROM tt_ev WHERE refresh_token_fp IS NOT NULL
    QUALIFY rank <= 2
)
SELECT e.n,
       CASE WHEN e.notification_type = 'refresh' THEN
           (SELECT i.n FROM issuers i WHERE i.fp = e.old_refresh_token_fp AND i.n <> e.n ORDER BY i.rank LIMIT 1)
       END AS parent
FROM tt_ev e
"""

_JUMP_START = """
CREATE OR REPLACE TEMP TABLE tt_jump AS
SELECT n, coalesce(parent, n) AS anc, (parent IS NOT NULL)::INTEGER AS dist, parent IS NULL AS done FROM tt_link
"""

# One round: an unresolved row takes its ancestor's ancestor; it is resolved once that ancestor is.
_JUMP_ROUND = """
CREATE OR REPLACE TEMP TABLE tt_jump AS
SELECT j.n,
       CASE WHEN j.done THEN j.anc ELSE k.anc END AS anc,
       CASE WHEN j.done THEN j.dist ELSE j.dist + k.dist END AS dist,
       j.done OR k.done AS done
FROM tt_jump j LEFT JOIN tt_jump k ON NOT j.done AND k.n = j.anc
"""

_LINEAGE = """
CREATE OR REPLACE TABLE lineage AS
WITH forks AS (
    SELECT old_refresh_token_fp FROM events WHERE notification_type = 'refresh'
    GROUP BY old_refresh_token_fp HAVING count(*) >= 2
)
SELECT e.event_id, p.event_id AS parent_id, r.event_id AS chain_id, j.dist::INTEGER AS depth,
       date_diff('microsecond', p.first_seen, e.first_seen) / 1e6 AS interval_s,
       CASE WHEN p.event_id IS NULL OR p.first_seen IS NULL OR e.first_seen IS NULL THEN NULL
            WHEN date_diff('microsecond', p.first_seen, e.first_seen) / 1e6 > $ttl THEN 'late'
            WHEN date_diff('microsecond', p.first_seen, e.first_seen) / 1e6 < $ttl / 2 THEN 'early'
            ELSE 'on_time' END AS refresh_class,
       e.notification_type = 'refresh' AND e.old_refresh_token_fp IN (SELECT old_refresh_token_fp FROM forks)
           AS forked
FROM tt_ev e
JOIN tt_jump j ON j.n = e.n
JOIN tt_link l ON l.n = e.n
LEFT JOIN tt_ev p ON p.n = l.parent
JOIN tt_ev r ON r.n = j.anc
"""

_CHAINS = """
CREATE OR REPLACE TABLE chains AS
WITH member AS (
    SELECT l.chain_id, l.refresh_class, l.forked, e.notification_type, e.first_seen, e.deliveries,
           e.refresh_token_fp, e.old_refresh_token_fp, e.event_id
    FROM lineage l JOIN events e USING (event_id)
), agg AS (
    SELECT chain_id, count(*)::INTEGER AS events, sum(deliveries)::INTEGER AS deliveries,
           count(*) FILTER (notification_type = 'refresh')::INTEGER AS refreshes,
           count(DISTINCT old_refresh_token_fp) FILTER (forked)::INTEGER AS forks,
           count(*) FILTER (refresh_class = 'late')::INTEGER AS late_refreshes,
           count(*) FILTER (refresh_class = 'early')::INTEGER AS early_refreshes,
           count(*) FILTER (first_seen IS NULL)::INTEGER AS untimed_events,
           min(first_seen) AS first_seen, max(first_seen) AS last_seen,
           arg_max(refresh_token_fp, (first_seen, event_id)) AS last_refresh_fp
    FROM member GROUP BY chain_id
), base AS (
    SELECT a.*, r.notification_type AS root_type,
           r.notification_type = 'refresh' AS orphan,
           CASE WHEN r.notification_type = 'refresh' THEN r.old_refresh_token_fp END AS unknown_parent_fp,
           CASE WHEN r.notification_type = 'new' THEN coalesce(r.identity, m.identity) END AS identity,
           r.event_id IN (SELECT event_id FROM tt_cycle_roots) AS cycle_broken,
           date_diff('microsecond', a.first_seen, a.last_seen) / 1e6 AS span_s
    FROM agg a JOIN events r ON r.event_id = a.chain_id
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
            WHEN b.last_seen + to_seconds($ttl) >= (SELECT max(first_seen) FROM events) THEN 'active'
            ELSE 'ended' END AS end_state,
       b.unknown_parent_fp, b.cycle_broken
FROM base b LEFT JOIN relogin r USING (chain_id)
"""


def rebuild(cur, *, access_ttl_s: int = 3600, refresh_ttl_s: int = DEFAULT_REFRESH_TTL_S) -> dict:
    """Recompute `lineage` and `chains` from `events` (inside the caller's transaction). Returns stats."""
    cur.execute(_NUMBER_EVENTS)
    cur.execute(_LINK)
    cur.execute("CREATE OR REPLACE TEMP TABLE tt_cycle_roots (event_id VARCHAR)")
    rounds = _resolve(cur)
    params = {"ttl": float(access_ttl_s), "refresh_ttl": float(refresh_ttl_s)}
    cur.execute(_LINEAGE, {"ttl": float(access_ttl_s)})
    cur.execute(_CHAINS, params)
    as_of = cur.execute("SELECT max(first_seen) FROM events").fetchall()[0][0]
    set_meta(cur, "as_of", as_of.isoformat() if as_of else None)
    cycles = cur.execute("SELECT count(*) FROM tt_cycle_roots").fetchall()[0][0]
    for t in ("tt_ev", "tt_link", "tt_jump", "tt_cycle_roots"):
        cur.execute(f"DROP TABLE IF EXISTS {t}")
    return {"rounds": rounds, "cycles_broken": cycles}


def _resolve(cur) -> int:
    rounds = 0
    while True:
        cur.execute(_JUMP_START)
        pending = cur.execute("SELECT count(*) FROM tt_jump WHERE NOT done").fetchall()[0][0]
        while pending:
            cur.execute(_JUMP_ROUND)
            rounds += 1
            still = cur.execute("SELECT count(*) FROM tt_jump WHERE NOT done").fetchall()[0][0]
            if still == pending:
                break  # nothing resolved this round: the rest hangs on cycles
            pending = still
        if not pending:
            return rounds
        _break_cycles(cur)


def _break_cycles(cur) -> None:
    """Cut each parent cycle at its earliest event. Sees only the unresolved events (those on or under cycles)."""
    rows = cur.execute(
        """
        SELECT l.n, l.parent, e.first_seen, e.event_id
        FROM tt_link l JOIN tt_jump j USING (n) JOIN tt_ev e USING (n) WHERE NOT j.done
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
