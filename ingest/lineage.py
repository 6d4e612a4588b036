"""Rebuild token lineage from the events table, in SQL (DuckDB), as DOMAIN.md defines it.

* parent: a refresh event hangs under the event that issued its `old_refresh_token` (the earliest issuer,
  should a token ever be issued twice). A root is a `new` event or a refresh whose old token was never
  issued in the data (an orphan root).
* chain: the tree under a root. Every event's root is found by **pointer jumping** on dense integer ids:
  each round replaces an event's ancestor pointer by its ancestor's ancestor, so a chain of depth d resolves
  in ceil(log2 d) rounds instead of d rounds of a recursive walk. The pointers (with their distances) live in
  one DuckDB list indexed by event number, so a round is one vectorised pass (`list_transform`), not a join.
* cycles cannot happen with real tokens, but hostile or corrupt input can make two refreshes name each
  other's tokens. Pointers still unresolved after 2^k rounds with 2^k above the number of events hang on a
  cycle (no chain is that deep): each cycle is broken at its earliest event (which becomes an orphan root,
  flagged `cycle_broken`) and the jumping starts again. This fallback is the only Python loop here, and it
  only ever sees the events on such cycles.
* the full rebuild runs after every ingest inside its transaction, so a late parent adopts the orphan chain it
  explains and a new identity mapping labels the chains already stored.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from ingest.store import CHAINS_COLUMNS, DEFAULT_REFRESH_TTL_S, LINEAGE_COLUMNS, set_meta

# Dense integer ids: joins on integers are several times cheaper than on 12-character fingerprints, and they
# index the lists the pointer jumping works on. Numbering needs no order: every tie-break below uses event_id,
# so results never depend on it. A full rebuild numbers events by their row id when those form one unbroken
# range (events are only ever appended and updated in place: committed rows are 0..N-1, and a first load's rows,
# still uncommitted, are another unbroken range), through a view, so nothing is copied and the scans read only
# the columns they need. Otherwise (an upload into a store that has events: two ranges) and in an incremental
# update, the events are numbered in a copy.
_EVENT_COLUMNS = """event_id, notification_type = 'refresh' AS is_refresh,
       refresh_token_fp, old_refresh_token_fp, first_seen, deliveries"""
_NUMBER_BY_ROWID = (
    f"CREATE OR REPLACE TEMP VIEW tt_ev AS SELECT (rowid - {{base}} + 1)::INTEGER AS n, {_EVENT_COLUMNS} FROM events"
)
_NUMBER_EVENTS = f"""
CREATE OR REPLACE TEMP TABLE tt_ev AS
SELECT row_number() OVER ()::INTEGER AS n, {_EVENT_COLUMNS}
FROM events {{scope}}
"""

# Issuers of refresh tokens. An event that presents the token it issues cannot be its own parent.
_ISSUERS = """
SELECT n, event_id, first_seen, is_refresh, refresh_token_fp AS fp FROM tt_ev
WHERE refresh_token_fp IS NOT NULL AND refresh_token_fp IS DISTINCT FROM old_refresh_token_fp
"""

# Tyk's refresh tokens are random, so in real data a token has exactly one issuer and `_ISSUERS` joins each
# refresh to at most one parent. Only when that join finds a token issued twice (hostile or corrupt input)
# are the issuers narrowed to the earliest (new before refresh on a tie, then event_id): the aggregate this
# takes costs as much as the link itself, so real data does not pay for it.
_FIRST_ISSUERS = """
CREATE OR REPLACE TEMP TABLE tt_issuer AS
SELECT arg_min(n, (coalesce(first_seen, TIMESTAMP '9999-12-31'), is_refresh, event_id)) AS n,
       arg_min(event_id, (coalesce(first_seen, TIMESTAMP '9999-12-31'), is_refresh, event_id)) AS event_id,
       arg_min(first_seen, (coalesce(first_seen, TIMESTAMP '9999-12-31'), is_refresh, event_id)) AS first_seen,
       fp
FROM (""" + _ISSUERS + """) GROUP BY fp
"""

# One row per event with its parent: everything the lineage table needs except the chain, so the parent's
# id and time ride along from the join's build side instead of being joined again later.
_LINK = """
CREATE OR REPLACE TEMP TABLE tt_link AS
SELECT e.n, e.event_id, e.is_refresh, e.first_seen, e.deliveries, i.n AS parent, i.event_id AS parent_id,
       date_diff('microsecond', i.first_seen, e.first_seen) / 1e6 AS interval_s
