"""Answer one question for one tenant: embed, retrieve, generate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from opentelemetry import trace

from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.errors import QueryError
from tasks.embed import Embedder
from tasks.generate import Answer, extractive_answer
from tasks.indexes import active_index
from tasks.retrieve import Hit, retrieve
from tasks.store import check_embedder

MAX_QUESTION_CHARS = 4000


@dataclass(frozen=True)
class QueryResult:
    question: str
    answer: Answer
    hits: list[Hit]
    config_id: str
    index_id: str
    timings_ms: dict[str, float] = field(default_factory=dict)


def answer_question(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    embedder: Embedder,
    question: str,
    *,
    filters: dict | None = None,
    collection: str | None = None,
) -> QueryResult:
    """Retrieve the top-k chunks (of the collection's active index, else the config's) and compose a cited answer.

    `filters` is a metadata filter (sluice.filters); `collection` restricts the search to one collection.
    """
    question = question.strip()
    if not question:
        raise QueryError("the question is empty: pass a non-empty question")
    if len(question) > MAX_QUESTION_CHARS:
        raise QueryError(f"the question is {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    timings: dict[str, float] = {}
    tracer = trace.get_tracer("sluice")  # spans are no-ops unless the process installed a tracer provider
    t0 = time.perf_counter()
    with tracer.start_as_current_span("embed"):
        qvec = embedder.encode([question])[0]
    timings["embed"] = (time.perf_counter() - t0) * 1000
    t1 = time.perf_counter()
    if collection is not None:
        filters = {"and": [{"collection": collection}, filters]} if filters else {"collection": collection}
    with tracer.start_as_current_span("retrieve") as span, db.tenant(tenant) as conn:
        index_id = active_index(conn, collection or "default") or config.index_id
        check_embedder(conn, index_id, embedder.identity)
        hits = retrieve(conn, index_id, question, qvec, config.retrieval, filters)
        span.set_attributes({"sluice.index_id": index_id, "sluice.hits": len(hits)})
    hits = [replace(h, config_id=config.config_id) for h in hits]
    timings["retrieve"] = (time.perf_counter() - t1) * 1000
    t2 = time.perf_counter()
    with tracer.start_as_current_span("generate", attributes={"sluice.model": "extractive"}):
        answer = extractive_answer(qvec, hits, embedder, config.generator)
    timings["generate"] = (time.perf_counter() - t2) * 1000
    return QueryResult(question, answer, hits, config.config_id, index_id, timings)
