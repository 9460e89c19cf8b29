"""Experiment grids: chunkers x retrieval x routing -> pipeline configs, an objective, promotion statistics.

A grid file (YAML):
    name: sample
    tenant: eval-sample
    corpus: {kind: files, path: data/sample/corpus}       # or {kind: covid_qa, dataset: covid_qa}
    gold: data/sample/gold.jsonl                           # files corpora; `sluice eval --gold` overrides
    base: {}                                               # pipeline-config stages shared by every config
    chunkers: [{kind: recursive, chunk_size: 500}, ...]    # any ChunkerConfig member
    retrieval: [{mode: dense, k: 10}]                      # any RetrievalConfig
    routing: [{policy: single}]                            # any RoutingConfig
    rerank: [null, {kind: cross_encoder, model: /models/ce, top_n: 20}]  # null = no rerank stage (the default)
    objective: {metric: ndcg_at_10, direction: maximise, max_cost_per_answer: 0.01, max_p95_latency_ms: 3000}
    promotion: {level: 0.05, n_boot: 2000, seed: 0, ci: 0.95}
    pricing: {input_per_mtok: 0.5, output_per_mtok: 1.5}   # USD per million tokens, to price extractive answers
A corpus names either `path` (relative to the project root) or `dataset`: an external corpus, relative to
the folder SLUICE_DATASETS_DIR names (settings.datasets_dir), so no grid holds one machine's path.
Each config is validated by the ordinary pipeline-config parser, so new chunkers, retrieval modes and
routing policies work here as soon as the config union knows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evals.metrics import SPAN_METRICS
from evals.ragas_metrics import RAGAS_METRICS
from sluice.config import ModelPrice, PipelineConfig, parse_config, read_yaml_mapping, validated
from sluice.errors import ConfigError
from sluice.settings import PROJECT_ROOT, Settings

# Metrics scored per question: the paired test needs one score per question (budgets cover cost and latency).
PER_QUESTION_METRICS = (*SPAN_METRICS, *RAGAS_METRICS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorpusSpec(_Strict):
    kind: Literal["files", "covid_qa"] = "files"
    path: str | None = Field(default=None, description="Folder or file, relative to the project root.")
    dataset: str | None = Field(default=None, description="External corpus, relative to SLUICE_DATASETS_DIR.")
    max_docs: int | None = Field(default=None, ge=1)
    max_questions: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_place(self) -> CorpusSpec:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of `path` (in the project) or `dataset` (under SLUICE_DATASETS_DIR)")
        return self

    @property
    def label(self) -> str:
        """Where the corpus is, as the grid says it (for run tags)."""
        return self.path if self.path is not None else f"$SLUICE_DATASETS_DIR/{self.dataset}"


class Objective(_Strict):
    metric: str = "ndcg_at_10"
    direction: Literal["maximise", "minimise"] = "maximise"
    max_cost_per_answer: float | None = Field(default=None, ge=0)
    max_p95_latency_ms: float | None = Field(default=None, gt=0)

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in PER_QUESTION_METRICS:
            raise ValueError(f"unknown objective metric {value!r}; use one of {', '.join(PER_QUESTION_METRICS)}")
        return value

    def sign(self) -> float:
        return 1.0 if self.direction == "maximise" else -1.0


class PromotionPolicy(_Strict):
    level: float = Field(default=0.05, gt=0, lt=1, description="One-sided significance level of the paired test.")
    n_boot: int = Field(default=2000, ge=100, le=100_000)
    seed: int = 0
    ci: float = Field(default=0.95, gt=0, lt=1)


class Grid(_Strict):
    name: str
    tenant: str = "eval"
    corpus: CorpusSpec
    gold: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    chunkers: list[dict[str, Any]] = Field(min_length=1)
    retrieval: list[dict[str, Any]] = Field(default_factory=lambda: [{}])
    routing: list[dict[str, Any]] = Field(default_factory=lambda: [{}])
    rerank: list[dict[str, Any] | None] = Field(default_factory=lambda: [None], min_length=1)
    objective: Objective = Objective()
    promotion: PromotionPolicy = PromotionPolicy()
    pricing: ModelPrice = ModelPrice(input_per_mtok=0.5, output_per_mtok=1.5)
    source: str = Field(default="grid", exclude=True)

    @field_validator("pricing", mode="before")
    @classmethod
    def _per_million(cls, value: Any) -> Any:
        # Grids written before prices had one model gave them per 1,000 tokens (`input_per_1k`).
        if not isinstance(value, dict):
            return value
        return {k.replace("_per_1k", "_per_mtok"): v * 1000 if k.endswith("_per_1k") else v for k, v in value.items()}

    def resolve_path(self, value: str) -> Path:
        """Paths in a grid are relative to the project root."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path

    def corpus_path(self, settings: Settings) -> Path:
        """The corpus folder: its `path` in the project, or its `dataset` under SLUICE_DATASETS_DIR."""
        if self.corpus.dataset is not None:
            return settings.dataset_path(self.corpus.dataset)
        return self.resolve_path(self.corpus.path)  # type: ignore[arg-type]  # one of the two is set


