"""RAGAS metrics over question records: offline ones always, LLM-judged ones only with a judge endpoint.

Each metric is one row of `RAGAS_METRICS` (name, builder, and whether it needs the judge, scores the
answer, needs reference contexts); adding a metric is adding a row, and every rule reads the row.

RAGAS is imported lazily (seconds to import). Embeddings are our own local model through a small
RAGAS embeddings adapter, so nothing is downloaded. The judge is any OpenAI-compatible endpoint.

A judge can fail on a question: malformed JSON, a reply cut off at `max_tokens`, a timeout, an output
RAGAS turns into NaN (no statements, no question). Such a score stays NaN (never 0), the reason is kept
on the record (`judge_failures`), the run goes on, and `judge_failure_summary` counts them per metric.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from evals.metrics import QuestionRecord
from sluice.registry import Registry
from tasks.embed import Embedder

log = logging.getLogger(__name__)
CONCURRENCY = 4


@dataclass(frozen=True)
class JudgeConfig:
    """An OpenAI-compatible chat endpoint used as the RAGAS judge."""

    base_url: str
    model: str = "gpt-4o-mini"
    api_key: str = field(default="not-needed", repr=False)
    timeout_s: float = 60.0
    max_tokens: int | None = None  # per reply; a reply cut off by it is a judge failure


def ragas_embeddings(embedder: Embedder):
    """Our embedder behind RAGAS's embeddings interface."""
    from ragas.embeddings.base import BaseRagasEmbeddings
    from ragas.run_config import RunConfig

    class SluiceEmbeddings(BaseRagasEmbeddings):
        def __init__(self, inner: Embedder):
            super().__init__()
            self.inner = inner
            self.set_run_config(RunConfig())

        def embed_query(self, text: str) -> list[float]:
            return self.inner.encode([text])[0].tolist()

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.inner.encode(list(texts)).tolist()

        async def aembed_query(self, text: str) -> list[float]:
            return self.embed_query(text)

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.embed_documents(texts)

    return SluiceEmbeddings(embedder)


def judge_llm(judge: JudgeConfig):
    """A RAGAS LLM speaking to the judge endpoint."""
    from langchain_openai import ChatOpenAI
    from ragas.llms import LangchainLLMWrapper
    from ragas.run_config import RunConfig

    chat = ChatOpenAI(
        model=judge.model,
        base_url=judge.base_url,
        api_key=judge.api_key,
        timeout=judge.timeout_s,
        max_retries=1,
        # As `max_tokens`: langchain-openai renames its own cap `max_completion_tokens`, which llama.cpp's
        # server ignores (a small judge then rambles until its context is full).
        extra_body={"max_tokens": judge.max_tokens} if judge.max_tokens else None,
    )
    # The wrapper overwrites the client's timeout with its RunConfig's (180 s unless told).
    return LangchainLLMWrapper(chat, run_config=RunConfig(timeout=math.ceil(judge.timeout_s)))


@dataclass(frozen=True)
class MetricSpec:
    """One RAGAS metric: how to build it and which questions it can score."""

    name: str
    build: Callable[[ModuleType, Any, Any], Any]  # (ragas.metrics, our embeddings, judge LLM or None) -> metric
    judged: bool = False  # needs the LLM judge: skipped (absent, never 0) without one
    scores_answer: bool = False  # scores the answer text: 0 when no tier answered the question
    reference_contexts: bool = False  # needs the gold item's reference texts: NaN on items without them


RAGAS_METRICS: Registry[MetricSpec] = Registry("RAGAS metric", key="name")
for _spec in (
    MetricSpec(
        "non_llm_context_precision", lambda m, e, j: m.NonLLMContextPrecisionWithReference(), reference_contexts=True
    ),
    MetricSpec("non_llm_context_recall", lambda m, e, j: m.NonLLMContextRecall(), reference_contexts=True),
    MetricSpec("semantic_similarity", lambda m, e, j: m.SemanticSimilarity(embeddings=e), scores_answer=True),
    MetricSpec("rouge_l", lambda m, e, j: m.RougeScore(rouge_type="rougeL"), scores_answer=True),
    MetricSpec("chrf", lambda m, e, j: m.ChrfScore(), scores_answer=True),
    MetricSpec("faithfulness", lambda m, e, j: m.Faithfulness(llm=j), judged=True, scores_answer=True),
    MetricSpec(
        "answer_relevancy", lambda m, e, j: m.ResponseRelevancy(llm=j, embeddings=e), judged=True, scores_answer=True
    ),
    MetricSpec("llm_context_precision", lambda m, e, j: m.LLMContextPrecisionWithReference(llm=j), judged=True),
):
    RAGAS_METRICS.register(_spec.name, _spec)

