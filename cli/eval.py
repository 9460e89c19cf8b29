"""`sluice eval` and `sluice champion`: compare pipeline configs and manage the serving champion."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import StageProgress, console
from cli.eval_report import print_comparison, verdict, write_full_table
from sluice.errors import SluiceError
from sluice.settings import load_settings


def eval_command(
    grid: Annotated[Path, typer.Argument(help="Experiment grid YAML (see evals/grids/).")],
    gold: Annotated[Optional[str], typer.Option("--gold", help="Gold set JSONL; overrides the grid's `gold`.")] = None,
    promote: Annotated[bool, typer.Option("--promote/--no-promote", help="Promote a significant winner.")] = True,
    rollout: Annotated[bool, typer.Option("--rollout/--no-rollout", help="Roll a promoted winner out.")] = True,
) -> None:
    """Evaluate every config of GRID on the gold set, track it in MLflow, promote a better champion, roll it out."""
    _evaluate(grid, gold, promote, rollout)


def _evaluate(grid: Path, gold: str | None, promote: bool, rollout: bool = True) -> None:
    """Run the evaluation with progress and print its report."""
    from cli.champion import roll_out
    from evals.evaluate import run_evaluation
    from evals.grid import load_grid
    from sluice import champion
    from sluice.db import Database

    settings = load_settings()
    spec = load_grid(grid)
    with Database(settings) as db, StageProgress() as progress:
        stage: dict[str, str] = {}

        def on_config(config, step: str) -> None:
            stage["now"] = f"{'indexing' if step == 'index' else 'answering with'} {config.name}"
            progress.update(stage["now"])

        def on_question(config, n: int, total: int) -> None:
            progress.update(stage["now"], n, total)

        report = run_evaluation(settings, db, spec, gold, promote=promote, on_config=on_config, on_question=on_question)
        champion_id = champion.current_champion_id(db)
    _print_report(report, spec, settings, champion_id)
    if report.promoted and rollout:
        with Database(settings) as db:
            roll_out(settings, db, None, f"promotion {report.promoted.event_id}")


def _print_report(report, spec, settings, champion_id: str | None) -> None:
    from evals.record import comparison_table

    data = comparison_table(report.results, spec)
    path = write_full_table(settings.data_dir / "evaluations", report, spec, data)
    print_comparison(console, report, spec, data, path)
    _print_routing(report, spec)
    skipped = report.results[0].skipped if report.results else []
    if skipped:
        names = ", ".join(skipped)
        console.print(f"not scored (set SLUICE_JUDGE_BASE_URL to an OpenAI-compatible judge): {names}", soft_wrap=True)
    _print_judge_failures(report)
    console.print(f"MLflow parent run {report.parent_run_id} at {settings.tracking_uri}", soft_wrap=True)
    console.print(verdict(report, spec, champion_id), soft_wrap=True, highlight=False)


def _print_judge_failures(report) -> None:
    """Per config, how many questions each judged metric's judge failed on (those scores are missing, not 0)."""
    for i, result in enumerate(report.results, 1):
        s = result.summary
        counts = [
            f"{name.removeprefix('judge_failures_')} {s[name]:.0f}/{s[name.replace('failures', 'asked', 1)]:.0f}"
            for name in s
            if name.startswith("judge_failures_")
        ]
        if counts:
            console.print(f"judge failures, config {i} (not scored, not 0): {', '.join(counts)}", soft_wrap=True)


def _print_routing(report, spec) -> None:
    from evals import routing

    if routing.is_routed(report.results):
        console.print("[bold]routing[/] (share of calls per tier, cost and quality against all-large):")
        for row in routing.routing_rows(report.results, spec.objective.metric):
            console.print(f"  {routing.describe(row, spec.objective.metric)}")


def eval_demo(
    question: Annotated[str, typer.Option(help="Question answered with the champion.")] = (
        "How many days do I have to return an unridden bike for a full refund?"
    ),
) -> None:
    """Evaluate two chunking strategies on the sample gold set, promote the winner, answer with the champion."""
    from evals.grid import load_grid
    from sluice.settings import PROJECT_ROOT

    grid = PROJECT_ROOT / "evals" / "grids" / "sample.yaml"
    _evaluate(grid, None, True, True)
    _answer_with_champion(question, load_grid(grid).tenant)


def _answer_with_champion(question: str, tenant: str) -> None:
    from sluice import champion
    from sluice.db import Database
    from sluice.served import served
    from tasks.answer import answer_question
    from tasks.embed import get_embedder
    from tasks.routed import answerer_for

    settings = load_settings()
    with Database(settings) as db:
        if champion.current_champion_id(db) is None:
            raise SluiceError("no champion was promoted: see the decision above")
        config = served(settings, db, tenant).config
        embedder = get_embedder(config.embedder, settings.embed_batch_size, settings.data_dir)
        with closing(answerer_for(settings, config, embedder)) as answerer:
            result = answer_question(db, tenant, config, embedder, question, answerer=answerer)
    # The evaluation's last line named the champion by id and parts: not again here.
    console.print(f"the champion answers:\n[bold]Q:[/] {question}\n[bold]A:[/] {result.answer.text}")


def register_eval_commands(app: typer.Typer) -> None:
    """Add `eval`, `eval-demo` and `champion` to the main CLI."""
    from cli.champion import champion_app

    app.command("eval")(eval_command)
    app.command("eval-demo")(eval_demo)
    app.add_typer(champion_app, name="champion")
