"""Prefect flow `evaluate`: index every config of a grid, answer the gold set, score, track, promote, roll out.

Thin: each task is one step of `evals.runner` / `evals.evaluate`; nothing here computes anything. A run
that fails after its MLflow parent run was opened marks that run FAILED (as `sluice eval` does), and a
promotion starts the `rollout` flow as a subflow, so every tenant gets the new champion's index.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from evals import record, runner
from evals.evaluate import apply_decision
from evals.grid import load_grid
from flows.rollout import rollout
from sluice.db import Database
from sluice.metrics import EVAL_RUNS
from sluice.settings import load_settings

# Steps take the database and return in-memory results: nothing to cache or persist between them.
step = task(cache_policy=NO_CACHE, persist_result=False)
ensure_index = step(runner.ensure_index)
evaluate_config = step(runner.evaluate_config)
open_evaluation = step(record.open_evaluation)
log_result = step(record.log_result)
close_evaluation = step(record.close_evaluation)
promote = step(apply_decision)


@flow(name="evaluate")
def evaluate(grid_path: str, gold_path: str | None = None, promote_winner: bool = True, roll_out: bool = True) -> dict:
    """Compare the grid's configs on the gold set in MLflow, promote a significantly better one, roll it out."""
    try:
        out = _evaluate(grid_path, gold_path, promote_winner)
        if out["promoted"] and roll_out:
            out["rollout"] = rollout(
                reason=f"promotion by evaluation {out['parent_run_id']}", return_state=True
            ).message
    except BaseException:
        EVAL_RUNS.labels("failed").inc()
        raise
    EVAL_RUNS.labels("ok").inc()
    return out


def _evaluate(grid_path: str, gold_path: str | None, promote_winner: bool) -> dict:
    logger = get_run_logger()
    settings = load_settings()
    grid = load_grid(grid_path)
    with Database(settings) as db:
        configs = runner.plan(db, grid)
        items, docs = runner.load_items(settings, grid, gold_path)
        for config in configs:
            ensure_index(settings, db, grid, config, docs)
        items = runner.resolve_items(db, grid, items)
        parent = open_evaluation(settings, grid, gold_path or grid.gold or grid.corpus.label)
        try:
            results, decision = _score(settings, db, grid, configs, items, parent)
        except BaseException:
            record.fail_evaluation(settings, parent)  # not a task: it must run even when the task engine failed
            raise
        promoted = promote(settings, db, grid, results, decision) if promote_winner else None
    logger.info("decision: %s", decision.reason)
    return {
        "parent_run_id": parent,
        "runs": {r.config.config_id: r.run_id for r in results},
        "promoted": promoted.config_id if promoted else None,
        "reason": decision.reason,
        "metric": grid.objective.metric,
        "scores": {r.config.config_id: r.summary.get(grid.objective.metric) for r in results},
    }


def _score(settings, db: Database, grid, configs, items, parent: str):
    """Answer and score every config, log each run under `parent`, decide, and close the parent run."""
    results = []
    for config in configs:
        results.append(evaluate_config(settings, db, grid, config, items))
        # Set here too: Prefect may hand the task a rebuilt copy of its arguments.
        results[-1].run_id = log_result(settings, parent, grid, results[-1])
    decision = runner.decide_champion(db, grid, results)
    close_evaluation(settings, parent, grid, results, decision)
    return results, decision
