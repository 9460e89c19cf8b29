"""Bulk loads: the graph is built after the rows, and a reader sees the old index or the new one, never a mix."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import psycopg

from bench.synthetic import DIM, make_records, new_space, unit_vectors
from sluice.config import PipelineConfig, RecursiveChunker, RetrievalConfig
from sluice.db import Database, admin_conninfo, create_tenant
from tasks import retrieve as R
from tasks.bulk import bulk_load_records, graph_bytes, has_vector_index
from tasks.indexes import active_index
from tasks.ingest import ingest_source
from tasks.records import store_records
from tasks.store import register_index
from tests.conftest import hnsw_plan
from tests.rollout_support import private_database

K = 10


def test_row_path_has_its_graph_before_any_row(db, new_tenant):
    tenant, (config, identity) = new_tenant("rows"), new_space("rows")
    with db.tenant(tenant) as conn:
        register_index(conn, config, identity)
        assert has_vector_index(conn, config.index_id)


def test_bulk_load_builds_the_graph_after_the_rows_and_search_uses_it(db, throwaway):
    tenant, (config, identity) = throwaway(f"bulk-{uuid.uuid4().hex[:8]}"), new_space("bulk")
    rng = np.random.default_rng(3)
    records, vectors = make_records(2000, rng, prefix=tenant), unit_vectors(2000, rng)
    seen = []

    def graph_during_load(done: int, total: int) -> None:
        with db.tenant(tenant) as conn:
            seen.append(has_vector_index(conn, config.index_id))

    result = bulk_load_records(db, tenant, config, identity, records, vectors, batch=500, on_batch=graph_during_load)
    assert (result.rows, result.built) == (2000, True)
    assert seen == [False] * 4  # no graph while rows were stored
    q = vectors[17]
    with db.tenant(tenant) as conn:
        plan = hnsw_plan(conn, config.index_id, q)
        hits = R.dense_search(conn, config.index_id, q, RetrievalConfig(k=K))
        exact = R.exact_search(conn, config.index_id, q, K)
    assert f"chunks_hnsw_{config.index_id}" in plan, plan
    assert hits[0].source_id == records[17].source_id
    assert len({h.chunk_id for h in hits} & {h.chunk_id for h in exact}) >= 9


class Reader(threading.Thread):
    """Polls the tenant's served index until stopped: (index id, its chunk count, prefixes of the top k)."""

    def __init__(self, db, tenant: str, q: np.ndarray):
        super().__init__(daemon=True)
        self.db, self.tenant, self.q = db, tenant, q
        self.seen: list[tuple[str, int, frozenset[str]]] = []
        self.polled = threading.Condition()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def poll(self) -> None:
        with self.db.tenant(self.tenant) as conn:
            index_id = active_index(conn, "default")
            count = conn.execute("SELECT count(*) FROM chunks WHERE index_id = %s", (index_id,)).fetchone()[0]
            hits = R.dense_search(conn, index_id, self.q, RetrievalConfig(k=K))
        with self.polled:
            self.seen.append((index_id, count, frozenset(h.source_id.split("-")[0] for h in hits)))
            self.polled.notify_all()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.poll()
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            with self.polled:
                self.polled.notify_all()

    def wait_for_poll(self) -> None:
        """Block until the reader has finished one more poll (so polls interleave with the load's steps)."""
        with self.polled:
            target = len(self.seen) + 1
            while len(self.seen) < target and self.error is None:
                self.polled.wait()


def test_a_reader_sees_the_old_index_or_the_new_never_a_mix(db, throwaway):
    tenant = throwaway(f"swap-{uuid.uuid4().hex[:8]}")
    rng = np.random.default_rng(5)
    (old, old_id), (new, new_id) = new_space("old"), new_space("new")
    old_records, new_records = make_records(300, rng, prefix="old"), make_records(3000, rng, prefix="new")
    old_vectors, new_vectors = unit_vectors(300, rng), unit_vectors(3000, rng)
    bulk_load_records(db, tenant, old, old_id, old_records, old_vectors, activate="default")
    reader = Reader(db, tenant, unit_vectors(1, rng)[0])
    reader.start()
    reader.wait_for_poll()
    try:
        bulk_load_records(
            db,
            tenant,
            new,
            new_id,
            new_records,
            new_vectors,
            activate="default",
            batch=500,
            on_batch=lambda done, total: reader.wait_for_poll(),
        )
        reader.wait_for_poll()
    finally:
        reader.stop.set()
        reader.join(timeout=60)
    assert reader.error is None, reader.error
    allowed = {(old.index_id, 300, frozenset({"old"})), (new.index_id, 3000, frozenset({"new"}))}
    assert set(reader.seen) <= allowed, set(reader.seen) - allowed
    assert reader.seen[0][0] == old.index_id and reader.seen[-1][0] == new.index_id
    assert len(reader.seen) >= 8  # one poll before, one per batch of 500 (6), one after


def _graph_oid(conn, index_id: str) -> int | None:
    return conn.execute("SELECT to_regclass(quote_ident(%s))::oid", (f"chunks_hnsw_{index_id}",)).fetchone()[0]


