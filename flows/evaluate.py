"""Prefect flow `evaluate`: index every config of a grid, answer the gold set, score, track, promote, roll out.

Thin: the evaluation driver (`evals.evaluate.run_evaluation`, also behind `sluice eval`) with its steps
as Prefect tasks; nothing here computes anything. A run that fails after its MLflow parent run was opened
marks that run FAILED (the driver does, on every path), and a promotion starts the `rollout` flow as a
subflow, so every tenant gets the new champion's index.
"""

from __future__ import annotations

import dataclasses

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from evals.evaluate import DIRECT, EvalSteps, run_evaluation
from evals.grid import load_grid
from flows.rollout import rollout
from sluice.db import Database
from sluice.metrics import EVAL_RUNS
from sluice.settings import load_settings

# Steps take the database and return in-memory results: nothing to cache or persist between them.
step = task(cache_policy=NO_CACHE, persist_result=False)
FLOW_STEPS = EvalSteps(**{f.name: step(getattr(DIRECT, f.name)) for f in dataclasses.fields(DIRECT)})


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
    settings = load_settings()
    grid = load_grid(grid_path)
    with Database(settings) as db:
        report = run_evaluation(settings, db, grid, gold_path, promote=promote_winner, steps=FLOW_STEPS)
    get_run_logger().info("decision: %s", report.decision.reason)
    return {
        "parent_run_id": report.parent_run_id,
        "runs": {r.config.config_id: r.run_id for r in report.results},
        "promoted": report.promoted.config_id if report.promoted else None,
        "reason": report.decision.reason,
        "metric": grid.objective.metric,
        "scores": {r.config.config_id: r.summary.get(grid.objective.metric) for r in report.results},
    }
