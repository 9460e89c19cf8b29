"""Evaluation end to end on real Postgres and a real MLflow sqlite store in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from evals.grid import expand, load_grid
from sluice import champion
from tests.conftest import SAMPLE
from tests.judge_server import JudgeServer

pytestmark = pytest.mark.usefixtures("no_champion_left")

# The Markdown part of the sample corpus and the gold questions about it: quick to parse, 8 questions.
MD_GOLD = [json.loads(line) for line in (SAMPLE / "gold.jsonl").read_text().splitlines() if line.strip()]
MD_GOLD = [g for g in MD_GOLD if all(e["source_id"].endswith(".md") for e in g["evidence"])]
OFFLINE = ("hit_at_5", "mrr", "ndcg_at_10", "evidence_recall_at_5", "non_llm_context_precision")
OFFLINE += ("non_llm_context_recall", "semantic_similarity", "rouge_l", "chrf")
JUDGED = ("faithfulness", "answer_relevancy", "llm_context_precision")


@pytest.fixture(scope="module")
def env(migrated, tmp_path_factory):
    """Settings with MLflow in a temporary folder; the same through the environment for the flow."""
    tmp = tmp_path_factory.mktemp("eval")
    gold = tmp / "gold.jsonl"
    gold.write_text("".join(json.dumps(g) + "\n" for g in MD_GOLD))
    overrides = {"mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "mlflow_artifact_dir": tmp / "artifacts"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLUICE_DB_NAME", migrated.db_name)
        mp.setenv("SLUICE_MLFLOW_TRACKING_URI", overrides["mlflow_tracking_uri"])
        mp.setenv("SLUICE_MLFLOW_ARTIFACT_DIR", str(overrides["mlflow_artifact_dir"]))
        yield migrated.model_copy(update=overrides), tmp, gold


def write_grid(tmp, name: str, chunkers: list[dict], retrieval: list[dict], metric: str, gold) -> str:
    path = tmp / f"{name}.yaml"
    grid = {
        "name": name,
        "tenant": f"eval-{name}",
        "corpus": {"kind": "files", "path": str(SAMPLE / "corpus" / "*.md")},
        "gold": str(gold),
        "chunkers": chunkers,
        "retrieval": retrieval,
        "objective": {"metric": metric, "max_cost_per_answer": 1.0, "max_p95_latency_ms": 600000},
        "promotion": {"level": 0.05, "n_boot": 1000},
    }
    path.write_text(json.dumps(grid))  # JSON is YAML
    return str(path)


def test_flow_logs_runs_metrics_and_artifacts(env, db):
    from mlflow import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.evaluate import evaluate

    settings, tmp, gold = env
    chunkers = [{"kind": "recursive", "chunk_size": 300, "chunk_overlap": 30}, {"kind": "recursive"}]
    grid_path = write_grid(tmp, "flow", chunkers, [{"mode": "dense", "k": 5}], "ndcg_at_10", gold)
    before = champion.current_champion_id(db)
    runs = REGISTRY.get_sample_value("sluice_eval_runs_total", {"outcome": "ok"}) or 0
    with prefect_test_harness(server_startup_timeout=180):  # the ephemeral server starts slowly on a busy machine
        out = evaluate(grid_path, roll_out=False)  # a rollout to every tenant of the test database: tests/test_rollout*
    assert REGISTRY.get_sample_value("sluice_eval_runs_total", {"outcome": "ok"}) == runs + 1
    ids = [c.config_id for c in expand(load_grid(grid_path))]
    mlc = MlflowClient(settings.tracking_uri)
    parent = mlc.get_run(out["parent_run_id"])
    children = mlc.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=50
    )
    assert sorted(r.data.tags["config_id"] for r in children) == sorted(set(ids) | ({before} - {None}))
    for run in children:
        metrics = run.data.metrics
        assert set(OFFLINE) <= set(metrics), set(OFFLINE) - set(metrics)
        assert not set(JUDGED) & set(metrics), "judged metrics must be absent without a judge, never 0"
        assert run.data.tags["ragas.skipped"] == ",".join(JUDGED)
        assert metrics["questions"] == len(MD_GOLD) and metrics["ndcg_at_10_ci_low"] <= metrics["ndcg_at_10"]
        assert {"latency_total_p95_ms", "latency_retrieve_p50_ms", "cost_per_answer"} <= set(metrics)
        assert 0 < metrics["cost_per_answer"] < 0.01 and run.data.params["chunker.kind"] == "recursive"
        assert {a.path for a in mlc.list_artifacts(run.info.run_id)} >= {"per_question.json", "pipeline"}
    plots = {a.path for a in mlc.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/metric_bars.png", "plots/quality_vs_cost.png", "plots/chunk_lengths.png"}
    table = json.loads((tmp / "artifacts").joinpath(parent.info.run_id, "artifacts", "comparison.json").read_text())
    assert len(table["data"]) == len(children)
    if out["promoted"]:
        assert champion.current_champion_id(db) == out["promoted"]


def test_a_flow_run_that_fails_closes_its_mlflow_parent_run(env, db):
    from mlflow import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.evaluate import evaluate

    settings, tmp, gold = env
    grid_path = write_grid(tmp, "broken", [{"kind": "recursive"}], [{"mode": "dense", "k": 5}], "ndcg_at_10", gold)
    grid = json.loads(Path(grid_path).read_text())
    # Answering needs a router model that is not there: the flow fails after the parent run was opened.
    tiers = {t: {"model": "m", "replicas": ["http://127.0.0.1:9/v1"]} for t in ("small", "large")}
    grid["base"] = {"generator": {"kind": "openai", "tiers": tiers}}
    grid["routing"] = [{"policy": "classifier", "model_path": str(tmp / "missing.npz"), "model_sha256": "0" * 64}]
    Path(grid_path).write_text(json.dumps(grid))
    with prefect_test_harness(server_startup_timeout=120):
        state = evaluate(grid_path, return_state=True)
    assert state.is_failed() and "missing.npz" in state.message
    mlc = MlflowClient(settings.tracking_uri)
    experiment = mlc.get_experiment_by_name(settings.mlflow_experiment)
    (parent,) = mlc.search_runs([experiment.experiment_id], "attributes.run_name = 'eval broken'")
    assert parent.info.status == "FAILED" and parent.info.end_time is not None


def _set_champion(db, config) -> None:
    champion.store_config(db, config)
    champion.record_promotion(db, config.config_id, run_id=None, model_version=None, evaluated_on=None, reason="test")


def test_forced_tie_does_not_promote(env, db):
    from evals.evaluate import run_evaluation

    settings, tmp, gold = env
    # Two configs that differ only in ef_search: same index, same hits, same scores on every question.
    retrieval = [{"mode": "dense", "k": 10, "ef_search": 100}, {"mode": "dense", "k": 10, "ef_search": 120}]
    chunkers = [{"kind": "recursive", "chunk_size": 100, "chunk_overlap": 0}]
    grid = load_grid(write_grid(tmp, "tie", chunkers, retrieval, "evidence_recall_at_10", gold))
    first, second = expand(grid)
    _set_champion(db, second)
    report = run_evaluation(settings, db, grid)
    assert report.decision.winner.config_id == first.config_id  # first declared wins the tie
    assert not report.decision.promote and report.promoted is None
    assert report.decision.p_value == 1.0 and "does not beat" in report.decision.reason
    assert champion.current_champion_id(db) == second.config_id


def test_clearly_better_config_is_promoted_then_rolled_back(env, db):
    from evals import tracking
    from evals.evaluate import run_evaluation
    from evals.promotion import rollback

    settings, tmp, gold = env
    # 100-character chunks: one chunk holds only part of a ~100-character gold quote, ten hold all of it.
    chunkers = [{"kind": "recursive", "chunk_size": 100, "chunk_overlap": 0}]
    retrieval = [{"mode": "dense", "k": 1}, {"mode": "dense", "k": 10}]
    grid = load_grid(write_grid(tmp, "better", chunkers, retrieval, "evidence_recall_at_10", gold))
    weak, strong = expand(grid)
    _set_champion(db, weak)
    report = run_evaluation(settings, db, grid)
    assert report.decision.promote, report.decision.reason
    assert report.promoted.config_id == strong.config_id == champion.current_champion(db).config_id
    assert report.decision.p_value < 0.05 and report.decision.mean_diff > 0
    mlc = tracking.client(settings)
    version = mlc.get_model_version_by_alias(settings.registered_model, "champion")
    assert version.tags["config_id"] == strong.config_id and version.run_id == report.promoted.mlflow_run_id
    assert tracking.run_config(mlc, version.run_id) == strong
    restored = rollback(settings, db)
    assert restored.config_id == weak.config_id == champion.current_champion_id(db)


def test_judge_endpoint_produces_judged_metrics(env, db):
    from evals import runner
    from evals.record import comparison_table

    settings, tmp, gold = env
    grid = load_grid(write_grid(tmp, "judge", [{"kind": "recursive"}], [{"mode": "dense", "k": 3}], "mrr", gold))
    (config,) = expand(grid)
    items, docs = runner.load_items(settings, grid, None)
    runner.ensure_index(settings, db, grid, config, docs)
    items = runner.resolve_items(db, grid, items)[:3]
    with JudgeServer() as server:
        judged = settings.model_copy(update={"judge_base_url": server.base_url, "judge_model": "local-judge"})
        result = runner.evaluate_config(judged, db, grid, config, items)
    assert result.skipped == []
    for name in JUDGED:
        assert 0.0 <= result.summary[name] <= 1.0, name
        # This judge always answers in the schema: no failures, counted over every question asked.
        assert (result.summary[f"judge_asked_{name}"], result.summary[f"judge_failures_{name}"]) == (3, 0), name
    table = comparison_table([result], grid)
    assert {*JUDGED, *(f"judge_failure_share_{n}" for n in JUDGED)} <= set(table)
    assert table["judge_failure_share_faithfulness"] == [0.0]
    assert result.summary["faithfulness"] > 0  # extractive answers quote the contexts
    assert all(path.endswith("/chat/completions") for path, _ in server.requests)
    assert any(body.get("n", 1) > 1 for _, body in server.requests)  # ResponseRelevancy asks for several


def test_covid_qa_text_ingest_keeps_offsets(env, db, embedder, pipeline, dataset):
    from evals.gold import load_covid_qa, resolve_in_db
    from sluice.db import create_tenant
    from tasks.ingest_text import ingest_texts

    docs, items = load_covid_qa(dataset("covid_qa"), max_docs=1)
    create_tenant(db, "eval-covid-align")
    summary = ingest_texts(db, "eval-covid-align", pipeline, embedder, [(d.source_id, d.text) for d in docs])
    assert summary.ingested == 1 and summary.failed == 0
    with db.tenant("eval-covid-align") as conn:
        stored = conn.execute("SELECT text FROM documents WHERE source_id = %s", (docs[0].source_id,)).fetchone()[0]
    assert stored == docs[0].text
    # Quotes resolved against the stored text land on the given answer offsets.
    unresolved = [
        i.__class__(i.id, i.question, i.reference, tuple(e.__class__(e.source_id, e.quote) for e in i.evidence))
        for i in items
    ]
    resolved = resolve_in_db(db, "eval-covid-align", unresolved)
    exact = sum(r.spans == i.spans for r, i in zip(resolved, items, strict=True))
    assert exact >= 0.9 * len(items)  # the rest are answers whose text also occurs earlier in the article
