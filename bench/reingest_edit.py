"""Re-storing an edited document: every chunk deleted and inserted again (before) against only the changed ones.

Before, a document whose content changed lost all its chunks (`tasks.store.upsert_document`) and the new
ones were inserted: every row a new tuple in every index on `chunks`, an insert into the live HNSW graph,
and its BM25 postings written again. As shipped, the chunks of the index being stored are kept for
`replace_chunks`, which leaves a chunk alone when its offsets, text, metadata and vector are unchanged
(`tasks.store.UNCHANGED_KEPT`), and the postings trigger of migration 0023 re-posts an updated row only when
its text changed (0018's re-posted every updated row). Three variants, interleaved in rotated order: before
(delete, re-insert, 0018's trigger), unchanged chunks kept with 0018's trigger, and as shipped.

Per trial, a new document of `--chunks` synthetic chunks (random unit vectors) is stored under tenant
`bench-edit` in the synthetic index of database `sluice_bench`, whose live HNSW graph holds the rows that
`bench/retrieval.py --load-only` loaded (so each rewritten row is a graph insert, as in production), then
an edited version is stored, timed from the store to its commit. Two edits:
- `tail`: the last `--changed` fraction of the chunks get new text and vectors; the rest are identical.
- `shift`: the same, and every chunk after the first `--changed` fraction moves by 7 characters (an edit
  that changed the length of the text before them): same text and vector, new offsets.

    PYTHONPATH=$PWD .venv/bin/python bench/retrieval.py --n 100000 --load-only   # once
    PYTHONPATH=$PWD .venv/bin/python bench/reingest_edit.py [--chunks 400] [--changed 0.1] [--repeats 6]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import psycopg

from bench.synthetic import IDENTITY, SYNTHETIC, VOCAB, unit_vectors
from sluice.db import Database, admin_conninfo, create_tenant, migrate
from sluice.ddl import migration
from sluice.settings import load_settings
from tasks import store
from tasks.chunk import Chunk
from tasks.ingest_text import text_document

TENANT = "bench-edit"

VARIANTS = {  # name -> (the chunk upsert, the trigger, whether the store keeps the index's chunks for it)
    "delete and re-insert every chunk (before)": (
        store.UPSERT_CHUNKS.removesuffix(store.UNCHANGED_KEPT),
        "0018",
        False,
    ),
    "unchanged kept, 0018 trigger": (store.UPSERT_CHUNKS, "0018", True),
    "unchanged kept, 0023 trigger (as shipped)": (store.UPSERT_CHUNKS, "0023", True),
}
TRIGGERS = {revision: migration(revision).FUNCTION for revision in ("0018", "0023")}  # their `lexical_sync`


def texts(n: int, rng: np.random.Generator) -> list[str]:
    return [" ".join(VOCAB[j] for j in rng.integers(0, len(VOCAB), size=int(rng.integers(60, 140)))) for _ in range(n)]


def chunks_of(parts: list[str], shift_from: int | None = None) -> list[Chunk]:
    out, start = [], 0
    for i, part in enumerate(parts):
        if shift_from is not None and i == shift_from:
            start += 7
        out.append(Chunk(i, start, start + len(part), part))
        start += len(part) + 1
    return out


def store_doc(
    db: Database, source_id: str, parts: list[str], chunks: list[Chunk], vectors: np.ndarray, keep: bool
) -> float:
    """Store a version of the document as ingestion does; seconds from the store to its commit."""
    doc = text_document(source_id, "\n".join(parts))
    t0 = time.perf_counter()
    with db.tenant(TENANT) as conn:
        document_id, _ = store.upsert_document(conn, doc, {}, storing=SYNTHETIC.index_id if keep else None)
        store.replace_chunks(conn, document_id, SYNTHETIC.index_id, doc.content_hash, chunks, vectors)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=400)
    parser.add_argument("--changed", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    settings = load_settings(db_name="sluice_bench")
    migrate(settings)
    rng = np.random.default_rng(11)
    n, changed = args.chunks, max(1, round(args.chunks * args.changed))
    times: dict[str, dict[str, list[float]]] = {e: {v: [] for v in VARIANTS} for e in ("tail", "shift")}
    with Database(settings) as db, psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
        create_tenant(db, TENANT)
        with db.tenant(TENANT) as conn:
            store.register_index(conn, SYNTHETIC, IDENTITY)
        try:
            for r in range(args.repeats):
                for edit in ("tail", "shift"):
                    names = list(VARIANTS)[r % len(VARIANTS) :] + list(VARIANTS)[: r % len(VARIANTS)]
                    for name in names:
                        upsert, function, keep = VARIANTS[name]
                        store.UPSERT_CHUNKS = upsert
                        admin.execute(TRIGGERS[function])
                        parts, vectors = texts(n, rng), unit_vectors(n, rng)
                        source = f"edit-{r}-{edit}-{names.index(name)}-{os.getpid()}"
                        store_doc(db, source, parts, chunks_of(parts), vectors, keep)
                        new_parts = parts[: n - changed] + texts(changed, rng)
                        new_vectors = np.vstack([vectors[: n - changed], unit_vectors(changed, rng)])
                        shift = changed if edit == "shift" else None
                        seconds = store_doc(db, source, new_parts, chunks_of(new_parts, shift), new_vectors, keep)
                        times[edit][name].append(seconds)
                        print(f"{edit} / {name}: {seconds:.3f} s", flush=True)
        finally:
            admin.execute(TRIGGERS["0023"])
    print(json.dumps({"chunks": n, "changed": changed, "times": times}, indent=2))
    base = next(iter(VARIANTS))
    print(
        f"\n| edit ({n} chunks, {changed} changed) | "
        + " | ".join(f"{v}: s" for v in VARIANTS)
        + " | ÷ before (medians) |"
    )
    print("|---|" + "---|" * (len(VARIANTS) + 1))
    for edit, per in times.items():
        cells = [", ".join(f"{s:.2f}" for s in per[v]) for v in VARIANTS]
        ratios = " / ".join(f"{np.median(per[v]) / np.median(per[base]):.2f}×" for v in VARIANTS)
        print(f"| {edit} | " + " | ".join(cells) + f" | {ratios} |")


if __name__ == "__main__":
    main()
