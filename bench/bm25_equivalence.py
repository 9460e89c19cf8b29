"""BM25 equivalence on the whole covid_qa set: Sluice's lexical top-10 against bm25s, and nDCG@10 of both.

Chunks every covid_qa document with the default chunker (recursive, 1000/150 characters) into tenant
`bm25-covid` of database `sluice_bench` (once; reused on later runs) through the ingest store path, with
random vectors (lexical search never reads them), then asks every covid_qa question. Baseline in the
same run: the lexical search Sluice had before BM25 (ts_rank_cd over an OR tsquery), nDCG@10 only.

    SLUICE_DATASETS_DIR=... PYTHONPATH=$PWD .venv/bin/python bench/bm25_equivalence.py [--k1 1.2] [--b 0.75]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import numpy as np

from bench.bm25_reference import TS_RANK, compare
from bench.paths import dataset
from bench.synthetic import IDENTITY, SYNTHETIC, unit_vectors
from evals.gold import load_covid_qa
from evals.metrics import RetrievedSpan, ndcg_at_k
from sluice.config import RetrievalConfig
from sluice.db import Database, create_tenant, migrate
from sluice.settings import load_settings
from tasks.chunk import make_chunker
from tasks.ingest_text import text_document
from tasks.store import register_index, replace_chunks, upsert_document

TENANT = "bm25-covid"
K = 10


def load(db: Database, docs) -> int:
    """Chunk and store every document unless the tenant holds them already; return the chunk count."""
    create_tenant(db, TENANT)
    chunker = make_chunker(SYNTHETIC.chunker)
    with db.tenant(TENANT) as conn:
        register_index(conn, SYNTHETIC, IDENTITY)
        if conn.execute("SELECT count(*) FROM documents").fetchone()[0] == len(docs):
            return conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        for n, d in enumerate(docs):
            doc = text_document(d.source_id, d.text)
            document_id, _ = upsert_document(conn, doc, {})
            chunks = chunker.split(doc)
            vectors = unit_vectors(len(chunks), np.random.default_rng(n))
            replace_chunks(conn, document_id, SYNTHETIC.index_id, doc.content_hash, chunks, vectors)
        return conn.execute("SELECT count(*) FROM chunks").fetchone()[0]


def ts_rank_ndcg(conn, items) -> float:
    """Mean nDCG@10 of the pre-BM25 lexical search over the items."""
    rows = conn.execute(
        "SELECT c.chunk_id, d.source_id, c.char_start, c.char_end FROM chunks c JOIN documents d USING (document_id)"
    ).fetchall()
    spans = {r[0]: RetrievedSpan(r[1], r[2], r[3]) for r in rows}
    scores = []
    for item in items:
        params = {"text": item.question, "index_id": SYNTHETIC.index_id, "k": K}
        ids = [r[0] for r in conn.execute(TS_RANK, params).fetchall()]
        scores.append(ndcg_at_k([spans[i] for i in ids], item, K))
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k1", type=float, default=1.2)
    parser.add_argument("--b", type=float, default=0.75)
    args = parser.parse_args()
    docs, items = load_covid_qa(dataset("covid_qa"))
    settings = load_settings(db_name="sluice_bench")
    migrate(settings)
    with Database(settings) as db:
        chunks = load(db, docs)
        config = RetrievalConfig(mode="lexical", k=K, k1=args.k1, b=args.b)
        t0 = time.perf_counter()
        with db.tenant(TENANT) as conn:
            result = compare(conn, SYNTHETIC.index_id, [], config, items)
            baseline = ts_rank_ndcg(conn, items)
    out = {"documents": len(docs), "chunks": chunks, "k1": args.k1, "b": args.b, **asdict(result)}
    out["ndcg_difference"] = result.ndcg_ours - result.ndcg_reference
    out["ndcg_ts_rank_baseline"] = baseline
    out["ndcg_vs_ts_rank_ratio"] = result.ndcg_ours / baseline if baseline else None
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
