"""Evaluation maths and file formats, checked by hand: span metrics, bootstrap decisions, grids, gold sets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from evals.gold import Evidence, GoldItem, find_quote, load_covid_qa, load_gold, resolve
from evals.grid import Candidate, Objective, PromotionPolicy, decide, expand, load_grid, paired_bootstrap
from evals.metrics import RetrievedSpan, evidence_recall, ndcg_at_k, span_scores
from evals.plots import pareto_front
from evals.runner import load_items
from sluice.errors import ConfigError
from sluice.settings import Settings
from tests.conftest import SAMPLE

ITEM = GoldItem("q", "?", "ref", (Evidence("a", None, 100, 200), Evidence("b", None, 0, 50)))
HITS = [
    RetrievedSpan("a", 0, 90),  # misses
    RetrievedSpan("a", 150, 250),  # covers a[150:200]: first relevant, rank 2
    RetrievedSpan("a", 180, 300),  # relevant, but unit a is already covered: no new gain
    RetrievedSpan("b", 25, 75),  # covers b[25:50]: second unit, rank 4
    RetrievedSpan("c", 0, 10),  # misses
]


def test_span_metrics_equal_hand_values():
    s = span_scores(HITS, ITEM, cutoffs=(1, 3, 5))
    assert s["hit_at_1"] == 0.0 and s["hit_at_3"] == 1.0 and s["hit_at_5"] == 1.0
    assert s["mrr"] == 0.5
    # DCG@5 = 1/log2(3) + 1/log2(5) = 1.06161; IDCG (2 units) = 1 + 1/log2(3) = 1.63093
    assert s["ndcg_at_5"] == pytest.approx(0.650920, abs=1e-6)
    assert s["ndcg_at_3"] == pytest.approx(0.386853, abs=1e-6)  # 0.63093 / 1.63093
    # gold characters: 100 (a) + 50 (b); covered 50 of a by rank 2, 25 of b by rank 4
    assert s["evidence_recall_at_3"] == pytest.approx(50 / 150)
    assert s["evidence_recall_at_5"] == pytest.approx(75 / 150)


def test_docs_only_items_score_by_document():
    item = GoldItem("q", "?", "ref", (), ("x", "y"))
    hits = [RetrievedSpan("z", 0, 5), RetrievedSpan("y", 0, 5)]
    assert ndcg_at_k(hits, item, 2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert evidence_recall(hits, item, 2) == 0.5


def test_paired_bootstrap_tie_and_clear_win():
    same = np.array([0.2, 0.5, 1.0, 0.0, 0.7])
    diff, p = paired_bootstrap(same, same.copy(), 1000, 0)
    assert diff == 0.0 and p == 1.0
    better = np.array([1.0] * 20)
    worse = np.array([0.0, 0.5] * 10)
    diff, p = paired_bootstrap(better, worse, 1000, 0)
    assert diff == pytest.approx(0.75) and p < 0.01


def _cand(cid, scores, cost=0.0, p95=10.0):
    summary = {"cost_per_answer": cost, "latency_total_p95_ms": p95}
    return Candidate(cid, cid, summary, np.array(scores, dtype=float))


def test_decide_tie_keeps_champion_and_budgets_exclude():
    policy = PromotionPolicy(n_boot=500)
    tie = decide([_cand("new", [1, 0, 1, 1]), _cand("champ", [1, 0, 1, 1])], "champ", Objective(), policy)
    assert not tie.promote and tie.winner.config_id == "new" and "does not beat" in tie.reason
    win = decide([_cand("new", [1.0] * 30), _cand("champ", [0.0] * 30)], "champ", Objective(), policy)
    assert win.promote and win.p_value < 0.05
    budget = Objective(max_cost_per_answer=0.001)
    costly = decide([_cand("new", [1.0] * 30, cost=0.5), _cand("champ", [0.0] * 30)], "champ", budget, policy)
    assert not costly.promote and costly.winner.config_id == "champ"


def test_grid_expands_to_stable_validated_configs(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "name: g\ncorpus: {path: data/sample/corpus}\n"
        "chunkers: [{kind: recursive, chunk_size: 300}, {kind: recursive, chunk_size: 800}]\n"
        "retrieval: [{mode: dense, k: 3}, {mode: dense, k: 8}]\n"
    )
    configs = expand(load_grid(path))
    assert len(configs) == 4 and len({c.config_id for c in configs}) == 4
    assert [c.config_id for c in expand(load_grid(path))] == [c.config_id for c in configs]
    assert configs[0].name == "recursive(chunk_size=300) dense(k=3) single"
    path.write_text("name: g\ncorpus: {path: x}\nchunkers: [{kind: nonsense}]\n")
    with pytest.raises(ConfigError, match="chunker"):
        expand(load_grid(path))


def test_quotes_resolve_despite_whitespace_and_unknown_quotes_fail():
    text = "Intro.\n\nReturns are\naccepted within  45 days. Bye."
    assert find_quote(text, "Returns are accepted within 45 days.") == (8, 45)
    item = GoldItem("q", "?", "r", (Evidence("d", "accepted within 45 days"),))
    (resolved,) = resolve([item], {"d": text})
    assert resolved.reference_contexts == (text[resolved.spans[0].start : resolved.spans[0].end],)
    with pytest.raises(ConfigError, match="quote not found"):
        resolve([GoldItem("q", "?", "r", (Evidence("d", "refunds in bitcoin"),))], {"d": text})


def test_sample_gold_loads_and_bad_lines_are_named(tmp_path):
    assert len(load_gold(SAMPLE / "gold.jsonl")) == 16
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "q"}) + "\n")
    with pytest.raises(ConfigError, match="reference_answer"):
        load_gold(bad)


def test_covid_qa_answer_spans_align_with_document_text(dataset):
    docs, items = load_covid_qa(dataset("covid_qa"), max_docs=5)
    texts = {d.source_id: d.text for d in docs}
    assert items and all(i.doc_ids[0] in texts for i in items)
    for item in items:
        for ev in item.evidence:
            assert texts[ev.source_id][ev.start : ev.end] == ev.quote


COVID_DOCS = {"630": "Title\n\nMother-to-child transmission is the main cause. Breastfeeding adds risk."}
COVID_DOCS["7"] = "Masks work."
COVID_QA = [  # id, doc_id, question, answer, answer_start
    (1, "630", "Main cause?", "Mother-to-child transmission", 7),
    (2, "630", "What adds risk?", "Breastfeeding", 55),
    (3, "7", "Do masks work?", "Masks work.", 0),
]


def write_covid_qa(folder: Path) -> Path:
    """A covid_qa-format corpus of two articles (docs.jsonl, and qa.jsonl with answer offsets)."""
    folder.mkdir(parents=True)
    docs = [{"doc_id": k, "text": v} for k, v in COVID_DOCS.items()]
    qa = [
        {"id": i, "doc_id": d, "question": q, "answers": [{"text": a, "answer_start": s}]} for i, d, q, a, s in COVID_QA
    ]
    (folder / "docs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in docs))
    (folder / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in qa))
    return folder


def covid_grid(tmp_path: Path, corpus: str):
    path = tmp_path / "covid.yaml"
    path.write_text(f"name: c\ncorpus: {corpus}\nchunkers: [{{kind: recursive}}]\n")
    return load_grid(path)


def test_grid_dataset_corpus_resolves_under_the_datasets_dir(tmp_path):
    write_covid_qa(tmp_path / "data" / "covid_qa")
    grid = covid_grid(tmp_path, "{kind: covid_qa, dataset: covid_qa, max_docs: 1}")
    items, docs = load_items(Settings(datasets_dir=tmp_path / "data"), grid, None)
    assert [d.source_id for d in docs] == ["covid_qa/630"] and [i.id for i in items] == ["1", "2"]
    for item in items:  # answer offsets land on the answer text
        assert all(docs[0].text[e.start : e.end] == e.quote for e in item.evidence)
    assert grid.corpus.label == "$SLUICE_DATASETS_DIR/covid_qa"


def test_grid_dataset_corpus_names_the_setting_when_unset_or_missing(tmp_path):
    grid = covid_grid(tmp_path, "{kind: covid_qa, dataset: covid_qa}")
    with pytest.raises(ConfigError, match="needs SLUICE_DATASETS_DIR, which is unset"):
        load_items(Settings(datasets_dir=None), grid, None)
    with pytest.raises(ConfigError, match=r"not in SLUICE_DATASETS_DIR \(.*/empty/covid_qa does not exist\)"):
        load_items(Settings(datasets_dir=tmp_path / "empty"), grid, None)
    with pytest.raises(ConfigError, match="exactly one of `path`"):
        covid_grid(tmp_path, "{kind: covid_qa, path: data, dataset: covid_qa}")
    with pytest.raises(ConfigError, match="exactly one of `path`"):
        covid_grid(tmp_path, "{kind: files}")


def test_pareto_front():
    assert pareto_front([(1.0, 0.5), (2.0, 0.9), (1.5, 0.4), (3.0, 0.8)]) == [0, 1]


def test_objective_must_be_a_per_question_metric(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("name: g\ncorpus: {path: x}\nchunkers: [{}]\nobjective: {metric: cost_per_answer}\n")
    with pytest.raises(ConfigError, match="objective.metric.*ndcg_at_10"):
        load_grid(path)


def test_grid_prices_are_per_million_tokens_and_older_per_1k_grids_still_load(tmp_path):
    path = tmp_path / "g.yaml"
    for pricing in ("{input_per_mtok: 2, output_per_mtok: 8}", "{input_per_1k: 0.002, output_per_1k: 0.008}"):
        path.write_text(f"name: g\ncorpus: {{path: x}}\nchunkers: [{{}}]\npricing: {pricing}\n")
        assert load_grid(path).pricing.cost(1000, 500) == pytest.approx((1000 * 2 + 500 * 8) / 1e6), pricing
    assert load_grid(SAMPLE.parent.parent / "evals/grids/sample.yaml").pricing.cost(1000, 1000) == pytest.approx(0.002)
