"""Routing policies as a dimension of the evaluation grid: all-large vs rules on two fake-OpenAI tiers.

Real Postgres, real MLflow (sqlite in tmp_path), real HTTP servers speaking chat completions.
"""

from __future__ import annotations

import json

import pytest

from evals.grid import load_grid
from tests.conftest import SAMPLE
from tests.fake_openai import Behaviour, FakeOpenAI, two_tiers

pytestmark = pytest.mark.usefixtures("no_champion_left")

GOLD = [json.loads(line) for line in (SAMPLE / "gold.jsonl").read_text().splitlines() if line.strip()]
GOLD = [g for g in GOLD if all(e["source_id"].endswith(".md") for e in g["evidence"])]
MAX_SMALL_WORDS = 9  # the one rule that decides here (documents and question types are switched off)
PRICES = {
    "small-m": {"input_per_mtok": 1, "output_per_mtok": 2},
    "large-m": {"input_per_mtok": 10, "output_per_mtok": 30},
}


@pytest.fixture()
def tiers():
    # The large "model" repeats the gold answer of the returns question; the small one says something else.
    with (
        FakeOpenAI(Behaviour(text="I cannot answer from the documents [1] .", prompt_tokens=200)) as small,
        FakeOpenAI(Behaviour(text=GOLD[0]["reference_answer"] + " [1]", prompt_tokens=200)) as large,
    ):
        yield small, large


def _grid(tmp_path, small: FakeOpenAI, large: FakeOpenAI):
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(g) + "\n" for g in GOLD))
    generator = two_tiers(small, large, ("small-m", "large-m"), PRICES)
    rules = {"policy": "rules", "max_small_words": MAX_SMALL_WORDS, "max_small_documents": 20}
    rules["large_question_types"] = []
    grid = {
        "name": "routing",
        "tenant": "eval-routing",
        "corpus": {"kind": "files", "path": str(SAMPLE / "corpus" / "*.md")},
        "gold": str(gold),
        "base": {"generator": generator},
        "chunkers": [{"kind": "recursive"}],
        "retrieval": [{"mode": "dense", "k": 5}],
        "routing": [{"policy": "single", "tier": "large"}, rules],
        "objective": {"metric": "ndcg_at_10", "max_cost_per_answer": 1.0, "max_p95_latency_ms": 600000},
        "promotion": {"level": 0.05, "n_boot": 200},
    }
    path = tmp_path / "routing.yaml"
    path.write_text(json.dumps(grid))
    return load_grid(path)


def test_grid_compares_routing_policies_on_quality_share_cost_and_latency(migrated, db, tmp_path, tiers):
    from evals import routing
    from evals.evaluate import run_evaluation

    small, large = tiers
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = migrated.model_copy(update={"mlflow_tracking_uri": uri, "mlflow_artifact_dir": tmp_path / "art"})
    report = run_evaluation(settings, db, _grid(tmp_path, small, large), promote=False)
    by_policy = {routing.policy_label(r.config): r for r in report.results}
    assert set(by_policy) == {"all-large", "rules"}
    n = len(GOLD)
    long_questions = sum(len(g["question"].split()) > MAX_SMALL_WORDS for g in GOLD)
    assert 0 < long_questions < n, "the gold set must exercise both tiers"
    tiers_seen = _assert_tier_shares(by_policy, small, large, long_questions)
    rows = {row["policy"]: row for row in routing.routing_rows(report.results, "ndcg_at_10")}
    rules = rows["rules"]
    _assert_cost(rules, small, large, long_questions)
    assert rows["all-large"]["cost_change_vs_all_large"] == 0.0
    # Retrieval is the same under both policies; the answers (and so answer similarity) are the same
    # exactly where both sent the question to the large tier.
    assert rules["ndcg_at_10_change_vs_all_large"] == 0.0
    sims = [[r.scores["semantic_similarity"] for r in by_policy[p].records] for p in ("rules", "all-large")]
    same = [a == pytest.approx(b) for a, b in zip(*sims, strict=True)]
    assert same == [t == "large" for t in tiers_seen]
    assert rules["semantic_similarity_change_vs_all_large"] == pytest.approx(sum(sims[0]) / n - sum(sims[1]) / n)
    assert rules["latency_ttft_p50_ms"] > 0 and rules["latency_total_p95_ms"] >= rules["latency_total_p50_ms"]
    line = routing.describe(rules, "ndcg_at_10")
    assert line.startswith(f"rules: {long_questions / n:.0%} large, {(n - long_questions) / n:.0%} small, cost -")
    _assert_tracked(uri, report, by_policy["rules"], line, 1 - long_questions / n)


