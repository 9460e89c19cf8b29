"""One evaluation end to end: the sequence `sluice eval` runs directly and `flows/evaluate.py` runs as tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evals.gold import GoldItem
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


@dataclass(frozen=True)
class EvalSteps:
    """The steps of an evaluation that do the work; the Prefect flow passes the same ones wrapped as tasks."""

    ensure_index: Callable = ensure_index
    evaluate_config: Callable = evaluate_config
    open_evaluation: Callable = open_evaluation
    log_result: Callable = log_result
    close_evaluation: Callable = close_evaluation
    promote: Callable = apply_decision


DIRECT = EvalSteps()


def run_evaluation(
    settings: Settings,
    db: Database,
    grid: Grid,
    gold_path: str | None = None,
    *,
    promote: bool = True,
    on_config: OnConfig | None = None,
    on_question: OnQuestion | None = None,
    steps: EvalSteps = DIRECT,
) -> Report:
    """The evaluation driver: index, answer, score, track and (optionally) promote, for every config of the grid.

    A failure after the MLflow parent run was opened marks that run FAILED, on every path.
    """
    configs = plan(db, grid)  # validates every config before anything is loaded or ingested
    items, docs = load_items(settings, grid, gold_path)
    for config in configs:
        _tell(on_config, config, "index")
        steps.ensure_index(settings, db, grid, config, docs)
    items = resolve_items(db, grid, items)
    parent = steps.open_evaluation(settings, grid, gold_path or grid.gold or grid.corpus.label)
    try:
        results, decision = _score(settings, db, grid, configs, items, parent, steps, on_config, on_question)
    except BaseException:
        fail_evaluation(settings, parent)  # not a step: it must run even when the flow's task engine failed
        raise
    promoted = steps.promote(settings, db, grid, results, decision) if promote else None
    return Report(parent, results, decision, promoted)


def _score(
    settings: Settings,
    db: Database,
    grid: Grid,
    configs: list[PipelineConfig],
    items: list[GoldItem],
    parent: str,
    steps: EvalSteps,
    on_config: OnConfig | None,
    on_question: OnQuestion | None,
) -> tuple[list[ConfigResult], Decision]:
    """Answer and score every config, log each run under `parent`, decide, and close the parent run."""
    results: list[ConfigResult] = []
    for config in configs:
        _tell(on_config, config, "answer")
        results.append(steps.evaluate_config(settings, db, grid, config, items, on_question))
        # Set here too: a Prefect task may be handed a rebuilt copy of its arguments.
        results[-1].run_id = steps.log_result(settings, parent, grid, results[-1])
    decision = decide_champion(db, grid, results)
    steps.close_evaluation(settings, parent, grid, results, decision)
    return results, decision


def _tell(on_config: OnConfig | None, config: PipelineConfig, step: str) -> None:
    if on_config:
        on_config(config, step)
