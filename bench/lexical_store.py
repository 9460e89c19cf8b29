"""The store-side cost of BM25: writing covid_qa's chunks with the postings triggers vs the GIN index they replaced.

Before migration 0010 a chunk insert also updated a GIN index on `chunks.tsv`; since, statement
triggers write one posting row per (chunk, lexeme) and a statistics row instead. Both are timed in the
same run on database `sluice_storebench`, alternating: `gin` = the triggers disabled and the GIN index
re-created (the old write path), `postings` = the migrated schema. Each round stores every covid_qa
document (recursive 1000/150 chunks, random 384-d vectors: HNSW is maintained as in an ingest) through
`upsert_document` + `replace_chunks` into a fresh tenant, one transaction per document, as ingest does.
The model is not run: an ingest's whole time is this store plus parsing and the model (docs/benchmarks.md).

    SLUICE_DATASETS_DIR=... PYTHONPATH=$PWD .venv/bin/python bench/lexical_store.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import numpy as np
import psycopg

from bench.paths import dataset
from bench.synthetic import IDENTITY, SYNTHETIC, unit_vectors
from evals.gold import load_covid_qa
from sluice.db import Database, admin_conninfo, create_tenant, migrate
from sluice.settings import load_settings
from tasks.chunk import make_chunker
from tasks.ingest_text import text_document
from tasks.store import register_index, replace_chunks, upsert_document

TRIGGERS = ("chunks_lexical_insert", "chunks_lexical_update", "chunks_lexical_delete")


def use(admin: psycopg.Connection, schema: str) -> None:
    """Switch the write path: `gin` (before 0010) or `postings` (after)."""
    action = "DISABLE" if schema == "gin" else "ENABLE"
    for trigger in TRIGGERS:
        admin.execute(f"ALTER TABLE chunks {action} TRIGGER {trigger}")
    if schema == "gin":
        admin.execute("CREATE INDEX IF NOT EXISTS chunks_tsv ON chunks USING gin (tsv)")
    else:
        admin.execute("DROP INDEX IF EXISTS chunks_tsv")


def store_all(db: Database, docs, chunks: list) -> float:
    """Seconds to store every document's chunks into a fresh tenant, one transaction per document."""
    tenant = f"store-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    with db.tenant(tenant) as conn:
        register_index(conn, SYNTHETIC, IDENTITY)
    t0 = time.perf_counter()
    for n, (d, doc_chunks) in enumerate(zip(docs, chunks, strict=True)):
        with db.tenant(tenant) as conn:
            doc = text_document(d.source_id, d.text)
            document_id, _ = upsert_document(conn, doc, {})
            vectors = unit_vectors(len(doc_chunks), np.random.default_rng(n))
            replace_chunks(conn, document_id, SYNTHETIC.index_id, doc.content_hash, doc_chunks, vectors)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    docs, _ = load_covid_qa(dataset("covid_qa"))
    chunker = make_chunker(SYNTHETIC.chunker)
    chunks = [chunker.split(text_document(d.source_id, d.text)) for d in docs]
    settings = load_settings(db_name="sluice_storebench")
    migrate(settings)
    times: dict[str, list[float]] = {"gin": [], "postings": []}
    with Database(settings) as db, psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
        for _ in range(args.rounds):
            for schema in times:  # alternating, so both see the same load
                use(admin, schema)
                times[schema].append(store_all(db, docs, chunks))
        use(admin, "postings")
    n = sum(len(c) for c in chunks)
    out = {"documents": len(docs), "chunks": n, "seconds": times}
    out["postings_vs_gin_ratio"] = float(np.median(np.array(times["postings"]) / np.array(times["gin"])))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
