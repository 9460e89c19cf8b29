"""Bulk loads: rows first, then the index's HNSW graph in one parallel build, then the switch.

Storing a chunk into an index that already has its HNSW graph inserts it into the live graph, one
row at a time (~106 rows/s at 100k chunks). A bulk load (a first load into an index, a corpus for
`eval-retrieval`, a synthetic benchmark set) registers the index without its graph, stages and
inserts every row under the tenant's RLS in one transaction (`tasks.records`: COPY into a TEMP
table, then INSERT ... SELECT, since COPY into an RLS table is refused), and builds the graph
afterwards (`ensure_index_hnsw`, migration 0014) with parallel maintenance workers, then refreshes the
planner's statistics of the tables it wrote (`refresh_statistics`, migration 0024: a filter's estimated
matches pick its plan). Only then, in the build's transaction, may the index be activated: a reader
resolves the old index or the new one with every row, its graph and statistics that know its rows, never
a part of it.

When the index already has a graph (another tenant built it), rows go into it as before: correct,
just not faster; unless the load brings the tenant to Settings.own_graph_rows in the index, which gives it
a graph of its own (tasks/graph.py, migration 0022), built from its rows after they are in. While a graph
is being built, writes to `chunks` by other transactions wait (the build holds a SHARE lock on the table
until it commits); reads go on. The build itself waits a bounded time for that lock (tasks/graph.py):
when another transaction holds a write lock on `chunks` for longer, the graph is deferred
(`Graph.DEFERRED`), the rows are in and searched exactly, and the next ingest into the index (or
`sluice index build-graph`) builds it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psycopg

from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.errors import QueryError
from sluice.pgtune import machine_memory
from sluice.settings import GRAPH_LOCK_TIMEOUT_S, OWN_GRAPH_ROWS
from tasks.embed import EmbedderIdentity
from tasks.graph import Graph, bounded_wait, claim_own_graph, ensure_graph
from tasks.indexes import activate_index
from tasks.records import Record, store_records
from tasks.store import register_index

log = logging.getLogger(__name__)

# What pgvector keeps in memory per graph element (m = 16): the vector plus ~715 bytes of neighbour lists and
# header, measured (0.8.5: 2,251 bytes at 384-d on float32, "hnsw graph no longer fits into maintenance_work_mem
# after N tuples"), with a tenth more as margin. A graph that outgrows the memory goes on building on disk, ~5x
# slower per element (docs/benchmarks.md "Bulk load"): the old estimate (5.2 bytes per dimension, 1,997 at
# 384-d) sent the last ~11 % of a 100k-row build there. Graphs are built on halfvec (migration 0021): 2 bytes
# per dimension (measured: 1,483 bytes at 384-d, 972 at 128-d, 2,766 at 1,024-d). Below ~8 MB the build's
# memory also holds ~0.9 MB that is not the graph's (measured at 4.9 and 5.9 MB, on both types).
GRAPH_BYTES_PER_ELEMENT, GRAPH_BYTES_FIXED, GRAPH_MARGIN = 768, 1 << 20, 1.1
GRAPH_BYTES_PER_DIM = {"vector": 4, "halfvec": 2}
GRAPH_CAST = "halfvec"  # the type `ensure_index_hnsw` builds a graph on (migration 0021)
MIN_BUILD_MEMORY, MAX_BUILD_MEMORY = 64 << 20, 4 << 30  # 1M chunks at 384-d: ~1.6 GB on halfvec (2.5 on vector)


@dataclass(frozen=True)
class BulkResult:
    rows: int
    graph: Graph  # EXISTED: rows went into it one by one; DEFERRED: searched exactly until a later build

    @property
    def built(self) -> bool:
        """Whether this load built the graph."""
        return self.graph == Graph.BUILT


def has_vector_index(conn: psycopg.Connection, index_id: str) -> bool:
    """Whether the HNSW graph the calling tenant searches in the index exists: the one its tenants share
    (chunks_hnsw_<index_id>, migration 0014), or its own when it claimed one (migration 0022)."""
    return conn.execute("SELECT to_regclass(quote_ident(index_graph(%s))) IS NOT NULL", (index_id,)).fetchone()[0]


def index_dim(conn: psycopg.Connection, index_id: str) -> int:
    """The registered dimension of an index; QueryError naming the fix when it is not registered."""
    row = conn.execute("SELECT dim FROM indexes WHERE index_id = %s", (index_id,)).fetchone()
    if row is None:
        raise QueryError(f"index {index_id} is not registered: see `sluice index list --tenant <tenant>`")
    return row[0]


def graph_bytes(rows: int, dim: int, cast: str = GRAPH_CAST) -> int:
    """Memory (bytes) an HNSW build of `rows` vectors of `dim` components on `cast` needs to keep its whole graph."""
    return int(rows * (GRAPH_BYTES_PER_ELEMENT + dim * GRAPH_BYTES_PER_DIM[cast]) * GRAPH_MARGIN) + GRAPH_BYTES_FIXED


def build_memory(rows: int, dim: int, cast: str = GRAPH_CAST) -> int:
    """maintenance_work_mem (bytes) for a graph of `rows` vectors: all of it, within 64 MB and a quarter of
    this machine's memory (at most 4 GB)."""
    ceiling = min(MAX_BUILD_MEMORY, machine_memory() // 4)
    return max(MIN_BUILD_MEMORY, min(ceiling, graph_bytes(rows, dim, cast)))


def build_vector_index(
    conn: psycopg.Connection, index_id: str, rows: int, dim: int, lock_timeout_s: float = GRAPH_LOCK_TIMEOUT_S
) -> Graph:
    """Build the index's HNSW graph in the caller's transaction, with parallel workers, then refresh the
    planner's statistics of the rows loaded; each waits at most `lock_timeout_s` for its lock on `chunks`
    (tasks/graph.py)."""
    set_build_resources(conn, rows, dim)
    graph = ensure_graph(conn, index_id, lock_timeout_s)
    refresh_statistics(conn, rows, lock_timeout_s)
    return graph


def refresh_statistics(conn: psycopg.Connection, loaded: int, lock_timeout_s: float = GRAPH_LOCK_TIMEOUT_S) -> bool:
    """ANALYZE the tables a bulk load of `loaded` rows wrote when their statistics lag (migration 0024), in the
    caller's transaction: they commit with its graph. Returns whether it analyzed.

    ANALYZE's lock on a table conflicts with a graph build's, which the caller may hold: two tenants' builds
    ending together each wait for the other, and PostgreSQL ends one wait as a deadlock. That tenant, or one
    whose lock is not granted within `lock_timeout_s` (another build or maintenance holds it), leaves the
    statistics to the other analyze, which runs once it commits and samples its rows too, or to autovacuum;
    its load goes on and commits."""
    try:
        with bounded_wait(conn, lock_timeout_s):
            return conn.execute("SELECT refresh_statistics(%s)", (loaded,)).fetchone()[0]
    except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
        log.info(
            "planner statistics not refreshed after the load (%s: another transaction held their lock); the next "
            "analyze (another load's, or autovacuum's) refreshes them, and a filtered search may pick a slower "
            "plan until then",
            type(exc).__name__,
        )
        return False


def set_build_resources(conn: psycopg.Connection, rows: int, dim: int, cast: str = GRAPH_CAST) -> None:
    """For the caller's transaction: the memory of a graph of `rows` vectors and parallel build workers."""
    workers = max(0, min(4, (os.cpu_count() or 1) - 1))  # the leader builds too
    conn.execute(
        "SELECT set_config('maintenance_work_mem', %s, true), set_config('max_parallel_maintenance_workers', %s, true)",
        (f"{build_memory(rows, dim, cast) // 1024}kB", str(workers)),
    )


def ensure_vector_index(
    conn: psycopg.Connection,
    index_id: str,
    dim: int,
    lock_timeout_s: float = GRAPH_LOCK_TIMEOUT_S,
    own_graph_rows: int = OWN_GRAPH_ROWS,
) -> Graph:
    """Build the graph the calling tenant searches in the index from the rows it holds unless it exists
    (EXISTED, no lock taken on `chunks`): its own once its rows there reach `own_graph_rows`."""
    claim_own_graph(conn, index_id, 0, own_graph_rows)
    if has_vector_index(conn, index_id):
        return Graph.EXISTED
    rows = conn.execute("SELECT count(*) FROM chunks WHERE index_id = %s", (index_id,)).fetchone()[0]
    return build_vector_index(conn, index_id, rows, dim, lock_timeout_s)


def bulk_load_records(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    identity: EmbedderIdentity,
    records: list[Record],
    vectors: np.ndarray,
    activate: str | None = None,
    batch: int = 5000,
    on_batch: Callable[[int, int], None] | None = None,
    lock_timeout_s: float = GRAPH_LOCK_TIMEOUT_S,
    own_graph_rows: int = OWN_GRAPH_ROWS,
) -> BulkResult:
    """Load records (one chunk each) into the config's index, then build its graph and, given a
    collection name in `activate`, make the index serve it in the same transaction (also when the
    graph is deferred: its rows are all in, searched exactly until the graph is built).

    A tenant whose rows in the index reach `own_graph_rows` with these gets a graph of its own: claimed
    before the rows go in, so none of them is inserted into the graph the index's other tenants share."""
    with db.tenant(tenant) as conn:  # one transaction: the rows appear all at once
        register_index(conn, config, identity, vector_index=False)
        claim_own_graph(conn, config.index_id, len(records), own_graph_rows)
        rows = 0
        for start in range(0, len(records), batch):
            rows += store_records(conn, config.index_id, records[start : start + batch], vectors[start : start + batch])
            if on_batch:
                on_batch(start + len(records[start : start + batch]), len(records))
    with db.tenant(tenant) as conn:
        graph = build_vector_index(conn, config.index_id, rows, identity.dim, lock_timeout_s)
        if activate:
            activate_index(conn, config.index_id, activate)
    return BulkResult(rows, graph)
