"""What an evaluation produces: one result per config, and the report over all of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from evals.grid import Decision
from evals.metrics import QuestionRecord
from sluice import champion
from sluice.config import PipelineConfig


@dataclass
class ConfigResult:
    config: PipelineConfig
    records: list[QuestionRecord]
    summary: dict[str, float]
    cis: dict[str, tuple[float, float]]
    skipped: list[str]
    chunk_lengths: list[int] = field(default_factory=list)
    run_id: str | None = None


@dataclass
class Report:
    parent_run_id: str
    results: list[ConfigResult]
    decision: Decision
    promoted: champion.ChampionEvent | None = None