FROM tt_ev e LEFT JOIN ({issuers}) i ON e.is_refresh AND i.fp = e.old_refresh_token_fp
"""

# Forked events: refresh events that present the same token as another refresh event. A token has one
# issuer, and that issuer issues one token, so the events presenting an issued token are exactly the issuer's
# children: counting children per parent (integers) finds them. Only tokens without an issuer (orphan roots)
# are grouped by fingerprint, and they are few. Computed before any cycle is cut, from the links as found.
_FORKED = """
CREATE OR REPLACE TEMP TABLE tt_orphan_roots AS
SELECT l.n, e.old_refresh_token_fp FROM tt_link l JOIN tt_ev e ON e.n = l.n WHERE l.parent IS NULL AND l.is_refresh;
CREATE OR REPLACE TEMP TABLE tt_forked AS
SELECT n FROM tt_link
WHERE parent IN (SELECT parent FROM tt_link WHERE parent IS NOT NULL GROUP BY parent HAVING count(*) >= 2)
UNION ALL
SELECT n FROM tt_orphan_roots
WHERE old_refresh_token_fp IN (
    -- counted over all events: in an incremental update the other presenter of an unissued token may be the
    -- root of a chain that is not recomputed. Every presenter of a token without an issuer is an orphan root,
    -- so all refresh events presenting it are the ones to count.
    SELECT old_refresh_token_fp FROM {presented}
    WHERE old_refresh_token_fp IN (SELECT old_refresh_token_fp FROM tt_orphan_roots)
    GROUP BY old_refresh_token_fp HAVING count(*) >= 2
)
"""

# Pointer jumping on a list indexed by n. Each entry packs an ancestor of event n (a root points at itself) and
# the distance to it: (dist << 32) + anc. A round replaces every ancestor by the ancestor's ancestor and adds up
# the distances, so a chain of depth d resolves in ceil(log2 d) rounds. A round is one pass over one flat BIGINT
# list inside one DuckDB expression (list_transform reading the list it transforms): no hash join, no per-event
# Python. With x = p[n] and a = x & 0xFFFFFFFF its ancestor, the new entry is (x's distance << 32) + p[a], which
# is x - a + p[a]: one lookup an entry. Packed, a round costs half of what two lists (ancestors, distances) cost:
# ~35 ms per million events (one thread: the list is one value), where the equivalent self-join takes 100-600 ms.
_LOW = 4294967295  # 0xFFFFFFFF: the ancestor's half of an entry
_ROUND = f"list_transform(p, lambda x: x - (x & {_LOW}) + p[x & {_LOW}])"

# Several rounds run in one statement, each a step of one projection, so only one new version of the list is
# written per statement. Inside the ingest's transaction every replaced version of a temp table stays in memory
# until the commit (it could still be rolled back): a statement per round pinned ~40 MB per round at 5M events,
# memory the rest of the rebuild then had to spill. Three rounds resolve chains up to 8 deep; two statements
# (six rounds) up to 64; a round costs ~0.17 s at 5M events.
ROUNDS_PER_STATEMENT = 3


def _list_rounds(first: str, k: int) -> str:
    """A SELECT of one row `p`: `first` (a SELECT of one row `p`) followed by k rounds."""
    steps = [f"r0 AS ({first})"] + [f"r{i} AS (SELECT {_ROUND} AS p FROM r{i - 1})" for i in range(1, k + 1)]
    return f"WITH {', '.join(steps)} SELECT p FROM r{k}"


# The first statement builds the list already packed: a root points at itself at distance 0, any other event at
# its parent at distance 1. (Packing in the aggregate saves a pass over the list and keeping an unpacked copy.)
_PACKED_PARENTS = """SELECT list(CASE WHEN parent IS NULL THEN n ELSE (1::BIGINT << 32) + parent END ORDER BY n) AS p
FROM tt_link"""
_JUMP_START = f"CREATE OR REPLACE TEMP TABLE tt_jump AS {_list_rounds(_PACKED_PARENTS, ROUNDS_PER_STATEMENT)}"
_JUMP_ROUND = f"CREATE OR REPLACE TEMP TABLE tt_jump AS {_list_rounds('SELECT p FROM tt_jump', ROUNDS_PER_STATEMENT)}"

# Whether a round is still needed, without looking at every pointer: after k rounds an event whose ancestor is
# not yet a root points 2^k steps up (distance 2^k), and a resolved one sits at its depth, at most 2^k. So once
# no distance reaches 2^k every event is resolved. The distance is the high half of an entry, so the largest
# entry holds the largest distance: one `list_max`, where checking each pointer's ancestor would cost half a
# round.
_MAY_BE_PENDING = "SELECT coalesce(list_max(p) >> 32, 0) >= {bound} FROM tt_jump"

# Back from the list to rows (n is the position). Joining this on n is cheaper than reading the list row by row
# in the big statements below, where DuckDB would carry the list along with every row.
_RESOLVED = f"""
CREATE OR REPLACE TEMP TABLE tt_res AS
SELECT n::INTEGER AS n, (x & {_LOW})::INTEGER AS root, (x >> 32)::INTEGER AS depth
FROM (SELECT generate_subscripts(p, 1) AS n, unnest(p) AS x FROM tt_jump);
DROP TABLE tt_jump;
"""

# Above this many events the lists would not fit the default 1 GB buffer pool beside the rest of a rebuild
# (25M events ran in 1.2 GB of RSS; 50M ran out of memory): the jumping then runs as joins, which DuckDB can
# spill to disk. `tt_res` holds resolved events, `tt_pend` the others, each pointing at an ancestor `anc` at
# distance `dist`; a round resolves the pending events whose ancestor is resolved and lets the rest jump to
# their ancestor's ancestor. Several times slower, but it finishes.
LIST_JUMP_MAX_EVENTS = 20_000_000

_JOIN_JUMP_START = """
CREATE OR REPLACE TEMP TABLE tt_res AS SELECT n, n AS root, 0 AS depth FROM tt_link WHERE parent IS NULL;
CREATE OR REPLACE TEMP TABLE tt_pend AS SELECT n, parent AS anc, 1 AS dist FROM tt_link WHERE parent IS NOT NULL;
"""

_JOIN_JUMP_ROUND = """
INSERT INTO tt_res SELECT p.n, r.root, p.dist + r.depth FROM tt_pend p JOIN tt_res r ON r.n = p.anc;
CREATE OR REPLACE TEMP TABLE tt_pend AS
SELECT p.n, q.anc, p.dist + q.dist AS dist FROM tt_pend p JOIN tt_pend q ON q.n = p.anc;
DELETE FROM tt_pend WHERE n IN (SELECT n FROM tt_res);
"""

_LINEAGE = """
SELECT l.event_id, l.parent_id, r.event_id AS chain_id, j.depth::INTEGER AS depth, l.interval_s,
       CASE WHEN l.interval_s IS NULL THEN NULL
            WHEN l.interval_s > $ttl THEN 'late'
            WHEN l.interval_s < $ttl / 2 THEN 'early'
            ELSE 'on_time' END AS refresh_class,
       l.n IN (SELECT n FROM tt_forked) AS forked
