"""Evaluation steps, pure of Prefect: ensure indexes, answer the gold questions, score, track, decide.

`flows/evaluate.py` wraps these as Prefect tasks; `sluice eval` calls them directly with a progress bar.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from evals.gold import GoldItem, TextDocument, load_covid_qa, load_gold, resolve_in_db
from evals.grid import Candidate, Decision, Grid, bootstrap_ci, decide, expand
from evals.metrics import QuestionRecord, RetrievedSpan, span_scores, summarise
from evals.ragas_metrics import JudgeConfig, judge_failure_summary, score_ragas, zero_failed_answers
from evals.results import ConfigResult
from evals.routing import routing_metrics
from sluice import champion
from sluice.config import EmbedderConfig, PipelineConfig
from sluice.db import Database, create_tenant
from sluice.errors import ConfigError, GenerationError
from sluice.settings import Settings
from tasks.embed import CachingEmbedder, get_embedder
from tasks.generate import Answer
from tasks.llm.state import MemoryState
from tasks.pricing import count_tokens
from tasks.routed import Answerer, answerer_for

log = logging.getLogger(__name__)
OnQuestion = Callable[[PipelineConfig, int, int], None]
DISPLAY = ("hit_at_5", "mrr", "ndcg_at_10", "evidence_recall_at_5", "semantic_similarity", "rouge_l")


def judge_from(settings: Settings) -> JudgeConfig | None:
    """The RAGAS judge the settings name, or None (judged metrics are then skipped)."""
    if not settings.judge_base_url:
        return None
    key = settings.judge_api_key.get_secret_value()
    return JudgeConfig(
        settings.judge_base_url, settings.judge_model, key, settings.judge_timeout_s, settings.judge_max_tokens
    )


def plan(db: Database, grid: Grid) -> list[PipelineConfig]:
    """The grid's configs, plus the current champion (it must be measured on the same questions to be beaten)."""
    configs = expand(grid)
    current = champion.current_champion(db)
    if current is not None and current.config_id not in {c.config_id for c in configs}:
        configs.append(current.model_copy(update={"name": f"champion {current.config_id[:8]}"}))
    return configs


def load_items(
    settings: Settings, grid: Grid, gold_path: str | None
) -> tuple[list[GoldItem], list[TextDocument] | None]:
    """The gold questions, and for text corpora (covid_qa) the documents to ingest."""
    if grid.corpus.kind == "covid_qa":
        docs, items = load_covid_qa(grid.corpus_path(settings), grid.corpus.max_docs, grid.corpus.max_questions)
        return items, docs
    path = gold_path or grid.gold
    if path is None:
        raise ConfigError(f"grid {grid.source}: no gold set: add `gold:` to the grid or pass --gold PATH")
    items = load_gold(grid.resolve_path(path))
    return (items[: grid.corpus.max_questions] if grid.corpus.max_questions else items), None


def ensure_index(
    settings: Settings, db: Database, grid: Grid, config: PipelineConfig, docs: list[TextDocument] | None
) -> dict[str, int]:
    """Build (or top up) the config's index over the grid's corpus; unchanged documents cost nothing."""
    from tasks.ingest import ingest_source
    from tasks.ingest_text import ingest_texts

    create_tenant(db, grid.tenant, f"evaluation: {grid.name}")
    embedder = get_embedder(config.embedder, settings.embed_batch_size, settings.data_dir)
    if docs is not None:
        summary = ingest_texts(db, grid.tenant, config, embedder, ((d.source_id, d.text) for d in docs))
    else:
        path = grid.corpus_path(settings)
        summary = ingest_source(db, grid.tenant, config, embedder, path, settings.max_file_bytes)
    if summary.failed:
        log.warning("index %s: %d documents failed: %s", config.index_id, summary.failed, summary.errors[:3])
    if summary.truncated:
        log.warning("index %s: %d chunks exceed the embedder's window", config.index_id, summary.truncated)
    counts = {"ingested": summary.ingested + summary.updated, "unchanged": summary.unchanged}
    return {**counts, "failed": summary.failed, "truncated": summary.truncated}


def resolve_items(db: Database, grid: Grid, items: list[GoldItem]) -> list[GoldItem]:
    """Gold quotes -> spans of the stored documents (covid_qa items carry spans already)."""
    return items if grid.corpus.kind == "covid_qa" else resolve_in_db(db, grid.tenant, items)


def answer_all(
    db: Database,
    grid: Grid,
    config: PipelineConfig,
    items: list[GoldItem],
    embedder,
    on_question: OnQuestion | None = None,
    answerer: Answerer | None = None,
) -> list[QuestionRecord]:
    """Answer every gold question with the config (routed); record hits, answer, tier, timings, tokens, cost."""
    from tasks.answer import answer_question

    records = []
    for n, item in enumerate(items, 1):
        t0 = time.perf_counter()
        try:
            result = answer_question(db, grid.tenant, config, embedder, item.question, answerer=answerer)
        except GenerationError as exc:  # every tier failed on this question: record it, go on with the rest
            records.append(_failed(item, exc, t0))
            if on_question:
                on_question(config, n, len(items))
            continue
        answer = result.answer
        timings = {**result.timings_ms, "total": (time.perf_counter() - t0) * 1000, "ttft": answer.ttft_ms}
        hits = [RetrievedSpan(h.source_id, h.start, h.end, h.text) for h in result.hits]
        record = QuestionRecord(item, hits, answer.text, timings, generation=answer)
        _price(record, grid, embedder, answer)
        record.scores.update(span_scores(hits, item))
        records.append(record)
        if on_question:
            on_question(config, n, len(items))
    return records


