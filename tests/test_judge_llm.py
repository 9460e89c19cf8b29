"""The RAGAS judge against a real llama.cpp server (SmolLM2-135M, the `llm` extra).

Every judged metric gives each question a score or a counted failure (never both, never neither), and a
judge whose every reply is malformed (cut off after one token) costs the questions their judged scores,
counted, and nothing else: the run goes on and the offline metrics are all there.
"""

from __future__ import annotations

import math

import pytest

from evals.gold import GoldItem
from evals.metrics import QuestionRecord, RetrievedSpan
from evals.ragas_metrics import RAGAS_METRICS, JudgeConfig, judge_failure_summary, score_ragas
from tasks.llm.local import missing

MISSING = missing("smollm2-135m")
# A mark, not a module-level skip: a clone without the extra still collects every test (tests/test_fresh_clone.py).
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no local model server to judge: {MISSING}")

JUDGED = [name for name, spec in RAGAS_METRICS.items() if spec.judged]
OFFLINE = [name for name, spec in RAGAS_METRICS.items() if not spec.judged]
# RAGAS's answer relevancy is a mean cosine similarity: below 0 when the judge's question is unrelated.
LOW = {"answer_relevancy": -1.0}
FACTS = [
    ("How long is the warranty on a carbon fibre frame?", "Carbon fibre frames carry a lifetime warranty."),
    ("How many days do I have to return an unridden bike?", "Unridden bikes can be returned within 45 days."),
]


@pytest.fixture(scope="module")
def judge_url(settings):
    from tasks.llm.local import start_server

    with start_server("smollm2-135m", settings.data_dir, threads=2) as server:
        yield server.base_url


def records(unanswered: bool = False) -> list[QuestionRecord]:
    out = []
    for i, (question, fact) in enumerate(FACTS):
        item = GoldItem(f"q{i}", question, fact, reference_contexts=(fact,))
        hits = [RetrievedSpan("policy.md", 0, len(fact), fact)]
        out.append(QuestionRecord(item, hits, fact, {"total": 1.0}))
    if unanswered:
        item = GoldItem("q-none", "Who sells the spare parts?", "The workshop does.", reference_contexts=("x",))
        hits = [RetrievedSpan("parts.md", 0, 25, "The workshop sells parts.")]
        out.append(QuestionRecord(item, hits, "", {}, failure="every tier failed"))
    return out


def test_real_judge_scores_or_counts_a_failure_for_every_question(judge_url, embedder):
    answered = records()
    judge = JudgeConfig(judge_url, "smollm2-135m", timeout_s=300, max_tokens=160)
    assert score_ragas(answered, embedder, judge) == []
    summary = judge_failure_summary(answered)
    for name in JUDGED:
        scored = [r for r in answered if not math.isnan(r.scores[name])]
        failed = [r for r in answered if name in r.judge_failures]
        assert not set(map(id, scored)) & set(map(id, failed)), f"{name}: a question both scored and failed"
        assert len(scored) + len(failed) == len(answered) == summary[f"judge_asked_{name}"], name
        assert summary[f"judge_failures_{name}"] == len(failed), name
        assert summary[f"judge_failure_share_{name}"] == len(failed) / len(answered), name
        assert all(LOW.get(name, 0.0) <= r.scores[name] <= 1.0 for r in scored), (name, [r.scores for r in scored])


def test_malformed_judge_output_is_counted_and_the_run_goes_on(judge_url, embedder):
    """One token per reply: no judge reply can be a whole JSON object, so every judged score fails, counted."""
    batch = records(unanswered=True)
    judge = JudgeConfig(judge_url, "smollm2-135m", timeout_s=300, max_tokens=1)
    assert score_ragas(batch, embedder, judge) == []
    summary = judge_failure_summary(batch)
    for name in JUDGED:
        asked = [r for r in batch if r.failure is None or not RAGAS_METRICS.get(name).scores_answer]
        assert summary[f"judge_asked_{name}"] == summary[f"judge_failures_{name}"] == len(asked), name
        assert summary[f"judge_failure_share_{name}"] == 1.0, name
        for r in asked:
            assert math.isnan(r.scores[name]) and r.judge_failures[name], (name, r.item.id)
    for r in batch[:2]:
        assert all(not math.isnan(r.scores[name]) for name in OFFLINE), r.scores