ANSWER_METRICS = tuple(name for name, spec in RAGAS_METRICS.items() if spec.scores_answer)


def build_metrics(
    embedder: Embedder, judge: JudgeConfig | None, names: Collection[str] | None = None
) -> dict[str, tuple[MetricSpec, Any]]:
    """Every RAGAS metric that can run (the judged ones only with a judge), by our metric name; only `names`."""
    import ragas.metrics

    embeddings = ragas_embeddings(embedder)
    llm = judge_llm(judge) if judge is not None else None
    specs = [spec for _, spec in RAGAS_METRICS.items() if llm is not None or not spec.judged]
    specs = [spec for spec in specs if names is None or spec.name in names]
    return {spec.name: (spec, spec.build(ragas.metrics, embeddings, llm)) for spec in specs}


def _sample(record: QuestionRecord):
    from ragas import SingleTurnSample

    return SingleTurnSample(
        user_input=record.item.question,
        response=record.answer,
        reference=record.item.reference,
        retrieved_contexts=[h.text for h in record.hits],
        reference_contexts=list(record.item.reference_contexts),
    )


def _scorable(spec: MetricSpec, record: QuestionRecord) -> bool:
    """Can the row score this question? Not without reference texts it needs, nor an answer it judges."""
    if spec.reference_contexts and not record.item.reference_contexts:
        return False  # gold items with document ids only have no reference text
    # No tier answered: there is nothing to judge, and zero_failed_answers scores it 0.
    return not (spec.judged and spec.scores_answer and record.failure is not None)


async def _score_one(
    spec: MetricSpec, metric, record: QuestionRecord, gate: asyncio.Semaphore
) -> tuple[float, str | None]:
    """The score, and for a judged row the reason the judge gave none (the score is then NaN)."""
    if not _scorable(spec, record):
        return math.nan, None
    async with gate:
        try:
            value = float(await metric.single_turn_ascore(_sample(record)))
        except Exception as exc:  # a judge failure leaves the score missing, never zero, and the run goes on
            log.warning("ragas %s failed on question %s: %s", spec.name, record.item.id, exc)
            return math.nan, f"{type(exc).__name__}: {exc}"[:300] if spec.judged else None
    if spec.judged and math.isnan(value):
        return value, "no score: RAGAS found nothing to score in the judge's output"
    return value, None


async def _score_all(metrics: dict[str, tuple[MetricSpec, Any]], records: list[QuestionRecord]) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)
    for name, (spec, metric) in metrics.items():
        outcomes = await asyncio.gather(*(_score_one(spec, metric, r, gate) for r in records))
        for record, (value, failure) in zip(records, outcomes, strict=True):
            record.scores[name] = value
            if failure is not None:
                record.judge_failures[name] = failure


def score_ragas(
    records: list[QuestionRecord],
    embedder: Embedder,
    judge: JudgeConfig | None,
    names: Collection[str] | None = None,
) -> list[str]:
    """Add RAGAS scores (all, or only `names`) to each record in place; return the names of the metrics skipped."""
    metrics = build_metrics(embedder, judge, names)
    asyncio.run(_score_all(metrics, records))
    return [name for name in RAGAS_METRICS if name not in metrics and (names is None or name in names)]


def judge_failure_summary(records: list[QuestionRecord]) -> dict[str, float]:
    """Per judged metric that ran: questions put to the judge, its failures, and their share (NaN: none asked)."""
    out: dict[str, float] = {}
    for name, spec in RAGAS_METRICS.items():
        if not spec.judged or not any(name in r.scores for r in records):
            continue  # skipped: no judge
        asked = [r for r in records if _scorable(spec, r)]
        failed = sum(name in r.judge_failures for r in asked)
        out[f"judge_asked_{name}"] = float(len(asked))
        out[f"judge_failures_{name}"] = float(failed)
        out[f"judge_failure_share_{name}"] = failed / len(asked) if asked else math.nan
    return out


def zero_failed_answers(records: list[QuestionRecord]) -> None:
    """A question whose answer failed scores 0 on every answer metric (a missing score would flatter it)."""
    for record in records:
        if record.failure is not None:
            record.scores.update({name: 0.0 for name in ANSWER_METRICS if name in record.scores})
