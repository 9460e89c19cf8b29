"""Evaluation metrics: the question record, span-based retrieval metrics, latency and cost.

Span metrics judge a retrieved chunk relevant when its character span overlaps a gold evidence
span of the same document (or, for items with only gold document ids, when it comes from one).
- hit@k: 1 when any of the top k chunks is relevant.
- MRR: 1 / rank of the first relevant chunk (0 when none is retrieved).
- nDCG@k: binary gains where a chunk gains 1 only for gold units (spans, or documents for items
  without spans) that no higher-ranked chunk already covered, so overlapping chunks that repeat
  the same evidence earn nothing; the ideal ranking covers min(k, #gold units) units in a row.
- evidence recall@k: the share of gold evidence characters covered by the union of the top k chunks.
RAGAS metrics (evals/ragas_metrics.py) run per question too; the ones needing an LLM judge run only when
one is configured and are otherwise reported as skipped (absent), never as zero. A judge that fails on a
question (malformed output, cut off, timed out) leaves that score NaN and is counted per metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from evals.gold import GoldItem, Span

if TYPE_CHECKING:
    from tasks.generate import Answer

CUTOFFS = (1, 3, 5, 10)
SPAN_METRICS = ("mrr", *(f"{m}_at_{k}" for m in ("hit", "ndcg", "evidence_recall") for k in CUTOFFS))


@dataclass(frozen=True)
class RetrievedSpan:
    source_id: str
    start: int
    end: int
    text: str = ""


@dataclass
class QuestionRecord:
    """Everything measured for one question under one config."""

    item: GoldItem
    hits: list[RetrievedSpan]
    answer: str
    timings_ms: dict[str, float]
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)
    generation: Answer | None = None  # who answered: model, tier, replica, TTFT, usage, cost
    failure: str | None = None  # why no tier could answer (GenerationError); retrieval is still scored
    judge_failures: dict[str, str] = field(default_factory=dict)  # judged metric -> why the judge gave no score


# ---------------------------------------------------------------- span metrics
def _overlaps(hit: RetrievedSpan, span: Span) -> bool:
    return hit.source_id == span.source_id and hit.start < span.end and span.start < hit.end


def gold_units(item: GoldItem) -> list[Span | str]:
    """What a chunk can be relevant to: the gold spans, or the gold documents when there are no spans."""
    return list(item.spans) or sorted(item.relevant_docs)


def _covers(hit: RetrievedSpan, unit: Span | str) -> bool:
    return hit.source_id == unit if isinstance(unit, str) else _overlaps(hit, unit)


def relevance(hits: list[RetrievedSpan], item: GoldItem) -> list[bool]:
    """Per retrieved chunk: does it overlap any gold unit?"""
    units = gold_units(item)
    return [any(_covers(h, u) for u in units) for h in hits]


def hit_at_k(rel: list[bool], k: int) -> float:
    """1.0 when any of the top k is relevant."""
    return float(any(rel[:k]))


def reciprocal_rank(rel: list[bool]) -> float:
    """1 / rank of the first relevant result, 0.0 when there is none."""
    return next((1.0 / (i + 1) for i, r in enumerate(rel) if r), 0.0)


def ndcg_at_k(hits: list[RetrievedSpan], item: GoldItem, k: int) -> float:
    """nDCG@k with a gain only for gold units not covered by a higher-ranked chunk."""
    units = gold_units(item)
    if not units:
        return 0.0
    covered: set[int] = set()
    dcg = 0.0
    for rank, hit in enumerate(hits[:k], start=1):
        new = {i for i, u in enumerate(units) if i not in covered and _covers(hit, u)}
        if new:
            dcg += 1.0 / math.log2(rank + 1)
            covered |= new
    ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(k, len(units)) + 1))
    return dcg / ideal


def evidence_recall(hits: list[RetrievedSpan], item: GoldItem, k: int) -> float:
    """Share of gold evidence characters inside the union of the top k chunks (docs-only items: share of docs)."""
    spans = item.spans
    if not spans:
        docs = item.relevant_docs
        return len(docs & {h.source_id for h in hits[:k]}) / len(docs) if docs else 0.0
    total = covered = 0
    for span in spans:
        mask = np.zeros(span.end - span.start, dtype=bool)
        for hit in hits[:k]:
            if hit.source_id == span.source_id:
                lo, hi = max(hit.start, span.start), min(hit.end, span.end)
                if lo < hi:
                    mask[lo - span.start : hi - span.start] = True
        total += mask.size
        covered += int(mask.sum())
    return covered / total if total else 0.0


def span_scores(hits: list[RetrievedSpan], item: GoldItem, cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, float]:
    """Every span metric of one question."""
    rel = relevance(hits, item)
    scores = {"mrr": reciprocal_rank(rel)}
    for k in cutoffs:
        scores[f"hit_at_{k}"] = hit_at_k(rel, k)
        scores[f"ndcg_at_{k}"] = ndcg_at_k(hits, item, k)
        scores[f"evidence_recall_at_{k}"] = evidence_recall(hits, item, k)
    return scores


# ---------------------------------------------------------------- latency
def latency_percentiles(records: list[QuestionRecord]) -> dict[str, float]:
    """p50/p95/p99 per stage (whatever stages the answerer timed, plus `total`), in milliseconds."""
    out: dict[str, float] = {}
    stages = sorted({s for r in records for s in r.timings_ms})
    for stage in stages:
        values = [r.timings_ms[stage] for r in records if stage in r.timings_ms]
        if values:
            for p in (50, 95, 99):
                out[f"latency_{stage}_p{p}_ms"] = float(np.percentile(values, p))
    return out


# ---------------------------------------------------------------- aggregation
def mean_scores(records: list[QuestionRecord]) -> dict[str, float]:
    """Mean of every per-question score over the questions that have it (NaN = not scored)."""
    names = sorted({n for r in records for n in r.scores})
    out = {}
    for name in names:
        values = [r.scores[name] for r in records if name in r.scores and not math.isnan(r.scores[name])]
        if values:
            out[name] = float(np.mean(values))
    return out


def summarise(records: list[QuestionRecord]) -> dict[str, float]:
    """Config-level metrics: score means, latency percentiles, tokens and cost per answer."""
    summary = mean_scores(records)
    summary.update(latency_percentiles(records))
    summary["tokens_in_per_answer"] = float(np.mean([r.tokens_in for r in records]))
    summary["tokens_out_per_answer"] = float(np.mean([r.tokens_out for r in records]))
    summary["cost_per_answer"] = float(np.mean([r.cost for r in records]))
    summary["questions"] = float(len(records))
    summary["generation_failures"] = float(sum(r.failure is not None for r in records))
    return summary