def _failed(item: GoldItem, exc: GenerationError, t0: float) -> QuestionRecord:
    log.warning("no tier answered question %s: %s", item.id, exc)
    retrieved = getattr(exc, "retrieved", [])
    hits = [RetrievedSpan(h.source_id, h.start, h.end, h.text) for h in retrieved]
    record = QuestionRecord(item, hits, "", {"total": (time.perf_counter() - t0) * 1000}, failure=str(exc))
    record.scores.update(span_scores(hits, item))
    return record


def _price(record: QuestionRecord, grid: Grid, embedder, answer: Answer) -> None:
    """Tokens and cost: an LLM's reported usage at the config's prices; extractive, the grid's estimate."""
    if answer.model != "extractive":
        record.tokens_in, record.tokens_out = answer.usage.prompt_tokens, answer.usage.completion_tokens
        record.cost = answer.cost_usd
        return
    # No model ran: price what an LLM would have read (question + contexts) and written.
    record.tokens_in = count_tokens(embedder.tokenizer, record.item.question, *(h.text for h in record.hits))
    record.tokens_out = count_tokens(embedder.tokenizer, answer.text)
    record.cost = grid.pricing.cost(record.tokens_in, record.tokens_out)


def truncated_chunks(db: Database, tenant: str, index_id: str, embedder) -> dict[str, float]:
    """Chunks of the index longer than the embedder's window (stored text = what was embedded), and their share."""
    with db.tenant(tenant) as conn:
        texts = [r[0] for r in conn.execute("SELECT text FROM chunks WHERE index_id = %s", (index_id,))]
    n = embedder.count_truncated(texts)
    return {"truncated_chunks": float(n), "truncated_share": n / len(texts) if texts else 0.0}


def chunk_lengths(db: Database, tenant: str, index_id: str) -> list[int]:
    """Lengths (characters) of the index's chunks, for the histogram."""
    with db.tenant(tenant) as conn:
        rows = conn.execute("SELECT char_end - char_start FROM chunks WHERE index_id = %s", (index_id,)).fetchall()
    return [r[0] for r in rows]


@lru_cache(maxsize=4)
def answering_embedder(config: EmbedderConfig, batch_size: int, cache_dir: Path | None = None) -> CachingEmbedder:
    """The process's embedder behind a sentence-vector LRU, shared by every config of a grid.

    The extractive answerer embeds each sentence of every retrieved chunk, and chunkers of one corpus
    retrieve mostly the same sentences: without the cache a 12-config covid_qa grid spent hours
    re-embedding them. A serving worker keeps the same cache warm, so answer latencies here are
    warm-cache latencies; the first config of a run pays the cold misses (docs/evaluation.md).
    """
    return CachingEmbedder(get_embedder(config, batch_size, cache_dir))


def evaluate_config(
    settings: Settings,
    db: Database,
    grid: Grid,
    config: PipelineConfig,
    items: list[GoldItem],
    on_question: OnQuestion | None = None,
) -> ConfigResult:
    """Answer and score every question under one config."""
    embedder = answering_embedder(config.embedder, settings.embed_batch_size, settings.data_dir)
    # One router and generator per config; gateway state per evaluation process (nothing to share).
    answerer = answerer_for(settings, config, embedder, MemoryState())
    try:
        records = answer_all(db, grid, config, items, embedder, on_question, answerer)
    finally:
        answerer.close()
    skipped = score_ragas(records, embedder, judge_from(settings))
    zero_failed_answers(records)
    summary = summarise(records)
    summary.update(judge_failure_summary(records))
    summary.update(routing_metrics([r.generation for r in records if r.generation is not None]))
    summary.update(truncated_chunks(db, grid.tenant, config.index_id, embedder))
    if grid.objective.metric not in summary:
        known = ", ".join(sorted(k for k in summary if not k.startswith("latency")))
        raise ConfigError(f"grid {grid.source}: objective metric {grid.objective.metric!r} is unknown; known: {known}")
    policy = grid.promotion
    names = sorted({n for r in records for n in r.scores})
    cis = {n: bootstrap_ci(_scores(records, n), policy.n_boot, policy.seed, policy.ci) for n in names}
    lengths = chunk_lengths(db, grid.tenant, config.index_id)
    return ConfigResult(config, records, summary, cis, skipped, lengths)


def _scores(records: list[QuestionRecord], name: str) -> np.ndarray:
    return np.array([r.scores.get(name, np.nan) for r in records], dtype=float)


def candidates(results: list[ConfigResult], metric: str) -> list[Candidate]:
    """Results in the shape the promotion decision needs."""
    return [Candidate(r.config.config_id, r.config.name, r.summary, _scores(r.records, metric)) for r in results]


def decide_champion(db: Database, grid: Grid, results: list[ConfigResult]) -> Decision:
    """The best feasible config, and whether it beats the current champion."""
    cands = candidates(results, grid.objective.metric)
    return decide(cands, champion.current_champion_id(db), grid.objective, grid.promotion)
