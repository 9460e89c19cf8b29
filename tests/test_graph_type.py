"""Graphs are built on halfvec (migration 0021); graphs built on vector before it are still searched."""

from __future__ import annotations

import uuid

import numpy as np
from psycopg import sql

from bench.synthetic import clustered_vectors, make_records, near_queries, new_space, unit_vectors
from sluice.config import RetrievalConfig
from tasks import retrieve as R
from tasks.bulk import bulk_load_records
from tasks.records import store_records
from tasks.store import register_index
from tests.conftest import hnsw_plan

K = 10


def search_against_exact(db, tenant: str, index_id: str, queries: np.ndarray) -> float:
    """Mean recall@K of `dense_search` against the float32 exact scan; each shared hit's score is the exact one."""
    recalls = []
    for q in queries:
        with db.tenant(tenant) as conn:
            hits = R.dense_search(conn, index_id, q, RetrievalConfig(k=K))
            exact = {h.chunk_id: h.score for h in R.exact_search(conn, index_id, q, K)}
        assert len(hits) == K
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for h in hits:  # the similarity returned is the stored float32 vector's, not the graph's halfvec
            assert h.chunk_id not in exact or abs(h.score - exact[h.chunk_id]) < 1e-6, (h.score, exact[h.chunk_id])
        recalls.append(len(exact.keys() & {h.chunk_id for h in hits}) / K)
    return float(np.mean(recalls))


def test_a_new_graph_is_halfvec_and_dense_search_uses_it(db, throwaway):
    tenant, (config, identity) = throwaway(f"halfvec-{uuid.uuid4().hex[:8]}"), new_space("halfvec", 384)
    rng = np.random.default_rng(21)
    vectors = clustered_vectors(3000, rng)
    result = bulk_load_records(db, tenant, config, identity, make_records(3000, rng, prefix=tenant), vectors)
    assert result.built
    with db.tenant(tenant) as conn:
        assert R.graph_beam(conn, config.index_id).cast == "halfvec"
        assert R.set_search_params(conn, 40, config.index_id).cast == "halfvec"
        assert f"chunks_hnsw_{config.index_id}" in hnsw_plan(conn, config.index_id, vectors[5])
        size = conn.execute(
            "SELECT pg_relation_size(to_regclass(quote_ident(%s)))", (f"chunks_hnsw_{config.index_id}",)
        ).fetchone()[0]
    # A float32 graph of these rows holds 3000 x 1,536 bytes of vectors alone (4.4 MB); halfvec about 1,500 B a row.
    assert size < 3000 * 1536, size
    assert search_against_exact(db, tenant, config.index_id, near_queries(vectors, 10, rng)) >= 0.95


def test_a_graph_built_on_vector_before_0021_is_still_used(db, admin, throwaway):
    tenant, (config, identity) = throwaway(f"vecgraph-{uuid.uuid4().hex[:8]}"), new_space("vecgraph", 384)
    rng = np.random.default_rng(22)
    vectors = clustered_vectors(2000, rng)
    with db.tenant(tenant) as conn:
        register_index(conn, config, identity, vector_index=False)
        store_records(conn, config.index_id, make_records(2000, rng, prefix=tenant), vectors)
    # 0020's statement, as a database migrated before 0021 has it.
    admin.execute(
        sql.SQL(
            "CREATE INDEX {} ON chunks USING hnsw ((embedding::vector(384)) vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 200) WHERE index_id = {} AND dim = 384"
        ).format(sql.Identifier(f"chunks_hnsw_{config.index_id}"), sql.Literal(config.index_id))
    )
    with db.tenant(tenant) as conn:
        assert R.graph_beam(conn, config.index_id).cast == "vector"
        assert f"chunks_hnsw_{config.index_id}" in hnsw_plan(conn, config.index_id, vectors[7])
    assert search_against_exact(db, tenant, config.index_id, near_queries(vectors, 10, rng)) >= 0.95


def test_a_3072_dimension_index_gets_a_graph(db, throwaway):
    """pgvector's HNSW takes vector up to 2,000 dimensions and halfvec up to 4,000 (hosted 3,072-d embeddings)."""
    tenant, (config, identity) = throwaway(f"wide-{uuid.uuid4().hex[:8]}"), new_space("wide", 3072)
    rng = np.random.default_rng(23)
    vectors = unit_vectors(400, rng, dim=3072)
    result = bulk_load_records(db, tenant, config, identity, make_records(400, rng, prefix=tenant), vectors)
    assert result.built
    with db.tenant(tenant) as conn:
        assert R.graph_beam(conn, config.index_id).cast == "halfvec"
        assert f"chunks_hnsw_{config.index_id}" in hnsw_plan(conn, config.index_id, vectors[3])
        hits = R.dense_search(conn, config.index_id, vectors[3], RetrievalConfig(k=K))
    assert hits[0].score > 0.9999, hits[0]  # the stored vector itself
