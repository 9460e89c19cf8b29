"""RAGAS metrics over question records: offline ones always, LLM-judged ones only with a judge endpoint.

RAGAS is imported lazily (seconds to import). Embeddings are our own local model through a small
RAGAS embeddings adapter, so nothing is downloaded. The judge is any OpenAI-compatible endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field

from evals.metrics import JUDGED_RAGAS, QuestionRecord
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

    chat = ChatOpenAI(
        model=judge.model, base_url=judge.base_url, api_key=judge.api_key, timeout=judge.timeout_s, max_retries=1
    )
    return LangchainLLMWrapper(chat)


def offline_metrics(embedder: Embedder) -> dict:
    """The RAGAS metrics that need no LLM, by our metric name."""
    from ragas.metrics import (
        ChrfScore,
        NonLLMContextPrecisionWithReference,
        NonLLMContextRecall,
        RougeScore,
        SemanticSimilarity,
    )

    return {
        "non_llm_context_precision": NonLLMContextPrecisionWithReference(),
        "non_llm_context_recall": NonLLMContextRecall(),
        "semantic_similarity": SemanticSimilarity(embeddings=ragas_embeddings(embedder)),
        "rouge_l": RougeScore(rouge_type="rougeL"),
        "chrf": ChrfScore(),
    }


def judged_metrics(judge: JudgeConfig, embedder: Embedder) -> dict:
    """The LLM-judged RAGAS metrics, by our metric name."""
    from ragas.metrics import Faithfulness, LLMContextPrecisionWithReference, ResponseRelevancy

    llm = judge_llm(judge)
    return {
        "faithfulness": Faithfulness(llm=llm),
        "answer_relevancy": ResponseRelevancy(llm=llm, embeddings=ragas_embeddings(embedder)),
        "llm_context_precision": LLMContextPrecisionWithReference(llm=llm),
    }


_NEEDS_REFERENCE_CONTEXTS = {"non_llm_context_precision", "non_llm_context_recall"}


def _sample(record: QuestionRecord):
    from ragas import SingleTurnSample

    return SingleTurnSample(
        user_input=record.item.question,
        response=record.answer,
        reference=record.item.reference,
        retrieved_contexts=[h.text for h in record.hits],
        reference_contexts=list(record.item.reference_contexts),
    )


async def _score_one(name: str, metric, record: QuestionRecord, gate: asyncio.Semaphore) -> float:
    if name in _NEEDS_REFERENCE_CONTEXTS and not record.item.reference_contexts:
        return math.nan  # gold items with document ids only have no reference text
    async with gate:
        try:
            return float(await metric.single_turn_ascore(_sample(record)))
        except Exception as exc:  # a judge failure leaves the score missing, never zero
            log.warning("ragas %s failed on question %s: %s", name, record.item.id, exc)
            return math.nan


async def _score_all(metrics: dict, records: list[QuestionRecord]) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)
    for name, metric in metrics.items():
        values = await asyncio.gather(*(_score_one(name, metric, r, gate) for r in records))
        for record, value in zip(records, values, strict=True):
            record.scores[name] = value


def score_ragas(records: list[QuestionRecord], embedder: Embedder, judge: JudgeConfig | None) -> list[str]:
    """Add RAGAS scores to each record in place; return the names of the metrics skipped."""
    metrics = offline_metrics(embedder)
    skipped: list[str] = []
    if judge is not None:
        metrics.update(judged_metrics(judge, embedder))
    else:
        skipped = list(JUDGED_RAGAS)
    asyncio.run(_score_all(metrics, records))
    return skipped
