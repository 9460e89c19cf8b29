"""RAGAS metrics are rows of one spec: each row's flags agree with the metric and decide how it is scored."""

from __future__ import annotations

import math

import pytest

from evals.gold import GoldItem
from evals.grid import PER_QUESTION_METRICS
from evals.metrics import QuestionRecord, RetrievedSpan
from evals.ragas_metrics import (
    ANSWER_METRICS,
    RAGAS_METRICS,
    JudgeConfig,
    judge_failure_summary,
    ragas_embeddings,
    score_ragas,
    zero_failed_answers,
)
from tests.judge_server import JudgeServer

pytestmark = pytest.mark.usefixtures("settings")  # loading settings switches RAGAS telemetry off, as entry points do
SPECS = [spec for _, spec in RAGAS_METRICS.items()]
CONTEXT = "The frame is covered by a five year warranty. Wheels are covered for two years."


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_each_row_flags_what_its_ragas_metric_requires(spec, embedder):
    """A row that forgot a flag would score silently wrong: check it against the columns RAGAS declares."""
    import ragas.metrics
    from ragas.metrics.base import MetricType, MetricWithLLM

    metric = spec.build(ragas.metrics, ragas_embeddings(embedder), None)
    columns = metric.required_columns[MetricType.SINGLE_TURN.name]
    assert spec.judged == isinstance(metric, MetricWithLLM)
    assert spec.scores_answer == ("response" in columns)
    assert spec.reference_contexts == ("reference_contexts" in columns)
    assert spec.name in PER_QUESTION_METRICS and (spec.name in ANSWER_METRICS) == spec.scores_answer


def _record(
    item_id: str, reference_contexts: tuple[str, ...], failure: str | None = None, about: str = "frame"
) -> QuestionRecord:
    item = GoldItem(
        item_id,
        f"How long is the {about} warranty?",
        f"The {about} has a five year warranty.",
        reference_contexts=reference_contexts,
    )
    hits = [RetrievedSpan("manual.md", 0, len(CONTEXT), CONTEXT)]
    answer = "" if failure else f"The {about} is covered by a five year warranty."
    return QuestionRecord(item, hits, answer, {"total": 1.0}, failure=failure)


def test_rows_decide_skipping_reference_gaps_and_failed_answers(embedder):
    """Without a judge the judged rows are skipped (absent); without reference texts those rows are NaN;
    a question no tier answered scores 0 on the answer rows only."""
    with_refs = _record("q1", (CONTEXT,))
    without_refs = _record("q2", ())
    failed = _record("q3", (CONTEXT,), failure="every tier failed")
    skipped = score_ragas([with_refs, without_refs, failed], embedder, judge=None)
    assert (
        skipped == [s.name for s in SPECS if s.judged] == ["faithfulness", "answer_relevancy", "llm_context_precision"]
    )
    offline = [s for s in SPECS if not s.judged]
    for record in (with_refs, without_refs, failed):
        assert set(record.scores) == {s.name for s in offline}, "judged metrics are absent, never 0"
    for spec in offline:
        assert 0.0 <= with_refs.scores[spec.name] <= 1.0, spec.name
        assert math.isnan(without_refs.scores[spec.name]) == spec.reference_contexts, spec.name
    assert with_refs.scores["non_llm_context_recall"] > 0.9 and with_refs.scores["semantic_similarity"] > 0.5
    before = dict(failed.scores)
    zero_failed_answers([with_refs, without_refs, failed])
    for spec in offline:
        assert failed.scores[spec.name] == (0.0 if spec.scores_answer else before[spec.name]), spec.name
    assert with_refs.scores["semantic_similarity"] > 0.5, "answered questions keep their scores"


JUDGED = [s.name for s in SPECS if s.judged]


def test_malformed_judge_output_is_counted_per_metric_never_scored_and_the_run_goes_on(embedder):
    """The judge writes prose instead of JSON on one question: its judged scores are NaN with a reason, the
    other questions keep their judged scores, and the failures are counted per metric over the questions asked."""
    good = _record("good", (CONTEXT,))
    bad = _record("bad", (CONTEXT,), about="zebra frame")  # "zebra" is in every prompt about this question
    unanswered = _record("none", (CONTEXT,), failure="every tier failed")
    records = [good, bad, unanswered]
    with JudgeServer(malformed_marker="zebra") as server:
        assert score_ragas(records, embedder, JudgeConfig(server.base_url, "local-judge", timeout_s=30)) == []
    for name in JUDGED:
        assert 0.0 <= good.scores[name] <= 1.0 and name not in good.judge_failures, name
        assert math.isnan(bad.scores[name]) and bad.judge_failures[name], name
    assert bad.scores["semantic_similarity"] > 0.5, "offline metrics still score the question"
    # No tier answered: the answer metrics were not put to the judge (0 by zero_failed_answers, not a failure).
    assert unanswered.judge_failures == {}
    assert 0.0 <= unanswered.scores["llm_context_precision"] <= 1.0
    summary = judge_failure_summary(records)
    for name in ("faithfulness", "answer_relevancy"):
        assert (summary[f"judge_asked_{name}"], summary[f"judge_failures_{name}"]) == (2, 1), name
        assert summary[f"judge_failure_share_{name}"] == 0.5
    assert (summary["judge_asked_llm_context_precision"], summary["judge_failures_llm_context_precision"]) == (3, 1)
    zero_failed_answers(records)
    assert unanswered.scores["faithfulness"] == 0.0 and math.isnan(bad.scores["faithfulness"])


def test_no_judge_means_no_failure_counts(embedder):
    record = _record("q", (CONTEXT,))
    score_ragas([record], embedder, judge=None)
    assert judge_failure_summary([record]) == {}, "skipped metrics are not failures"
