"""Answer one question for one tenant: embed, retrieve, route, generate.

CLI `query`, evaluation and the serving worker all answer through here, so they share one path:
the config's router picks a tier and its generator answers on it (`tasks/routed.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
from opentelemetry import trace

from sluice.config import PipelineConfig, RetrievalConfig
from sluice.db import Database
from sluice.errors import GenerationError, QueryError
from tasks.embed import Embedder
from tasks.generate import Answer, Citation
from tasks.parents import with_parents
from tasks.rerank import get_reranker, search
from tasks.retrieve import Hit
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
    reranker: str | None = None  # the rerank model's identity (name@weights hash) when the config reranks

    def to_json(self) -> dict:
        """The public JSON of this answer (the API's QueryResponse fields; `sluice query --json` prints it too)."""
        return {
            "answer": self.answer.text,
            "citations": [citation_json(c, self.metadata_of(c.document_id)) for c in self.answer.citations],
            "config_id": self.config_id,
            "index_id": self.index_id,
            "model_tier": self.answer.tier,  # the tier that answered: after a fallback, not the routed one
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "generation": generation_json(self),
            "reranker": self.reranker,
        }

    def metadata_of(self, document_id: str) -> dict:
        """The user metadata of a cited document (every hit of a document carries the same)."""
        return next((h.doc_metadata for h in self.hits if h.document_id == document_id), {})


def citation_json(cite: Citation, metadata: dict | None = None) -> dict:
    """A citation as the API shows it: the document's source, public id and metadata, its character span, the score."""
    return {
        "document": cite.source_id,
        "document_id": cite.document_id,
        "span": [cite.start, cite.end],
        "score": cite.score,
        "metadata": metadata or {},
    }


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
    question, timings = _checked(question), dict[str, float]()
    with _stage(timings, "embed"):
        qvec = embedder.encode([question])[0]
    filters = _scoped(filters, collection)
    if retrieval is not None:  # another k or mode for one search; the index stays the config's
        config = config.model_copy(update={"retrieval": retrieval})
    with _stage(timings, "retrieve"):
        hits = _retrieve(db, tenant, config, embedder, question, qvec, filters)
    return Retrieved(hits, qvec, filters, config.index_id, timings)


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
    hits, timings = found.hits, found.timings_ms
    with _own_or(answerer, config, embedder) as using:
        try:
            with _stage(timings, "generate"):
                answer, decision = _generate(using, question, hits, found.query_vector, found.filters, on_piece)
        except GenerationError as exc:
            exc.retrieved = hits  # retrieval worked: an evaluation still scores it (evals.runner.answer_all)
            raise
    return QueryResult(
        question, answer, hits, config.config_id, config.index_id, timings, decision, reranker_key(config)
    )


def reranker_key(config: PipelineConfig) -> str | None:
    """The identity (name@weights hash) of the config's rerank model, or None when it does not rerank."""
    return get_reranker(config.rerank).identity.key if config.rerank else None


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    """One stage as the current tracing span; its wall time goes into `timings` (ms)."""
    t0 = time.perf_counter()
    # Spans are no-ops unless the process installed a tracer provider.
    with trace.get_tracer("sluice").start_as_current_span(name):
        yield
    timings[name] = (time.perf_counter() - t0) * 1000


def _scoped(filters: dict | None, collection: str | None) -> dict | None:
    """The metadata filter, restricted to one collection when one is named."""
    if collection is None:
        return filters
    return {"and": [{"collection": collection}, filters]} if filters else {"collection": collection}


def _retrieve(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    embedder: Embedder,
    question: str,
    qvec,
    filters: dict | None,
) -> list[Hit]:
    """The top-k hits of the config's index (after checking it was built by this embedder), parents attached."""
    with db.tenant(tenant) as conn:
        check_embedder(conn, config.index_id, embedder.identity)
        hits = with_parents(conn, search(conn, config, question, qvec, filters))
    trace.get_current_span().set_attributes({"sluice.index_id": config.index_id, "sluice.hits": len(hits)})
    return [replace(h, config_id=config.config_id) for h in hits]


def _own_or(answerer: Answerer | None, config: PipelineConfig, embedder: Embedder) -> AbstractContextManager[Answerer]:
    """The caller's answerer as it is, or one built for this call and closed after it."""
    return nullcontext(answerer) if answerer is not None else closing(build_answerer(config, embedder))


def _generate(
    answerer: Answerer,
    question: str,
    hits: list[Hit],
    qvec,
    filters: dict | None,
    on_piece: Callable[[str], None] | None,
) -> tuple[Answer, RouteDecision | None]:
    """Route and answer, handing each streamed piece to `on_piece`; the answer and the routing decision."""
    routed = answerer.answer(question, hits, qvec, filters)
    for piece in routed.stream:
        if on_piece is not None:
            on_piece(piece)
    answer = routed.stream.answer
    assert answer is not None
    trace.get_current_span().set_attributes({"sluice.model": answer.model, "sluice.tier": answer.tier})
    return answer, routed.decision


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
