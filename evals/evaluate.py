"""One evaluation end to end, without Prefect: the sequence `flows/evaluate.py` runs as tasks."""

from __future__ import annotations

from collections.abc import Callable

from evals.grid import Decision, Grid
from evals.promotion import promote_run
from evals.record import close_evaluation, fail_evaluation, log_result, open_evaluation
from evals.results import ConfigResult, Report
from evals.runner import (
    OnQuestion,
    decide_champion,
    ensure_index,
    evaluate_config,
    load_items,
    plan,
    resolve_items,
)
from sluice import champion
from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.settings import Settings

OnConfig = Callable[[PipelineConfig, str], None]
PROMOTED_METRICS = ("questions", "cost_per_answer", "latency_total_p95_ms")


def apply_decision(
    settings: Settings, db: Database, grid: Grid, results: list[ConfigResult], decision: Decision
) -> champion.ChampionEvent | None:
    """Promote the winner when the decision says so."""
    if not decision.promote or decision.winner is None:
        return None
    result = next(r for r in results if r.config.config_id == decision.winner.config_id)
    assert result.run_id, "log the evaluation before promoting"
    keep = (grid.objective.metric, *PROMOTED_METRICS)
    metrics = {k: result.summary[k] for k in keep if k in result.summary}
    return promote_run(settings, db, result.run_id, decision.reason, grid.tenant, metrics)


def run_evaluation(
    settings: Settings,
    db: Database,
    grid: Grid,
    gold_path: str | None = None,
    *,
    promote: bool = True,
    on_config: OnConfig | None = None,
    on_question: OnQuestion | None = None,
) -> Report:
    """Index, answer, score, track and (optionally) promote, for every config of the grid."""
    configs = plan(db, grid)  # validates every config before anything is loaded or ingested
    items, docs = load_items(settings, grid, gold_path)
    for config in configs:
        if on_config:
            on_config(config, "index")
        ensure_index(settings, db, grid, config, docs)
    items = resolve_items(db, grid, items)
    parent = open_evaluation(settings, grid, gold_path or grid.gold or grid.corpus.label)
    try:
        results = []
        for config in configs:
            if on_config:
                on_config(config, "answer")
            results.append(evaluate_config(settings, db, grid, config, items, on_question))
            log_result(settings, parent, grid, results[-1])
        decision = decide_champion(db, grid, results)
        close_evaluation(settings, parent, grid, results, decision)
    except BaseException:
        fail_evaluation(settings, parent)
        raise
    promoted = apply_decision(settings, db, grid, results, decision) if promote else None
    return Report(parent, results, decision, promoted)
