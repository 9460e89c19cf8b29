"""An index's HNSW graph build that waits a bounded time for its lock on `chunks`, and says what it did.

`ensure_index_hnsw` (migration 0014) runs CREATE INDEX on `chunks`, which takes a SHARE lock on the whole
table: it waits for every open write transaction on `chunks` (any tenant's long ingest, a connection idle in
a transaction), and while it waits every new writer of every tenant queues behind its request. Unbounded,
one stuck transaction froze all ingestion and the first ingest into an index never returned.

So the build waits at most `lock_timeout_s` (Settings.graph_build_lock_timeout_s), in a savepoint: when the
lock is not granted in time only the build is rolled back, the caller's transaction goes on, and the graph
is deferred. A deferred graph costs speed, not answers: dense search over an index without its graph sorts
every row of the tenant in it, exactly (tasks/retrieve.py). The next ingest into the index, a rollout to it
or `sluice index build-graph` tries again.

A tenant whose rows in an index reach Settings.own_graph_rows claims a graph of its own there
(`claim_own_graph`, migration 0022): its rows stored afterwards stay out of the shared graph, and its searches
read its own graph, whose beam needs no widening for other tenants' rows. `ensure_graph` builds whichever
of the two graphs the calling tenant searches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

import psycopg

from sluice.settings import GRAPH_LOCK_TIMEOUT_S

log = logging.getLogger(__name__)

# How long dropping a tenant's graph waits for its ACCESS EXCLUSIVE lock on chunks: every reader that comes
# meanwhile queues behind the request, so the wait is kept short (a miss is retried by the next drop or gc).
GRAPH_DROP_LOCK_TIMEOUT_S = 0.5


# The graph the calling tenant searches: its own when it claimed one, else the one its index's tenants share.
_ENSURE = "SELECT CASE WHEN own_graph(%(i)s) THEN ensure_tenant_hnsw(%(i)s) ELSE ensure_index_hnsw(%(i)s) END"


class Graph(StrEnum):
    """What a graph build did."""

    BUILT = "built"  # built now, from every row the index holds
    EXISTED = "existed"  # there already (an earlier run, or another tenant, built it)
    DEFERRED = "deferred"  # its lock was not granted in time: searched exactly until a later build


def lock_timeout_text(seconds: float) -> str:
    """`lock_timeout` in whole milliseconds, at least 1 (0 would mean no limit at all)."""
    return f"{max(1, round(seconds * 1000))}ms"


def deferred_fix(index_id: str, tenant: str = "<tenant>") -> str:
    """How a deferred graph gets built: the words every report of one (log, ingest summary, rollout) ends with."""
    return f"the next ingest into the index builds it, or run `sluice index build-graph {index_id} --tenant {tenant}`"


@contextmanager
def bounded_wait(conn: psycopg.Connection, seconds: float) -> Iterator[None]:
    """A savepoint whose statements wait at most `seconds` for a lock: past it they raise LockNotAvailable and
    the savepoint alone is rolled back. The rest of the caller's transaction (a document's store, an
    activation) waits as it did before."""
    previous = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
    with conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout_text(seconds),))
        yield
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (previous,))


def own_graph(conn: psycopg.Connection, index_id: str) -> bool:
    """Whether the calling tenant has claimed a graph of its own in `index_id`."""
    return conn.execute("SELECT own_graph(%s)", (index_id,)).fetchone()[0]


def index_rows(conn: psycopg.Connection, index_id: str) -> int:
    """The calling tenant's rows in `index_id` (lexical_stats, kept by the chunks trigger: no count of rows)."""
    row = conn.execute("SELECT chunks FROM lexical_stats WHERE index_id = %s", (index_id,)).fetchone()
    return row[0] if row else 0


def claim_own_graph(conn: psycopg.Connection, index_id: str, incoming: int, threshold: int) -> bool:
    """Claim a graph of its own in `index_id` for the calling tenant when the rows it holds there plus
    `incoming` reach `threshold` (Settings.own_graph_rows); return whether it has one claimed now.

    Rows stored after the claim (in its transaction too) go into the tenant's graph alone; those stored
    before it stay in the shared graph as well. Called before a bulk load and a rollout's build, and after
    an ingest.
    """
    if own_graph(conn, index_id):
        return True
    held = index_rows(conn, index_id)
    if held + incoming < threshold:
        return False
    conn.execute(
        "INSERT INTO tenant_graphs (tenant_id, index_id) VALUES (current_setting('app.tenant_id'), %s) "
        "ON CONFLICT DO NOTHING",
        (index_id,),
    )
    log.info(
        "index %s: the tenant's %s rows (%s incoming) get a graph of their own",
        index_id,
        held + incoming,
        incoming,
    )
    return True


def release_graphs(conn: psycopg.Connection, lock_timeout_s: float = GRAPH_DROP_LOCK_TIMEOUT_S) -> list[str]:
    """Drop the calling tenant's graphs of its own in the indexes where it holds no chunks now, and their
    claims; return those indexes. Those whose DROP INDEX waits over `lock_timeout_s` for its lock keep graph
    and claim (logged) until the next call.

    DROP INDEX locks all of `chunks`, every tenant's reads included, until the transaction ends: call this in
    a transaction of its own (`tasks.indexes.drop_indexes` does), so the lock is held for the drop alone, and
    readers queue behind a waiting drop for at most `lock_timeout_s`.
    """
    idle = conn.execute(
        "SELECT g.index_id FROM tenant_graphs g "
        "WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.index_id = g.index_id) ORDER BY g.index_id"
    ).fetchall()
    released = []
    for (index_id,) in idle:
        try:
            with bounded_wait(conn, lock_timeout_s):
                conn.execute("SELECT drop_tenant_hnsw(%s)", (index_id,))
        except psycopg.errors.LockNotAvailable:
            log.warning(
                "graph of its own in index %s kept: its DROP INDEX waited over %s s for the lock on chunks; "
                "the next `sluice index drop` or `sluice index gc` of the tenant drops it",
                index_id,
                lock_timeout_s,
            )
            continue
        released.append(index_id)
    return released


def ensure_graph(conn: psycopg.Connection, index_id: str, lock_timeout_s: float = GRAPH_LOCK_TIMEOUT_S) -> Graph:
    """Build the graph the calling tenant searches in `index_id` (its own, or the shared one) in the caller's
    transaction unless it exists, waiting at most `lock_timeout_s` for its locks; DEFERRED (logged, the
    caller's transaction intact) when they are not granted in time."""
    try:
        with bounded_wait(conn, lock_timeout_s):  # a lock not granted in time rolls back the build alone
            built = conn.execute(_ENSURE, {"i": index_id}).fetchone()[0]
    except psycopg.errors.LockNotAvailable:
        log.warning(
            "HNSW graph of index %s deferred: another transaction kept a lock on chunks (or was building this "
            "graph) for over %s s (SLUICE_GRAPH_BUILD_LOCK_TIMEOUT_S). Dense search on the index is an exact "
            "scan until the graph is built: %s",
            index_id,
            lock_timeout_s,
            deferred_fix(index_id),
        )
        return Graph.DEFERRED
    return Graph.BUILT if built else Graph.EXISTED