FROM tt_link l JOIN tt_res j ON j.n = l.n
JOIN (SELECT n, event_id FROM tt_link WHERE parent IS NULL) r ON r.n = j.root
"""

_CHAINS = """
WITH agg AS (
    SELECT j.root, count(*)::INTEGER AS events, sum(l.deliveries)::INTEGER AS deliveries,
           count(*) FILTER (l.is_refresh)::INTEGER AS refreshes,
           count(*) FILTER (l.interval_s > $ttl)::INTEGER AS late_refreshes,
           count(*) FILTER (l.interval_s < $ttl / 2)::INTEGER AS early_refreshes,
           count(*) FILTER (l.first_seen IS NULL)::INTEGER AS untimed_events,
           min(l.first_seen) AS first_seen, max(l.first_seen) AS last_seen,
           -- the last event in time (an untimed event has no place in time); its refresh token is fetched below
           arg_max(l.n, (l.first_seen, l.event_id)) FILTER (l.first_seen IS NOT NULL) AS last_n
    FROM tt_link l JOIN tt_res j ON j.n = l.n GROUP BY j.root
), fork_counts AS (
    SELECT j.root, count(DISTINCT e.old_refresh_token_fp)::INTEGER AS forks
    FROM tt_forked f JOIN tt_ev e ON e.n = f.n JOIN tt_res j ON j.n = f.n GROUP BY j.root
), roots AS (  -- the roots' own fields, from the events table (the roots are few)
    SELECT r.n, x.event_id, x.notification_type, x.old_refresh_token_fp, x.auth_code_fp, x.identity
    FROM tt_ev r JOIN events x ON x.event_id = r.event_id
    WHERE r.n IN (SELECT root FROM agg)
), base AS (
    SELECT a.*, coalesce(f.forks, 0) AS forks, l.refresh_token_fp AS last_refresh_fp, r.event_id AS chain_id,
           r.notification_type AS root_type,
           r.notification_type = 'refresh' AS orphan,
           CASE WHEN r.notification_type = 'refresh' THEN r.old_refresh_token_fp END AS unknown_parent_fp,
           CASE WHEN r.notification_type = 'new' THEN coalesce(r.identity, m.identity) END AS identity,
           r.event_id IN (SELECT event_id FROM tt_cycle_roots) AS cycle_broken,
           date_diff('microsecond', a.first_seen, a.last_seen) / 1e6 AS span_s
    FROM agg a JOIN roots r ON r.n = a.root LEFT JOIN fork_counts f ON f.root = a.root
    LEFT JOIN tt_ev l ON l.n = a.last_n
    LEFT JOIN (SELECT auth_code_fp, any_value(identity) AS identity FROM identity_map GROUP BY 1) m
        ON m.auth_code_fp = r.auth_code_fp
), known AS (  -- the chains of known identities: the ASOF join below sorts only these
    SELECT chain_id, identity, first_seen, last_seen FROM base WHERE identity IS NOT NULL AND first_seen IS NOT NULL
), relogin AS (
    -- the identity's next chain, started after this one's last event
    SELECT c.chain_id, d.first_seen AS next_start
    FROM known c ASOF JOIN known d ON c.identity = d.identity AND d.first_seen > c.last_seen
), candidate AS (  -- chains whose identity started again while their last refresh token was still valid
    SELECT b.chain_id, b.last_refresh_fp FROM base b JOIN relogin r USING (chain_id)
    WHERE b.last_refresh_fp IS NOT NULL AND r.next_start < b.last_seen + to_seconds($refresh_ttl)
), used AS (  -- ... and presented after all (by any event: the few candidates probe one column of them all)
    SELECT DISTINCT old_refresh_token_fp AS fp FROM events
    WHERE old_refresh_token_fp IN (SELECT last_refresh_fp FROM candidate)
)
SELECT b.chain_id, b.orphan OR b.cycle_broken AS orphan, b.root_type, b.identity, b.first_seen, b.last_seen,
       b.events, b.deliveries, b.refreshes, b.forks, b.late_refreshes, b.early_refreshes, b.untimed_events,
       b.span_s, b.span_s + $ttl AS lifetime_s,
       CASE WHEN b.chain_id IN (SELECT chain_id FROM candidate) AND b.last_refresh_fp NOT IN (SELECT fp FROM used)
                THEN 'forced_relogin'
            WHEN b.last_seen IS NULL THEN 'untimed'
            WHEN b.last_seen + to_seconds($ttl) >= $as_of::TIMESTAMP THEN 'active'
            ELSE 'ended' END AS end_state,
       b.unknown_parent_fp, b.cycle_broken
