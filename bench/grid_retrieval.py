"""A grid's retrieval scores without answering: nDCG@10 (and hit@5, MRR) with bootstrap CIs, and paired tests.

`sluice eval GRID` answers every question under every config (the extractive generator embeds each
sentence of the retrieved chunks) to score answers too; for the retrieval columns only, this script
runs the same steps without the answer: the grid's configs (`evals.grid.expand`), their indexes
(`evals.runner.ensure_index`, reused when `sluice eval` built them), the config's top k per question
(`tasks.answer.search_chunks`: the path `answer_question` retrieves with, parents attached), the
evaluation's span metrics (`evals.metrics.span_scores`) and its percentile bootstrap CI and paired
bootstrap (`evals.grid`, the grid's `promotion` settings). The same question gets the same retrieval
score here as in `sluice eval`.

    SLUICE_DATASETS_DIR=... PYTHONPATH=$PWD .venv/bin/python bench/grid_retrieval.py evals/grids/covid_qa_bm25.yaml \
        [--against NAME_SUBSTRING] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from evals.grid import bootstrap_ci, expand, load_grid, paired_bootstrap
from evals.metrics import RetrievedSpan, span_scores
from evals.runner import ensure_index, load_items
from sluice.db import Database
from sluice.settings import load_settings
from tasks.answer import search_chunks
from tasks.embed import CachingEmbedder, get_embedder

SHOWN = ("ndcg_at_10", "hit_at_5", "mrr")


def score_config(db, grid, config, items, embedder) -> dict[str, np.ndarray]:
    """Per-question span metrics of one config (gold order)."""
    scores: dict[str, list[float]] = {name: [] for name in SHOWN}
    for item in items:
        found = search_chunks(db, grid.tenant, config, embedder, item.question)
        hits = [RetrievedSpan(h.source_id, h.start, h.end, h.text) for h in found.hits]
        row = span_scores(hits, item)
        for name in SHOWN:
            scores[name].append(row[name])
    return {name: np.array(values) for name, values in scores.items()}


def run(grid_path: str) -> tuple[object, list[dict]]:
    settings = load_settings()
    grid = load_grid(grid_path)
    items, docs = load_items(settings, grid, None)
    rows, embedders = [], {}
    with Database(settings) as db:
        for config in expand(grid):
            counts = ensure_index(settings, db, grid, config, docs)
            if config.embedder not in embedders:  # one query-vector cache across the grid's configs
                embedders[config.embedder] = CachingEmbedder(get_embedder(config.embedder, settings.embed_batch_size))
            embedder = embedders[config.embedder]
            t0 = time.perf_counter()
            per_q = score_config(db, grid, config, items, embedder)
            rows.append({"name": config.name, "config_id": config.config_id, "per_q": per_q, "index": counts})
            print(
                f"{config.name}: ndcg@10 {per_q['ndcg_at_10'].mean():.3f} ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return grid, rows


def report(grid, rows: list[dict], against: str | None) -> dict:
    """Means, CIs and the paired test of each config against the reference (the best, or `against`)."""
    p = grid.promotion
    rows = sorted(rows, key=lambda r: -r["per_q"]["ndcg_at_10"].mean())
    ref = next((r for r in rows if against and against in r["name"]), rows[0])
    out = {"questions": int(len(rows[0]["per_q"]["ndcg_at_10"])), "reference": ref["name"], "configs": []}
    for r in rows:
        ndcg = r["per_q"]["ndcg_at_10"]
        entry = {"name": r["name"], "config_id": r["config_id"]}
        entry.update({name: float(values.mean()) for name, values in r["per_q"].items()})
        entry["ndcg_at_10_ci"] = bootstrap_ci(ndcg, p.n_boot, p.seed, p.ci)
        if r is not ref:  # one-sided p that the reference is not better than this config
            diff, p_value = paired_bootstrap(ref["per_q"]["ndcg_at_10"], ndcg, p.n_boot, p.seed)
            entry["reference_minus_this"], entry["p_reference_not_better"] = diff, p_value
        out["configs"].append(entry)
    return out


def print_table(out: dict, ci: float) -> None:
    print(f"| config | nDCG@10 [{ci:.0%} CI] | hit@5 | MRR | Δ nDCG@10 vs reference (one-sided p) |")
    print("|---|---|---|---|---|")
    for c in out["configs"]:
        low, high = c["ndcg_at_10_ci"]
        diff = "reference"
        if "p_reference_not_better" in c:
            diff = f"{-c['reference_minus_this']:+.3f} (p = {c['p_reference_not_better']:.3f})"
        scores = f"{c['ndcg_at_10']:.3f} [{low:.3f}, {high:.3f}] | {c['hit_at_5']:.3f} | {c['mrr']:.3f}"
        print(f"| {c['name']} | {scores} | {diff} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("--against", help="reference config: a substring of its name (default: the best)")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    grid, rows = run(args.grid)
    out = report(grid, rows, args.against)
    print_table(out, grid.promotion.ci)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