def _assert_tier_shares(by_policy: dict, small: FakeOpenAI, large: FakeOpenAI, long_questions: int) -> list[str]:
    """Each policy's share per tier is what its router decided and what the servers saw; the rules' tiers."""
    n = len(GOLD)
    assert by_policy["all-large"].summary["tier_share_large"] == 1.0
    assert by_policy["rules"].summary["tier_share_large"] == pytest.approx(long_questions / n)
    assert by_policy["rules"].summary["tier_share_small"] == pytest.approx(1 - long_questions / n)
    assert (small.stats.requests, large.stats.requests) == (n - long_questions, n + long_questions)
    tiers_seen = [r.generation.tier for r in by_policy["rules"].records]
    assert tiers_seen == ["large" if len(g["question"].split()) > MAX_SMALL_WORDS else "small" for g in GOLD]
    return tiers_seen


def _assert_cost(rules: dict, small: FakeOpenAI, large: FakeOpenAI, long_questions: int) -> None:
    """Cost: the servers' usage at each model's price, so routing to small must save exactly this much."""
    n = len(GOLD)
    words = {t: len(text.split(" ")) for t, text in (("small", small.behaviour.text), ("large", large.behaviour.text))}
    cost = {
        t: (200 * PRICES[f"{t}-m"]["input_per_mtok"] + words[t] * PRICES[f"{t}-m"]["output_per_mtok"]) / 1e6
        for t in words
    }
    expected = ((n - long_questions) * cost["small"] + long_questions * cost["large"]) / n
    assert rules["cost_per_answer"] == pytest.approx(expected)
    assert rules["cost_change_vs_all_large"] == pytest.approx(expected / cost["large"] - 1)


def _assert_tracked(uri: str, report, rules_result, line: str, small_share: float) -> None:
    """The parent run carries the summary line and the routing table; the rules run its share and policy."""
    from mlflow import MlflowClient

    mlc = MlflowClient(uri)
    parent = mlc.get_run(report.parent_run_id)
    assert line in parent.data.tags["routing.summary"].splitlines()
    run = mlc.get_run(rules_result.run_id)
    assert run.data.metrics["tier_share_small"] == pytest.approx(small_share)
    assert run.data.params["routing.policy"] == "rules"
    artifacts = {a.path for a in mlc.list_artifacts(report.parent_run_id)}
    assert "routing.json" in artifacts


def test_a_question_no_tier_can_answer_is_recorded_and_the_evaluation_goes_on(migrated, db, tmp_path, tiers):
    """The large tier fails the first question (500, no fallback): that question is recorded as failed with
    its retrieval still scored and 0 on every answer metric; the other questions are answered as usual."""
    from evals.evaluate import run_evaluation
    from evals.ragas_metrics import ANSWER_METRICS

    small, large = tiers
    large.behaviour.fail_next = 1
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = migrated.model_copy(update={"mlflow_tracking_uri": uri, "mlflow_artifact_dir": tmp_path / "art"})
    grid = _grid(tmp_path, small, large)
    grid = grid.model_copy(update={"routing": grid.routing[:1]})  # all-large only
    report = run_evaluation(settings, db, grid, promote=False)
    (result,) = report.results
    failed = [r for r in result.records if r.failure is not None]
    assert len(failed) == 1 and "every tier failed" in failed[0].failure and failed[0].answer == ""
    assert result.summary["generation_failures"] == 1 and result.summary["questions"] == len(GOLD)
    assert failed[0].hits and "mrr" in failed[0].scores, "retrieval ran and is scored"
    assert all(failed[0].scores[m] == 0.0 for m in ANSWER_METRICS if m in failed[0].scores)
    answered = [r for r in result.records if r.failure is None]
    assert len(answered) == len(GOLD) - 1 and all(r.generation.tier == "large" for r in answered)