def load_grid(path: Path | str) -> Grid:
    """Read and validate a grid YAML file."""
    path, fix, shape = Path(path), "pass a YAML grid (see evals/grids/)", "a mapping (name, corpus, chunkers, ...)"
    grid = validated(Grid, read_yaml_mapping(path, "grid file", fix, shape), str(path))
    grid.source = str(path)
    return grid


def _label(stage: dict[str, Any], key: str, default: str) -> str:
    head = str(stage.get(key, default))
    params = ",".join(f"{k}={v}" for k, v in stage.items() if k != key)
    return f"{head}({params})" if params else head


def _rerank_label(rerank: dict[str, Any] | None) -> str:
    if rerank is None:
        return ""
    return _label({k: v for k, v in rerank.items() if k != "model"}, "kind", "cross_encoder")


def expand(grid: Grid) -> list[PipelineConfig]:
    """Every chunker x retrieval x routing x rerank combination as a validated config (duplicates dropped)."""
    configs: dict[str, PipelineConfig] = {}
    axes = product(grid.chunkers, grid.retrieval, grid.routing, grid.rerank)
    for chunker, retrieval, routing, rerank in axes:
        labels = (_label(chunker, "kind", "?"), _label(retrieval, "mode", "dense"), _label(routing, "policy", "single"))
        name = " ".join((*labels, _rerank_label(rerank))).strip()
        body = {**grid.base, "name": name, "chunker": chunker, "retrieval": retrieval, "routing": routing}
        if rerank is not None:
            body["rerank"] = rerank
        config = parse_config(body, source=f"{grid.source}: {name}")
        configs.setdefault(config.config_id, config)
    return list(configs.values())


# ---------------------------------------------------------------- statistics
def bootstrap_ci(values: np.ndarray, n_boot: int, seed: int, ci: float) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean over questions."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1 - ci) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap(challenger: np.ndarray, champion: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Mean paired difference and one-sided p-value of H0 'the challenger is no better'."""
    diffs = np.asarray(challenger, dtype=float) - np.asarray(champion, dtype=float)
    diffs = diffs[~np.isnan(diffs)]  # questions a metric could not score (judge failure) drop out of both
    if diffs.size == 0:
        raise ConfigError("paired bootstrap over zero questions: no question has a score under both configs")
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(axis=1)
    p_value = (np.count_nonzero(means <= 0) + 1) / (n_boot + 1)
    return float(diffs.mean()), float(p_value)


@dataclass(frozen=True)
class Candidate:
    config_id: str
    name: str
    summary: dict[str, float]
    per_question: np.ndarray  # objective metric per question, in gold order


def budget_violation(summary: dict[str, float], objective: Objective) -> str | None:
    """Why a config breaks the budgets, or None when it fits."""
    cost, p95 = summary.get("cost_per_answer", 0.0), summary.get("latency_total_p95_ms", 0.0)
    if objective.max_cost_per_answer is not None and cost > objective.max_cost_per_answer:
        return f"cost per answer {cost:.5f} > budget {objective.max_cost_per_answer}"
    if objective.max_p95_latency_ms is not None and p95 > objective.max_p95_latency_ms:
        return f"p95 latency {p95:.0f} ms > budget {objective.max_p95_latency_ms:.0f} ms"
    return None


def best_feasible(candidates: list[Candidate], objective: Objective) -> Candidate | None:
    """The feasible candidate with the best objective mean (first declared wins ties)."""
    feasible = [c for c in candidates if budget_violation(c.summary, objective) is None]
    if not feasible:
        return None
    return max(feasible, key=lambda c: objective.sign() * float(np.nanmean(c.per_question)))


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    winner: Candidate | None
    mean_diff: float | None = None
    p_value: float | None = None


def decide(
    candidates: list[Candidate], champion_id: str | None, objective: Objective, policy: PromotionPolicy
) -> Decision:
    """Pick the best feasible config and decide whether it replaces the current champion."""
    winner = best_feasible(candidates, objective)
    if winner is None:
        reasons = "; ".join(f"{c.name}: {budget_violation(c.summary, objective)}" for c in candidates)
        return Decision(False, f"no config fits the budgets ({reasons})", None)
    if champion_id is None:
        return Decision(True, f"no champion yet: {winner.name} is the best feasible config", winner)
    if winner.config_id == champion_id:
        return Decision(False, "the current champion is still the best feasible config", winner)
    champion = next((c for c in candidates if c.config_id == champion_id), None)
    if champion is None:
        return Decision(False, f"champion {champion_id} was not evaluated on this gold set: cannot compare", winner)
    sign = objective.sign()
    diff, p = paired_bootstrap(sign * winner.per_question, sign * champion.per_question, policy.n_boot, policy.seed)
    if diff > 0 and p < policy.level:
        reason = (
            f"{winner.name} beats the champion on {objective.metric} by {sign * diff:+.4f} (p={p:.4f} < {policy.level})"
        )
        return Decision(True, reason, winner, sign * diff, p)
    reason = (
        f"{winner.name} does not beat the champion significantly on {objective.metric}: "
        f"difference {sign * diff:+.4f}, p={p:.4f} >= {policy.level}"
    )
    return Decision(False, reason, winner, sign * diff, p)
