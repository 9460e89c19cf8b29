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
"""

from __future__ import annotations

import logging
from enum import StrEnum

import psycopg

from sluice.settings import GRAPH_LOCK_TIMEOUT_S

log = logging.getLogger(__name__)


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


def ensure_graph(conn: psycopg.Connection, index_id: str, lock_timeout_s: float = GRAPH_LOCK_TIMEOUT_S) -> Graph:
    """Build the index's graph in the caller's transaction unless it exists, waiting at most `lock_timeout_s`
    for its locks; DEFERRED (logged, the caller's transaction intact) when they are not granted in time."""
    previous = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
    try:
        with conn.transaction():  # a savepoint: a lock not granted in time rolls back the build alone
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout_text(lock_timeout_s),))
            built = conn.execute("SELECT ensure_index_hnsw(%s)", (index_id,)).fetchone()[0]
            # The rest of the caller's transaction (a document's store, an activation) waits as it did before.
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (previous,))
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
