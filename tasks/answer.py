"""Answer one question for one tenant: embed, retrieve, route, generate.

CLI `query`, evaluation and the serving worker all answer through here, so they share one path:
the config's router picks a tier and its generator answers on it (`tasks/routed.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from opentelemetry import trace

from sluice.config import PipelineConfig, RetrievalConfig
from sluice.db import Database
from sluice.errors import GenerationError, QueryError
from tasks.embed import Embedder
from tasks.generate import Answer
from tasks.parents import with_parents
from tasks.retrieve import Hit, retrieve
from tasks.route import RouteDecision
from tasks.routed import Answerer, build_answerer
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
    route: RouteDecision | None = None


@dataclass(frozen=True)
class Retrieved:
    hits: list[Hit]
    query_vector: np.ndarray
    filters: dict | None  # with the collection folded in
    index_id: str
    timings_ms: dict[str, float]


def search_chunks(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    embedder: Embedder,
    question: str,
    *,
    filters: dict | None = None,
    collection: str | None = None,
    retrieval: RetrievalConfig | None = None,
) -> Retrieved:
    """Embed the question and retrieve the top-k chunks of `config`'s index (parent_child: their parent sections).

    `retrieval` overrides the config's own (another k or mode for one search); the index stays the config's.
    """
    question = _checked(question)
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
        index_id = config.index_id
        check_embedder(conn, index_id, embedder.identity)
        hits = with_parents(conn, retrieve(conn, index_id, question, qvec, retrieval or config.retrieval, filters))
        span.set_attributes({"sluice.index_id": index_id, "sluice.hits": len(hits)})
    hits = [replace(h, config_id=config.config_id) for h in hits]
    timings["retrieve"] = (time.perf_counter() - t1) * 1000
    return Retrieved(hits, qvec, filters, index_id, timings)


def answer_question(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    embedder: Embedder,
    question: str,
    *,
    filters: dict | None = None,
    collection: str | None = None,
    answerer: Answerer | None = None,
    on_piece: Callable[[str], None] | None = None,
) -> QueryResult:
    """Retrieve the top-k chunks of `config`'s index (parent_child: their parent sections), route, and answer.

    Pass the served config (`sluice.served`) to answer as the tenant is served, or any other config to
    answer from its index (an experiment); `embedder` must be that index's embedder (checked).
    `filters` is a metadata filter (sluice.filters); `collection` restricts the search to one collection.
    `answerer` is the config's router and generator, built once by long-lived callers (a worker, an
    evaluation); without one, one is built for this call. `on_piece` receives the answer's text as it streams.
    """
    question = _checked(question)
    found = search_chunks(db, tenant, config, embedder, question, filters=filters, collection=collection)
    hits, qvec, filters, timings = found.hits, found.query_vector, found.filters, found.timings_ms
    tracer = trace.get_tracer("sluice")
    own = answerer is None
    answerer = answerer or build_answerer(config, embedder)
    try:
        t2 = time.perf_counter()
        with tracer.start_as_current_span("generate") as span:
            routed = answerer.answer(question, hits, qvec, filters)
            for piece in routed.stream:
                if on_piece is not None:
                    on_piece(piece)
            answer = routed.stream.answer
            assert answer is not None
            span.set_attributes({"sluice.model": answer.model, "sluice.tier": answer.tier})
        timings["generate"] = (time.perf_counter() - t2) * 1000
    except GenerationError as exc:
        exc.retrieved = hits  # retrieval worked: an evaluation still scores it (evals.runner.answer_all)
        raise
    finally:
        if own:
            answerer.close()
    return QueryResult(question, answer, hits, config.config_id, found.index_id, timings, routed.decision)


def generation_json(result: QueryResult) -> dict:
    """Who answered and what it cost: model, tier, replica, route, TTFT, tokens, cost, failed attempts."""
    a, route = result.answer, result.route
    return {
        "model": a.model,
        "tier": a.tier,
        "replica": a.replica,
        "route": {"policy": route.policy, "tier": route.tier, "reason": route.reason} if route else None,
        "ttft_ms": round(a.ttft_ms, 3),
        "total_ms": round(a.total_ms, 3),
        "tokens_per_s": None if a.tokens_per_s is None else round(a.tokens_per_s, 3),
        "prompt_tokens": a.usage.prompt_tokens,
        "completion_tokens": a.usage.completion_tokens,
        "tokens_estimated": a.usage.estimated,
        "cost_usd": a.cost_usd,
        "attempts": list(a.attempts),
    }


def _checked(question: str) -> str:
    question = question.strip()
    if not question:
        raise QueryError("the question is empty: pass a non-empty question")
    if len(question) > MAX_QUESTION_CHARS:
        raise QueryError(f"the question is {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    return question
