"""What a user sees from the CLI in a log: no dependency noise, progress as plain lines, a bar on a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from cli.common import StageProgress
from sluice.settings import QUIET_ENV


def test_commands_print_no_warning_a_user_cannot_act_on(migrated, cli, new_tenant, tmp_path):
    """`sluice ARGS` as a user runs it into a log: no terminal, nothing of ours in its environment."""
    unquiet = {name: None for name in (*QUIET_ENV, "XDG_RUNTIME_DIR")}
    # A new MLflow database: MLflow creates its tables (and would say so).
    fresh = migrated.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    (tmp_path / "bees.md").write_text("# Bees\n\nHoneybees tell their hive mates where flowers are by dancing.\n")
    ingest = cli.run("ingest", str(tmp_path / "bees.md"), "--tenant", new_tenant("quiet"), settings=fresh, env=unquiet)
    assert ingest.returncode == 0, ingest.stderr
    show = cli.run("champion", "show", settings=fresh, env=unquiet)
    assert show.returncode == 0, show.stderr
    for result in (ingest, show):
        output = result.stdout + result.stderr
        assert "XDG_RUNTIME_DIR" not in output  # the embedded server's lock-file folder
        assert "Loading weights" not in output  # the model-weights bar of every load
        assert "INFO mlflow" not in output and "Downloading artifacts" not in output


def _log() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=80), out


def test_progress_in_a_log_is_a_line_per_stage_and_where_it_ended():
    console, out = _log()
    with StageProgress(console, every_s=3600) as progress:
        progress.update("loading")
        for n in range(1, 101):
            progress.update("embedding the corpus", n, 100)
        progress.update("dense retrieval", 1, 7)
    lines = [line.rsplit(" (", 1)[0] for line in out.getvalue().splitlines()]
    assert lines == ["loading", "embedding the corpus: 1/100", "embedding the corpus: 100/100", "dense retrieval: 1/7"]


def test_progress_repeats_a_line_after_its_interval():
    console, out = _log()
    with StageProgress(console, every_s=0) as progress:
        for n in range(1, 4):
            progress.update("answering", n, 10)
    assert len(out.getvalue().splitlines()) == 3


def test_progress_on_a_terminal_is_a_bar_not_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with StageProgress(console) as progress:
        progress.update("embedding the corpus", 50, 100)
    assert "embedding the corpus" in out.getvalue() and "50/100" in out.getvalue()
    assert "(0 s)" not in out.getvalue()  # the plain-line form was not used


def _report():
    """An evaluation report of two configs, as `run_evaluation` returns it (scores made up)."""
    from evals.grid import Decision, Grid
    from evals.results import ConfigResult, Report
    from sluice.config import PipelineConfig

    spec = Grid.model_validate({"name": "render", "tenant": "t", "corpus": {"path": "x"}, "chunkers": [{}]})
    summary = {"hit_at_5": 1.0, "mrr": 0.9, "ndcg_at_10": 0.95, "evidence_recall_at_5": 0.99}
    summary |= {"semantic_similarity": 0.7, "rouge_l": 0.35, "latency_total_p95_ms": 1500.0, "cost_per_answer": 3e-4}
    configs = [PipelineConfig(name=f"recursive(chunk_size={n}) dense(k=10) single") for n in (300, 1000)]
    results = [
        ConfigResult(c, [], summary, {"ndcg_at_10": (0.9, 1.0)}, [], run_id=f"run{i}") for i, c in enumerate(configs)
    ]
    return Report("parent0123", results, Decision(False, "not significant", None)), spec


def test_eval_report_is_a_table_on_a_wide_terminal_and_blocks_on_a_narrow_one(tmp_path):
    from cli.eval_report import print_comparison, write_full_table
    from evals.record import comparison_table

    report, spec = _report()
    data = comparison_table(report.results, spec)
    path = write_full_table(tmp_path, report, spec, data)
    outputs = {}
    for width in (160, 80):
        out = io.StringIO()
        print_comparison(Console(file=out, force_terminal=True, width=width), report, spec, data, path)
        outputs[width] = out.getvalue()
    assert "┃" in outputs[160] and "nDCG@10" in outputs[160]  # it fits: the table
    assert "┃" not in outputs[80] and "2. recursive(chunk_size=1000) dense(k=10) single" in outputs[80]
    assert f"full table: {path}" in outputs[80] and path.name == "render-parent01.md"


def test_eval_report_counts_judge_failures_per_config(monkeypatch):
    """A config judged with failures gets a line naming them per metric; one without a judge gets none."""
    from types import SimpleNamespace

    from cli import eval as eval_command

    console, out = _log()
    monkeypatch.setattr(eval_command, "console", console)
    judged = {"judge_asked_faithfulness": 16.0, "judge_failures_faithfulness": 5.0}
    judged |= {"judge_failure_share_faithfulness": 5 / 16, "judge_asked_answer_relevancy": 16.0}
    judged |= {"judge_failures_answer_relevancy": 0.0, "judge_failure_share_answer_relevancy": 0.0}
    results = [SimpleNamespace(summary={"mrr": 1.0}), SimpleNamespace(summary={"mrr": 1.0, **judged})]
    eval_command._print_judge_failures(SimpleNamespace(results=results))
    assert out.getvalue().splitlines() == [
        "judge failures, config 2 (not scored, not 0): faithfulness 5/16, answer_relevancy 0/16"
    ]