FROM base b
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
    dense = False
    if not scoped:
        low, high, count = cur.execute("SELECT min(rowid), max(rowid), count(*) FROM events").fetchall()[0]
        dense = count > 0 and high - low + 1 == count
    if dense:
        cur.execute(_NUMBER_BY_ROWID.format(base=int(low)))
    else:
        cur.execute(_NUMBER_EVENTS.format(scope="WHERE event_id IN (SELECT event_id FROM tt_touched)" if scoped else ""))
    cur.execute(_LINK.format(issuers=_ISSUERS))
    linked, events = cur.execute("SELECT (SELECT count(*) FROM tt_link), (SELECT count(*) FROM tt_ev)").fetchall()[0]
    if linked > events:  # some presented token was issued more than once: keep its earliest issuer only
        cur.execute(_FIRST_ISSUERS)
        cur.execute(_LINK.format(issuers="SELECT * FROM tt_issuer"))
        cur.execute("DROP TABLE tt_issuer")
    t_forks = time.perf_counter()  # fork statistics, not part of finding chains: timed apart
    presented = ("(SELECT old_refresh_token_fp FROM events WHERE notification_type = 'refresh')" if scoped
                 else "(SELECT old_refresh_token_fp FROM tt_ev WHERE is_refresh)")
    cur.execute(_FORKED.format(presented=presented))
    t_forks = time.perf_counter() - t_forks
    cur.execute("CREATE OR REPLACE TEMP TABLE tt_cycle_roots (event_id UHUGEINT)")
    rounds = _resolve(cur, _BY_JOINS if events > LIST_JUMP_MAX_EVENTS else _ON_LISTS, events)
    # every event has its chain: numbering, the issuer join and the pointer jumping are what networkx's
    # connected_components does (bench/ingest.py compares them)
    assigned = time.perf_counter() - t0 - t_forks
    as_of = _as_of(cur)
    params = {"ttl": float(access_ttl_s), "refresh_ttl": float(refresh_ttl_s), "as_of": as_of}
    _write(cur, "lineage", LINEAGE_COLUMNS, _LINEAGE, {"ttl": float(access_ttl_s)}, scoped=scoped)
    _write(cur, "chains", CHAINS_COLUMNS, _CHAINS, params, scoped=scoped)
    set_meta(cur, "as_of", as_of.isoformat() if as_of else None)
    cycles = cur.execute("SELECT count(*) FROM tt_cycle_roots").fetchall()[0][0]
    cur.execute("DROP VIEW IF EXISTS tt_ev" if dense else "DROP TABLE IF EXISTS tt_ev")
    for t in ("tt_link", "tt_res", "tt_forked", "tt_orphan_roots", "tt_cycle_roots"):
        cur.execute(f"DROP TABLE IF EXISTS {t}")
    return {"rounds": rounds, "cycles_broken": cycles, "chain_assignment_s": assigned, "forks_s": t_forks,
            "tables_s": time.perf_counter() - t0 - assigned - t_forks}