def test_a_first_ingest_builds_its_graph_once_after_its_rows(db, new_tenant, embedder, sample_corpus):
    tenant, later = new_tenant("first"), new_tenant("first-later")
    config = PipelineConfig(chunker=RecursiveChunker(chunk_size=613, chunk_overlap=61))  # an index no test has built
    graph_while_storing: list[bool] = []

    def on_file(item, outcome: str, chunks: int) -> None:
        with db.tenant(tenant) as conn:
            graph_while_storing.append(has_vector_index(conn, config.index_id))

    summary = ingest_source(db, tenant, config, embedder, sample_corpus, 10_000_000, on_file=on_file)
    assert summary.failed == 0 and summary.ingested == len(graph_while_storing) > 1, summary
    assert not any(graph_while_storing)  # every chunk was stored before the graph existed
    with db.tenant(tenant) as conn:
        built = _graph_oid(conn, config.index_id)
        chunks = conn.execute("SELECT text FROM chunks WHERE index_id = %s ORDER BY chunk_id", (config.index_id,))
        texts = [t for (t,) in chunks]
    assert built is not None and len(texts) == summary.chunks
    for text in texts[:: max(1, len(texts) // 5)]:  # a chunk's own text finds it, as the exact search does
        q = embedder.encode([text])[0]
        with db.tenant(tenant) as conn:
            hits = R.dense_search(conn, config.index_id, q, RetrievalConfig(k=K))
            exact = R.exact_search(conn, config.index_id, q, K)
        assert hits[0].text == text
        assert len({h.chunk_id for h in hits} & {h.chunk_id for h in exact}) >= K - 1
    # A second tenant's first ingest into the same index, and a re-ingest, go into that graph: not rebuilt.
    assert ingest_source(db, later, config, embedder, sample_corpus, 10_000_000).ingested == summary.ingested
    assert ingest_source(db, tenant, config, embedder, sample_corpus, 10_000_000).unchanged == summary.ingested
    with db.tenant(later) as conn:
        assert _graph_oid(conn, config.index_id) == built


def _build_notices(db, tenant: str, index_id: str, memory: int) -> list[str]:
    """Build the index's graph with `memory` bytes of maintenance_work_mem (rolled back); pgvector's notices."""
    notices: list[str] = []

    def handler(diagnostic) -> None:
        notices.append(diagnostic.message_primary or "")

    with db.pool.connection() as conn:
        conn.add_notice_handler(handler)
        try:
            with conn.transaction(force_rollback=True):
                conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant,))
                conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (f"{memory // 1024}kB",))
                assert conn.execute("SELECT ensure_index_hnsw(%s)", (index_id,)).fetchone()[0]
        finally:
            conn.remove_notice_handler(handler)
    return notices


def test_the_build_memory_holds_the_whole_graph(db, throwaway):
    """A graph that outgrows maintenance_work_mem goes on building on disk, several times slower."""
    tenant, (config, identity) = throwaway(f"graph-memory-{uuid.uuid4().hex[:8]}"), new_space("graph-memory")
    rng = np.random.default_rng(9)
    n = 3000
    with db.tenant(tenant) as conn:
        register_index(conn, config, identity, vector_index=False)
        store_records(conn, config.index_id, make_records(n, rng, prefix=tenant), unit_vectors(n, rng))
    fits = _build_notices(db, tenant, config.index_id, graph_bytes(n, DIM))
    assert not [m for m in fits if "no longer fits" in m], fits
    short = _build_notices(db, tenant, config.index_id, int(graph_bytes(n, DIM) * 0.75))  # the check can fail
    assert [m for m in short if "no longer fits" in m], short


STATS_TABLES = ["chunks", "documents", "lexical_postings"]


def test_a_bulk_load_commits_statistics_that_know_its_rows(db, throwaway, admin):
    """Migration 0024: the planner's statistics (whose estimate of a filter's matches picks its plan) know a
    bulk load's rows the moment its graph commits, not after autovacuum's next analyze."""
    tenant, (config, identity) = throwaway(f"stats-{uuid.uuid4().hex[:8]}"), new_space("stats")
    rng = np.random.default_rng(11)
    n = 3000
    started = admin.execute("SELECT clock_timestamp()").fetchone()[0]
    result = bulk_load_records(db, tenant, config, identity, make_records(n, rng, prefix=tenant), unit_vectors(n, rng))
    assert result.built
    analyzed = dict(
        admin.execute(
            "SELECT relname, last_analyze FROM pg_stat_user_tables WHERE relname = ANY(%s)", (STATS_TABLES,)
        ).fetchall()
    )
    assert all(analyzed[t] is not None and analyzed[t] >= started for t in STATS_TABLES), (analyzed, started)
    plan = admin.execute(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM chunks WHERE index_id = %s", (config.index_id,)
    ).fetchone()[0]
    assert n / 2 <= plan[0]["Plan"]["Plan Rows"] <= n * 2, plan  # the new index's rows, as the planner sees them


def test_a_first_load_into_a_never_analyzed_database_is_analyzed_however_small(settings):
    """A never-analyzed `chunks` estimates 1 match for every filter whatever its size. The graph build sets
    its row count (`reltuples`), so `refresh_statistics` asks whether anyone analyzed it: a first load of 40
    rows (under autovacuum's own threshold of 50) is analyzed; a second one, below 1,000 rows, is not."""
    own = private_database(settings, "sluice_first_stats_test")
    rng = np.random.default_rng(12)
    with Database(own) as sdb, psycopg.connect(admin_conninfo(own), autocommit=True) as admin:
        last = "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'chunks'"
        assert admin.execute(last).fetchone()[0] is None  # the premise: a database nobody analyzed
        for name in ("first", "second"):
            tenant, (config, identity) = f"stats-{name}", new_space(f"stats-{name}")
            create_tenant(sdb, tenant)
            records, vectors = make_records(40, rng, prefix=tenant), unit_vectors(40, rng)
            assert bulk_load_records(sdb, tenant, config, identity, records, vectors).built
            if name == "first":
                analyzed = admin.execute(last).fetchone()[0]
                assert analyzed is not None
        assert admin.execute(last).fetchone()[0] == analyzed  # 40 more rows: not due
