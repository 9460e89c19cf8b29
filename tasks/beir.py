"""Retrieval quality on a BEIR-format dataset: load into a throwaway tenant, score each mode with ranx."""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sluice.config import PipelineConfig
from sluice.db import Database, create_tenant
from sluice.errors import SourceError
from tasks.bulk import build_vector_index
from tasks.embed import Embedder
from tasks.records import Record, store_records
from tasks.retrieve import retrieve
from tasks.store import register_index

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
# Reported row -> the retrieval settings it runs with (over the config's own retrieval section).
MODES: dict[str, dict[str, str]] = {
    "dense": {"mode": "dense"},
    "bm25": {"mode": "lexical"},
    "hybrid-rrf": {"mode": "hybrid", "fusion": "rrf"},
    "hybrid-convex": {"mode": "hybrid", "fusion": "convex"},
}
BATCH = 256  # documents embedded and stored per transaction; also how often progress is reported

# Told (stage, done, total) as the evaluation advances.
OnProgress = Callable[[str, int, int], None]


def _quiet(stage: str, done: int, total: int) -> None:
    """The default progress callback: report nothing."""


@dataclass(frozen=True)
class BeirDataset:
    corpus: dict[str, str]  # doc id -> title + " " + text
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise SourceError(f"BEIR file {str(path)!r} is missing: a BEIR folder has corpus.jsonl, queries.jsonl, qrels/")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SourceError(f"{path}:{n}: not valid JSON ({exc.msg}): fix or remove the line") from exc
    return rows


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise SourceError(f"BEIR qrels {str(path)!r} is missing: expected qrels/test.tsv")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            try:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
            except (KeyError, ValueError, TypeError) as exc:
                raise SourceError(f"{path}: rows need query-id, corpus-id and an integer score ({exc})") from exc
    return qrels


def load_beir(root: Path, split: str = "test") -> BeirDataset:
    """Read a BEIR folder; documents are title + " " + text; only queries with judgements are kept."""
    root = Path(root)
    corpus = {str(d["_id"]): f"{d.get('title', '')} {d.get('text', '')}".strip() for d in _jsonl(root / "corpus.jsonl")}
    qrels = _qrels(root / "qrels" / f"{split}.tsv")
    queries = {str(q["_id"]): q["text"] for q in _jsonl(root / "queries.jsonl") if str(q["_id"]) in qrels}
    if not corpus or not queries:
        raise SourceError(f"BEIR folder {str(root)!r} has no documents or no judged queries")
    return BeirDataset(corpus, queries, qrels)


def load_into_tenant(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    embedder: Embedder,
    data: BeirDataset,
    on_progress: OnProgress = _quiet,
) -> int:
    """Embed the corpus and store one chunk per document, then build the index's graph; return the chunks stored.

    A bulk load (`tasks.bulk`): the rows go in without a live HNSW graph, which is built once at the end
    (if another tenant already built it, rows go into it as they come).
    """
    ids = list(data.corpus)
    with db.tenant(tenant) as conn:
        register_index(conn, config, embedder.identity, vector_index=False)
    stored = 0
    on_progress("embedding the corpus", 0, len(ids))
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        vectors = embedder.encode([data.corpus[i] for i in batch])
        with db.tenant(tenant) as conn:
            records = [Record(i, data.corpus[i], {"beir_id": i}) for i in batch]
            stored += store_records(conn, config.index_id, records, vectors)
        on_progress("embedding the corpus", start + len(batch), len(ids))
    with db.tenant(tenant) as conn:  # deferred (logged): dense scores are then the exact scan's, an upper bound
        build_vector_index(conn, config.index_id, stored, embedder.identity.dim)
    return stored


def run_mode(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    data: BeirDataset,
    vectors: dict[str, np.ndarray],
    mode: str,
    on_progress: OnProgress = _quiet,
) -> dict[str, dict[str, float]]:
    """Top-100 documents per query (embedded in `vectors`) for one row of MODES, as a ranx run dict."""
    retrieval = config.retrieval.model_copy(update={**MODES[mode], "k": 100})
    run: dict[str, dict[str, float]] = {}
    with db.tenant(tenant) as conn:
        for n, (qid, question) in enumerate(data.queries.items(), 1):
            hits = retrieve(conn, config.index_id, question, vectors[qid], retrieval)
            run[qid] = {h.source_id: h.score for h in hits}
            on_progress(f"{mode} retrieval", n, len(data.queries))
    return run


def evaluate_runs(data: BeirDataset, runs: dict[str, dict]) -> dict[str, dict[str, float]]:
    """nDCG@10, Recall@10/100 and MRR@10 per mode, computed by ranx."""
    from ranx import Qrels, Run, evaluate

    qrels = Qrels.from_dict(data.qrels)
    results = {}
    for mode, run in runs.items():
        scores = evaluate(qrels, Run.from_dict(run, name=mode), list(METRICS), make_comparable=True)
        results[mode] = {m: float(scores[m]) for m in METRICS}
    return results


# What a throwaway tenant holds, children first; deleting chunks empties its postings (a trigger).
TENANT_DATA = (
    "active_indexes",
    "chunks",
    "lexical_stats",
    "indexed_documents",
    "documents",
    "embedding_cache",
    "ingest_errors",
)


def drop_tenant_data(db: Database, tenant: str) -> None:
    """Delete everything a throwaway tenant holds, then the tenant itself."""
    with db.tenant(tenant) as conn:
        for table in TENANT_DATA:
            conn.execute(f"DELETE FROM {table}")  # noqa: S608 (fixed table names)
        conn.execute("DELETE FROM tenants")


def embed_queries(embedder: Embedder, queries: dict[str, str], on_progress: OnProgress = _quiet) -> dict:
    """Query id -> embedding, BATCH queries at a time, telling progress after each batch."""
    ids, vectors = list(queries), {}
    for start in range(0, len(ids), BATCH):
        on_progress("embedding the queries", start, len(ids))
        batch = ids[start : start + BATCH]
        vectors.update(zip(batch, embedder.encode([queries[i] for i in batch]), strict=True))
    on_progress("embedding the queries", len(ids), len(ids))
    return vectors


def eval_beir(
    db: Database,
    config: PipelineConfig,
    embedder: Embedder,
    root: Path,
    keep: bool = False,
    on_progress: OnProgress = _quiet,
) -> dict[str, dict[str, float]]:
    """Load a BEIR dataset into a throwaway tenant and score dense, BM25 and both hybrid fusions."""
    data = load_beir(root)
    tenant = f"beir-{uuid.uuid4().hex[:12]}"
    create_tenant(db, tenant, f"BEIR {Path(root).name}")
    try:
        load_into_tenant(db, tenant, config, embedder, data, on_progress)
        vectors = embed_queries(embedder, data.queries, on_progress)
        runs = {mode: run_mode(db, tenant, config, data, vectors, mode, on_progress) for mode in MODES}
    finally:
        if not keep:
            drop_tenant_data(db, tenant)
    return evaluate_runs(data, runs)
