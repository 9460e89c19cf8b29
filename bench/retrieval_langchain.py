"""langchain-postgres PGVector on the same data and queries, driven by bench/retrieval.py.

Runs in its own venv (SLUICE_BENCH_VENV, default .bench-venv/: langchain-postgres 0.0.19), so it imports
nothing from Sluice.

    --load ADMIN_CONNINFO TENANT  copy the tenant's chunks from sluice_bench into PGVector (db sluice_langchain)
                              and build an HNSW index with the same parameters (m=16, ef_construction=200)
                              and the same rows into a PGVectorStore table (langchain_postgres.v2) with its
                              hybrid-search tsvector column (GIN) and HNSW: the hybrid peer
    --serve ADMIN_CONNINFO TENANT Q  read "CASE I [TEXT]" lines on stdin, time the search for query I, answer
                              "ms rows id,id,..." (ids = Sluice chunk ids); CASE hybrid = PGVectorStore's
                              hybrid search (dense + ts_rank_cd over plainto_tsquery(TEXT), RRF), else
                              PGVector.similarity_search
"""

from __future__ import annotations

import sys
import time

import numpy as np
import psycopg
from langchain_core.embeddings import Embeddings
from langchain_postgres import Column, PGEngine, PGVector, PGVectorStore
from langchain_postgres.v2.hybrid_search_config import HybridSearchConfig, reciprocal_rank_fusion
from langchain_postgres.v2.indexes import HNSWIndex, HNSWQueryOptions
from psycopg.conninfo import make_conninfo
from sqlalchemy import create_engine, event
from sqlalchemy.pool import QueuePool

DB = "sluice_langchain"
COLLECTION = "bench"
HYBRID_TABLE = "lc_hybrid"
CANDIDATES = 50  # rows each ranker gives the fusion: Sluice's `candidates` default
FILTERS = {"dense": None, "filtered_1pct": {"pct": {"$eq": 7}}, "filtered_0.1pct": {"permille": {"$eq": 7}}}