def _write(cur, table: str, columns: str, select: str, params: dict, *, scoped: bool) -> None:
    """A full rebuild replaces `table` (declared with its per-column storage, which CREATE TABLE AS would not
    carry); a scoped one leaves the rows in the temp table tt_<table>_new for `update` to swap in."""
    if scoped:
        cur.execute(f"CREATE OR REPLACE TEMP TABLE tt_{table}_new AS {select}", params)
    else:
        cur.execute(f"CREATE OR REPLACE TABLE {table} ({columns})")
        cur.execute(f"INSERT INTO {table} BY NAME {select}", params)


class _Jumping(NamedTuple):
    """One way to run the pointer jumping: SQL to start; for one round; telling whether events may still be
    unresolved after k rounds (true or a count; `{bound}` is 2^k); naming the unresolved events (rows of
    `tt_link l`, for cutting cycles); and finishing with `tt_res` (n, root, depth)."""

    start: str
    round: str
    pending: str
    unresolved: str
    finish: str
    rounds_per_start: int = 0  # rounds `start` runs already
    rounds_per_round: int = 1  # rounds one `round` runs


_ON_LISTS = _Jumping(_JUMP_START, _JUMP_ROUND, _MAY_BE_PENDING,
                     f"tt_link l, tt_jump j, tt_link a WHERE a.n = (j.p[l.n] & {_LOW}) AND a.parent IS NOT NULL",
                     _RESOLVED,
                     ROUNDS_PER_STATEMENT, ROUNDS_PER_STATEMENT)
_BY_JOINS = _Jumping(_JOIN_JUMP_START, _JOIN_JUMP_ROUND, "SELECT count(*) FROM tt_pend",
                     "tt_link l WHERE l.n IN (SELECT n FROM tt_pend)", "DROP TABLE tt_pend")


def _resolve(cur, how: _Jumping, events: int) -> int:
    """Pointer jumping until every event's ancestor is a root; leaves `tt_res`. Returns the number of rounds."""
    cur.execute(how.start)
    rounds = since_start = how.rounds_per_start
    while cur.execute(how.pending.format(bound=2**since_start)).fetchall()[0][0]:
        # Pointers still moving after 2^k rounds with 2^k > events: no chain is that deep, so what is left hangs
        # on a cycle (or under one).
        if 2**since_start > events:
            _break_cycles(cur, how.unresolved)
            cur.execute(how.start)
            rounds += how.rounds_per_start
            since_start = how.rounds_per_start
            continue
        cur.execute(how.round)
        rounds += how.rounds_per_round
        since_start += how.rounds_per_round
    cur.execute(how.finish)
    return rounds


def _break_cycles(cur, unresolved: str) -> None:
    """Cut each parent cycle at its earliest event. Sees only the unresolved events (those on or under cycles),
    `unresolved` being their FROM ... WHERE over `tt_link l`."""
    rows = cur.execute(f"SELECT l.n, l.parent, l.first_seen, l.event_id FROM {unresolved}").fetchall()
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
    cur.executemany(
        "UPDATE tt_link SET parent = NULL, parent_id = NULL, interval_s = NULL WHERE n = ?", [(c,) for c in cuts]
    )
    cur.executemany(
        "INSERT INTO tt_cycle_roots SELECT event_id FROM tt_ev WHERE n = ?", [(c,) for c in cuts]
    )
