"""Property tests of the lineage invariants (hypothesis): whatever the notifications, the chains hold together."""

from __future__ import annotations

import io
import random
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.pipeline import ingest
from ingest.store import Store
from queries.summary import summary
from tests.helpers import body, chains_by_label, jsonl, record

REFRESH_POOL = [f"R{i}" for i in range(8)]  # a small pool: links, forks and even cycles happen


@st.composite
def notifications(draw):
    """Random notifications over a small token pool: links, forks, orphans, retries, untimed records and cycles.

    Each refresh token is issued at most once (Tyk's are random), but may be presented any number of times.
    Times are distinct minutes or missing.
    """
    n = draw(st.integers(1, 14))
    issued = draw(st.permutations(REFRESH_POOL))
    minutes = draw(st.lists(st.integers(0, 600), min_size=n, max_size=n, unique=True))
    records = []
    for i in range(n):
        kind = draw(st.sampled_from(["new", "refresh", "refresh"]))
        refresh = issued[i] if i < len(issued) and draw(st.booleans()) else ""
        old = draw(st.sampled_from(REFRESH_POOL)) if kind == "refresh" else ""
        minute = None if draw(st.integers(0, 5)) == 0 else minutes[i]
        at = None if minute is None else f"2026-12-03T{minute // 60:02d}:{minute % 60:02d}:00Z"
        b = body(kind, f"T{i}", refresh, old, code=f"A{i}" if kind == "new" else "")
        records.append(record(at, b, user_id=f"u{i % 3}") if kind == "new" else record(at, b))
        if at and draw(st.integers(0, 4)) == 0:  # a Tyk retry of the same body 10 s later
            records.append(record(at.replace(":00Z", ":10Z"), b))
    return records


def _ingest_all(records, parts: int, seed: int) -> tuple[dict, list[dict], Store, tempfile.TemporaryDirectory]:
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    tmp = tempfile.TemporaryDirectory()
    store = Store.open(":memory:")
    size = max(1, -(-len(shuffled) // parts))
    for k in range(0, len(shuffled), size):
        ingest(store, [(f"part{k}.jsonl", io.BytesIO(jsonl(shuffled[k : k + size])))])
    labels = [r["body"]["new_oauth_token"] for r in records]
    return summary(store), chains_by_label(store, labels), store, tmp


PROPERTY = settings(max_examples=int(__import__("os").environ.get("TT_EXAMPLES", 40)), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(notifications())
def test_each_event_in_exactly_one_chain_and_chains_are_roots(records):
    _, _, store, tmp = _ingest_all(records, 1, 0)
    with tmp:
        cur = store.cursor()
        events, in_lineage, distinct, unchained = cur.execute(
            "SELECT (SELECT count(*) FROM events), count(*), count(DISTINCT event_id), "
            "count(*) FILTER (chain_id IS NULL OR chain_id NOT IN (SELECT chain_id FROM chains)) FROM lineage"
        ).fetchall()[0]
        assert events == in_lineage == distinct and unchained == 0
        roots, chains = cur.execute(
            "SELECT (SELECT count(*) FROM lineage WHERE parent_id IS NULL), (SELECT count(*) FROM chains)"
        ).fetchall()[0]
        assert roots == chains
        # a chain's root is its own chain, and every parent lies in the same chain as its child
        bad = cur.execute(
            "SELECT count(*) FROM lineage c JOIN lineage p ON p.event_id = c.parent_id WHERE p.chain_id <> c.chain_id"
        ).fetchall()[0][0]
        assert bad == 0
        store.close()


@PROPERTY
@given(notifications(), st.integers(0, 1000), st.integers(2, 4))
def test_ingest_order_and_splitting_do_not_change_the_result(records, seed, parts):
    one = _ingest_all(records, 1, 0)
    many = _ingest_all(records, parts, seed)
    for _, _, store, tmp in (one, many):
        store.close()
        tmp.cleanup()
    assert one[0] == many[0]
    # Which event of a cycle becomes its root may follow the (per-database) key on ties; membership may not.
    assert _partition(one[1]) == _partition(many[1])
    assert [c for c in one[1] if not c["cycle_broken"]] == [c for c in many[1] if not c["cycle_broken"]]


def _partition(chains: list[dict]) -> list[list[str]]:
    return sorted(sorted(c["events"]) for c in chains)


@PROPERTY
@given(notifications())
def test_reingesting_changes_nothing(records):
    first = _ingest_all(records, 1, 0)
    _, chains_before, store, tmp = first
    with tmp:
        before = summary(store)
        ingest(store, [("again.jsonl", io.BytesIO(jsonl(records)))])
        assert summary(store) == before
        assert chains_by_label(store, [r["body"]["new_oauth_token"] for r in records]) == chains_before
        store.close()


@PROPERTY
@given(notifications(), st.integers(0, 1000), st.integers(2, 5))
def test_incremental_lineage_equals_a_full_rebuild(records, seed, parts):
    """The live follower's incremental update (only the chains new events can affect) leaves exactly the
    tables a full rebuild makes, batch after batch: late parents, forks, cycles, identities, end states."""
    from ingest import lineage

    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    size = max(1, -(-len(shuffled) // parts))
    store = Store.open(":memory:")
    scoped_runs = []
    build, share = lineage._build, lineage.FULL_REBUILD_SHARE
    lineage.FULL_REBUILD_SHARE = 1.01  # always take the scoped path, however small the store

    def spy(cur, ttl, refresh_ttl, *, scoped):
        scoped_runs.append(scoped)
        return build(cur, ttl, refresh_ttl, scoped=scoped)

    lineage._build = spy
    try:
        for k in range(0, len(shuffled), size):
            ingest(store, [(f"part{k}.jsonl", io.BytesIO(jsonl(shuffled[k : k + size])))], incremental=True)
    finally:
        lineage._build, lineage.FULL_REBUILD_SHARE = build, share
    assert all(scoped_runs) and scoped_runs
    cur = store.cursor()
    tables = ("SELECT * FROM lineage ORDER BY event_id", "SELECT * FROM chains ORDER BY chain_id")
    incremental = [cur.execute(q).fetchall() for q in tables]
    with store.transaction() as tx:
        lineage.rebuild(tx, access_ttl_s=3600)
    full = [cur.execute(q).fetchall() for q in tables]
    store.close()
    assert incremental[0] == full[0]
    assert incremental[1] == full[1]


@PROPERTY
@given(notifications(), st.integers(0, 1000), st.integers(1, 3))
def test_pointer_jumping_by_joins_equals_jumping_on_lists(records, seed, parts):
    """Stores too large for the lists jump by joins instead (`lineage.LIST_JUMP_MAX_EVENTS`): the same tables,
    cycles included."""
    from ingest import lineage

    _, _, store, tmp = _ingest_all(records, parts, seed)
    with tmp:
        cur = store.cursor()
        tables = ("SELECT * FROM lineage ORDER BY event_id", "SELECT * FROM chains ORDER BY chain_id")
        with_lists = [cur.execute(q).fetchall() for q in tables]
        limit = lineage.LIST_JUMP_MAX_EVENTS
        lineage.LIST_JUMP_MAX_EVENTS = 0
        try:
            with store.transaction() as tx:
                lineage.rebuild(tx, access_ttl_s=3600)
        finally:
            lineage.LIST_JUMP_MAX_EVENTS = limit
        with_joins = [cur.execute(q).fetchall() for q in tables]
        store.close()
        assert with_joins[0] == with_lists[0]
        assert with_joins[1] == with_lists[1]