def near_queries(vectors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Same as bench.synthetic.near_queries (kept in step by hand: this venv cannot import Sluice)."""
    picks = vectors[rng.integers(0, len(vectors), size=n)]
    v = picks + rng.standard_normal(picks.shape).astype(np.float32) * (0.8 / np.sqrt(picks.shape[1]))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class QueryTable(Embeddings):
    """Embeddings whose queries are 'q<i>' keys into precomputed vectors (documents come pre-embedded)."""

    def __init__(self, queries: np.ndarray):
        self.queries = queries

    def embed_query(self, text: str) -> list[float]:
        return self.queries[int(text[1:])].tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise RuntimeError("documents are added with precomputed embeddings")


def _store(admin: str, queries: np.ndarray, ef_search: int = 100) -> PGVector:
    conninfo = make_conninfo(admin, dbname=DB)
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo), poolclass=QueuePool)

    @event.listens_for(engine, "connect")
    def _ef(dbapi_conn, _record):  # same ef_search as Sluice's default config, for a like-for-like recall
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET hnsw.ef_search = {int(ef_search)}")
        dbapi_conn.commit()

    return PGVector(QueryTable(queries), connection=engine, embedding_length=384, collection_name=COLLECTION)


def hybrid_config(text: str = "") -> HybridSearchConfig:
    """PGVectorStore's hybrid search as Sluice's hybrid-rrf: 50 candidates per ranker, RRF with k = 60."""
    return HybridSearchConfig(
        tsv_column="content_tsv",
        fts_query=text,
        fusion_function=reciprocal_rank_fusion,
        fusion_function_parameters={"rrf_k": 60},
        primary_top_k=CANDIDATES,
        secondary_top_k=CANDIDATES,
    )


def _engine(admin: str) -> PGEngine:
    conninfo = make_conninfo(admin, dbname=DB)
    return PGEngine.from_connection_string(
        "postgresql+psycopg://", async_creator=lambda: psycopg.AsyncConnection.connect(conninfo)
    )


def _hybrid_store(engine: PGEngine, queries: np.ndarray) -> PGVectorStore:
    return PGVectorStore.create_sync(
        engine,
        QueryTable(queries),
        HYBRID_TABLE,
        index_query_options=HNSWQueryOptions(ef_search=100),  # as Sluice's default config
        hybrid_search_config=hybrid_config(),
    )


def load_hybrid(admin: str) -> None:
    """PGVectorStore's own table (id, content, embedding, content_tsv, metadata) from the PGVector rows."""
    engine = _engine(admin)
    engine.init_vectorstore_table(
        HYBRID_TABLE,
        384,
        id_column=Column("langchain_id", "TEXT", nullable=False),
        overwrite_existing=True,
        hybrid_search_config=hybrid_config(),
    )
    t0 = time.perf_counter()
    with psycopg.connect(make_conninfo(admin, dbname=DB)) as conn:
        # The tsvector PGVectorStore writes on insert: to_tsvector('pg_catalog.english', content).
        conn.execute(
            f"INSERT INTO {HYBRID_TABLE} (langchain_id, content, embedding, content_tsv, langchain_metadata) "  # noqa: S608
            "SELECT id, document, embedding, to_tsvector('pg_catalog.english', document), cmetadata::json "
            "FROM langchain_pg_embedding"
        )
    store = _hybrid_store(engine, np.zeros((1, 384), dtype=np.float32))
    store.apply_vector_index(HNSWIndex(m=16, ef_construction=200))
    store.apply_hybrid_search_index()  # GIN on content_tsv
    with psycopg.connect(make_conninfo(admin, dbname=DB), autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {HYBRID_TABLE}")
    print(f"built PGVectorStore's hybrid table in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def _source(admin: str, tenant: str):
    with psycopg.connect(make_conninfo(admin, dbname="sluice_bench")) as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        return conn.execute(
            "SELECT c.chunk_id, c.text, d.metadata, c.embedding FROM chunks c JOIN documents d USING (document_id) "
            "WHERE c.tenant_id = %s ORDER BY c.chunk_id",
            (tenant,),
        ).fetchall()


def load(admin: str, tenant: str) -> None:
    with psycopg.connect(make_conninfo(admin, dbname="postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone():
            conn.execute(f'CREATE DATABASE "{DB}"')
    rows = _source(admin, tenant)
    _store(admin, np.zeros((1, 384), dtype=np.float32))  # creates PGVector's tables and the collection row
    t0 = time.perf_counter()
    # Rows go in by COPY into PGVector's own table (add_embeddings inserts ~100 rows/s here); the search
    # path under test, similarity_search, is untouched.
    with psycopg.connect(make_conninfo(admin, dbname=DB)) as conn:
        from pgvector.psycopg import register_vector
        from psycopg.types.json import Jsonb

        register_vector(conn)
        conn.execute("DROP INDEX IF EXISTS lc_hnsw")  # built after the load: far faster than row by row
        conn.execute("TRUNCATE langchain_pg_embedding")
        collection = conn.execute("SELECT uuid FROM langchain_pg_collection WHERE name = %s", (COLLECTION,)).fetchone()[
            0
        ]
        copy_sql = "COPY langchain_pg_embedding (id, collection_id, embedding, document, cmetadata) FROM STDIN"
        with conn.cursor().copy(copy_sql + " (FORMAT BINARY)") as copy:
            copy.set_types(["varchar", "uuid", "vector", "varchar", "jsonb"])
            for r in rows:
                copy.write_row((str(r[0]), collection, r[3], r[1], Jsonb(r[2])))
    with psycopg.connect(make_conninfo(admin, dbname=DB), autocommit=True) as conn:
        conn.execute(
            "CREATE INDEX IF NOT EXISTS lc_hnsw ON langchain_pg_embedding USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 200)"
        )
        conn.execute("ANALYZE langchain_pg_embedding")
    print(f"loaded {len(rows)} rows into PGVector in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    load_hybrid(admin)


def serve(admin: str, tenant: str, n_queries: int) -> None:
    rows = _source(admin, tenant)
    base = np.vstack([np.asarray(r[3], dtype=np.float32) for r in rows[:5000]])
    queries = near_queries(base, n_queries, np.random.default_rng(7))
    store = _store(admin, queries)
    hybrid = _hybrid_store(_engine(admin), queries)
    print("ready", flush=True)
    for line in sys.stdin:
        case, index, *words = line.split()
        t0 = time.perf_counter()
        if case == "hybrid":  # a fresh config per call: the search writes its fetch_top_k into it
            docs = hybrid.similarity_search(f"q{index}", k=10, hybrid_search_config=hybrid_config(" ".join(words)))
        else:
            docs = store.similarity_search(f"q{index}", k=10, filter=FILTERS[case])
        ms = (time.perf_counter() - t0) * 1000
        print(f"{ms:.3f} {len(docs)} {','.join(d.id or '' for d in docs)}", flush=True)


if __name__ == "__main__":
    mode, admin_conninfo, tenant = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "--load":
        load(admin_conninfo, tenant)
    else:
        serve(admin_conninfo, tenant, int(sys.argv[4]))
