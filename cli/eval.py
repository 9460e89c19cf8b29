"""`sluice eval` and `sluice champion`: compare pipeline configs and manage the serving champion."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.common import StageProgress, console
from cli.common import fail as _fail
from cli.eval_report import fmt, print_comparison, verdict, write_full_table
from sluice.errors import SluiceError
from sluice.settings import load_settings

champion_app = typer.Typer(
    help="The champion config serving uses: show, promote a run, roll back.", no_args_is_help=True
)


def eval_command(
    grid: Annotated[Path, typer.Argument(help="Experiment grid YAML (see evals/grids/).")],
    gold: Annotated[Optional[str], typer.Option("--gold", help="Gold set JSONL; overrides the grid's `gold`.")] = None,
    promote: Annotated[bool, typer.Option("--promote/--no-promote", help="Promote a significant winner.")] = True,
) -> None:
    """Evaluate every config of GRID on the gold set, track it in MLflow, and promote a better champion."""
    _evaluate(grid, gold, promote)


def _evaluate(grid: Path, gold: str | None, promote: bool) -> None:
    """Run the evaluation with progress and print its report."""
    from evals.evaluate import run_evaluation
    from evals.grid import load_grid
    from sluice import champion
    from sluice.db import Database

    settings = load_settings()
    try:
        spec = load_grid(grid)
        with Database(settings) as db, StageProgress() as progress:
            stage: dict[str, str] = {}

            def on_config(config, step: str) -> None:
                stage["now"] = f"{'indexing' if step == 'index' else 'answering with'} {config.name}"
                progress.update(stage["now"])

            def on_question(config, n: int, total: int) -> None:
                progress.update(stage["now"], n, total)

            report = run_evaluation(
                settings, db, spec, gold, promote=promote, on_config=on_config, on_question=on_question
            )
            champion_id = champion.current_champion_id(db)
    except SluiceError as exc:
        _fail(exc)
    _print_report(report, spec, settings, champion_id)


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
    console.print(f"MLflow parent run {report.parent_run_id} at {settings.tracking_uri}", soft_wrap=True)
    console.print(verdict(report, spec, champion_id), soft_wrap=True, highlight=False)


def _print_routing(report, spec) -> None:
    from evals import routing

    if routing.is_routed(report.results):
        console.print("[bold]routing[/] (share of calls per tier, cost and quality against all-large):")
        for row in routing.routing_rows(report.results, spec.objective.metric):
            console.print(f"  {routing.describe(row, spec.objective.metric)}")


def _show(settings) -> None:
    from evals import tracking
    from sluice import champion
    from sluice.db import Database

    with Database(settings) as db:
        events = champion.history(db)
        live = champion.stack(events)
    table = Table(title="champion history (newest last)")
    for col in ("#", "action", "config id", "model version", "run", "evaluated on", "reason", "at"):
        table.add_column(col, overflow="fold")
    for e in events:
        when = e.created_at.strftime("%Y-%m-%d %H:%M")
        table.add_row(
            str(e.event_id),
            e.action,
            e.config_id,
            fmt(e.model_version),
            fmt(e.mlflow_run_id),
            fmt(e.evaluated_on),
            e.reason,
            when,
        )
    console.print(table)
    alias = tracking.champion_alias_version(tracking.client(settings), settings.registered_model)
    if live:
        console.print(
            f"champion: config {live[-1].config_id} (model version {live[-1].model_version}); "
            f"MLflow alias 'champion' -> version {alias}"
        )
    else:
        console.print("no champion yet: run `sluice eval GRID.yaml` or `sluice champion promote RUN`")


@champion_app.command("show")
def champion_show() -> None:
    """Show the current champion and its history."""
    try:
        _show(load_settings())
    except SluiceError as exc:
        _fail(exc)


@champion_app.command("promote")
def champion_promote(
    run: Annotated[str, typer.Argument(help="MLflow run id of a config run (a nested run of `sluice eval`).")],
    reason: Annotated[str, typer.Option(help="Why, for the history.")] = "manual promotion",
) -> None:
    """Make the config evaluated by RUN the champion."""
    from evals.promotion import promote_run
    from sluice.db import Database

    settings = load_settings()
    try:
        with Database(settings) as db:
            event = promote_run(settings, db, run, reason)
    except SluiceError as exc:
        _fail(exc)
    console.print(f"champion: config {event.config_id} (model version {event.model_version})")


@champion_app.command("rollback")
def champion_rollback(reason: Annotated[str, typer.Option(help="Why, for the history.")] = "manual rollback") -> None:
    """Restore the previous champion."""
    from evals.promotion import rollback
    from sluice.db import Database

    settings = load_settings()
    try:
        with Database(settings) as db:
            event = rollback(settings, db, reason)
    except SluiceError as exc:
        _fail(exc)
    console.print(f"champion restored: config {event.config_id} (model version {event.model_version})")


def eval_demo(
    question: Annotated[str, typer.Option(help="Question answered with the champion.")] = (
        "How many days do I have to return an unridden bike for a full refund?"
    ),
) -> None:
    """Evaluate two chunking strategies on the sample gold set, promote the winner, answer with the champion."""
    from evals.grid import load_grid
    from sluice.settings import PROJECT_ROOT

    grid = PROJECT_ROOT / "evals" / "grids" / "sample.yaml"
    _evaluate(grid, None, True)
    _answer_with_champion(question, load_grid(grid).tenant)


def _answer_with_champion(question: str, tenant: str) -> None:
    from sluice import champion
    from sluice.db import Database
    from tasks.answer import answer_question
    from tasks.embed import get_embedder
    from tasks.routed import answerer_for

    settings = load_settings()
    try:
        with Database(settings) as db:
            config = champion.current_champion(db)
            if config is None:
                raise SluiceError("no champion was promoted: see the decision above")
            embedder = get_embedder(config.embedder, settings.embed_batch_size)
            with closing(answerer_for(settings, config, embedder)) as answerer:
                result = answer_question(db, tenant, config, embedder, question, answerer=answerer)
    except SluiceError as exc:
        _fail(exc)
    # The evaluation's last line named the champion by id and parts: not again here.
    console.print(f"the champion answers:\n[bold]Q:[/] {question}\n[bold]A:[/] {result.answer.text}")


def register_eval_commands(app: typer.Typer) -> None:
    """Add `eval`, `eval-demo` and `champion` to the main CLI."""
    app.command("eval")(eval_command)
    app.command("eval-demo")(eval_demo)
    app.add_typer(champion_app, name="champion")
