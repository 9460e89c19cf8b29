"""`sluice eval`: compare pipeline configs, promote a significantly better champion and roll it out."""

from __future__ import annotations

import math
from contextlib import closing
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sluice.cli_common import console
from sluice.cli_common import fail as _fail
from sluice.errors import SluiceError
from sluice.settings import load_settings


def _fmt(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4f}" if abs(value) < 10 else f"{value:.0f}"
    return "—" if value is None else str(value)


def eval_command(
    grid: Annotated[Path, typer.Argument(help="Experiment grid YAML (see evals/grids/).")],
    gold: Annotated[Optional[str], typer.Option("--gold", help="Gold set JSONL; overrides the grid's `gold`.")] = None,
    promote: Annotated[bool, typer.Option("--promote/--no-promote", help="Promote a significant winner.")] = True,
    rollout: Annotated[bool, typer.Option("--rollout/--no-rollout", help="Roll a promoted winner out.")] = True,
) -> None:
    """Evaluate every config of GRID on the gold set, track it in MLflow, promote a better champion, roll it out."""
    from evals.evaluate import run_evaluation
    from evals.grid import load_grid
    from sluice.cli_champion import roll_out
    from sluice.db import Database

    settings = load_settings()
    try:
        spec = load_grid(grid)
        with Database(settings) as db, _progress() as progress:
            task = progress.add_task("starting", total=None)

            def on_config(config, stage: str) -> None:
                progress.update(task, description=f"{stage}: {config.name}", completed=0, total=None)

            def on_question(config, n: int, total: int) -> None:
                progress.update(task, completed=n, total=total)

            report = run_evaluation(
                settings, db, spec, gold, promote=promote, on_config=on_config, on_question=on_question
            )
        _print_report(report, spec, settings)
        if report.promoted and rollout:
            with Database(settings) as db:
                roll_out(settings, db, None, f"promotion {report.promoted.event_id}")
    except SluiceError as exc:
        _fail(exc)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def _print_report(report, spec, settings) -> None:
    from evals.record import comparison_table

    data = comparison_table(report.results, spec)
    metric = spec.objective.metric
    cols = [c for c in data if c not in ("config_id", "name", f"{metric}_ci")]
    table = Table(title=f"evaluation {spec.name}: {spec.objective.direction} {metric}")
    for col in ("#", "config", f"{metric} (CI)", *cols[1:]):
        table.add_column(_SHORT.get(col, col), overflow="fold")
    for i in range(len(report.results)):
        objective = f"{_fmt(data[metric][i])} {data[f'{metric}_ci'][i]}"
        table.add_row(str(i + 1), data["config_id"][i][:8], objective, *(_fmt(data[c][i]) for c in cols[1:]))
    console.print(table)
    for i, result in enumerate(report.results, 1):
        console.print(f"  {i}: {result.config.name}  (config {result.config.config_id}, run {result.run_id})")
    _print_routing(report, spec)
    skipped = report.results[0].skipped if report.results else []
    if skipped:
        console.print(f"skipped (no judge endpoint, SLUICE_JUDGE_BASE_URL unset): {', '.join(skipped)}")
    console.print(f"MLflow parent run {report.parent_run_id} at {settings.tracking_uri}")
    verdict = "[green]promoted[/]" if report.promoted else "[yellow]not promoted[/]"
    console.print(f"{verdict}: {report.decision.reason}")


def _print_routing(report, spec) -> None:
    from evals import routing

    if routing.is_routed(report.results):
        console.print("[bold]routing[/] (share of calls per tier, cost and quality against all-large):")
        for row in routing.routing_rows(report.results, spec.objective.metric):
            console.print(f"  {routing.describe(row, spec.objective.metric)}")


_SHORT = {
    "hit_at_5": "hit@5",
    "ndcg_at_10": "nDCG@10",
    "evidence_recall_at_5": "ev.rec@5",
    "semantic_similarity": "sem.sim",
    "rouge_l": "ROUGE-L",
    "latency_total_p95_ms": "p95 ms",
    "cost_per_answer": "cost/ans",
}


def eval_demo(
    question: Annotated[str, typer.Option(help="Question answered with the champion.")] = (
        "How many days do I have to return an unridden bike for a full refund?"
    ),
) -> None:
    """Evaluate two chunking strategies on the sample gold set, promote the winner, answer with the champion."""
    from evals.grid import load_grid
    from sluice.settings import PROJECT_ROOT

    grid = PROJECT_ROOT / "evals" / "grids" / "sample.yaml"
    eval_command(grid, None, True, True)
    _answer_with_champion(question, load_grid(grid).tenant)


def _answer_with_champion(question: str, tenant: str) -> None:
    from sluice import champion
    from sluice.db import Database
    from sluice.served import served
    from tasks.answer import answer_question
    from tasks.embed import get_embedder
    from tasks.routed import answerer_for

    settings = load_settings()
    try:
        with Database(settings) as db:
            if champion.current_champion_id(db) is None:
                raise SluiceError("no champion was promoted: see the decision above")
            config = served(settings, db, tenant).config
            embedder = get_embedder(config.embedder, settings.embed_batch_size)
            with closing(answerer_for(settings, config, embedder)) as answerer:
                result = answer_question(db, tenant, config, embedder, question, answerer=answerer)
    except SluiceError as exc:
        _fail(exc)
    console.print(
        f"[bold]champion {config.config_id}[/] answers:\n[bold]Q:[/] {question}\n[bold]A:[/] {result.answer.text}"
    )


def register_eval_commands(app: typer.Typer) -> None:
    """Add `eval`, `eval-demo` and `champion` to the main CLI."""
    from sluice.cli_champion import champion_app

    app.command("eval")(eval_command)
    app.command("eval-demo")(eval_demo)
    app.add_typer(champion_app, name="champion")
