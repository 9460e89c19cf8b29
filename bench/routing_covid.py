"""covid_qa: quality, share per tier, cost and latency of all-small, all-large, rules and classifier routing.

SUBSTITUTE TIERS. This machine has no generative model weights and no internet, so the two tiers are
not real LLMs. Each is a real local HTTP server speaking OpenAI chat completions (tests/fake_openai.py,
SSE streaming) whose "model" is the extractive answerer reading the numbered passages of the prompt
the `openai` generator sends, at two budgets:
    small: the top 2 passages, answers with 1 sentence;  large: all 10 passages, answers with 3 sentences.
Both see the same prompt (every passage), so their prompt tokens are equal; usage is reported by the
servers (prompt: the embedder's tokenizer over the whole prompt; completion: streamed words). Prices
are assumed list prices of a small and a large hosted model (USD per million tokens): small 0.15 in /
0.60 out, large 2.50 in / 10.00 out. Quality, cost and latency therefore genuinely differ between tiers,
but the quality gap is that of two context budgets, not of two model sizes.

Steps: index the first MAX_DOCS covid_qa articles once (recursive 1000/150, dense k=10); answer the
even-numbered questions under all-small and all-large and train the classifier router on them with the
`sluice router train` code (label: small's semantic similarity to the reference within 0.02 of large's;
target large share LARGE_SHARE); then run all four policies on the odd-numbered (held-out) questions.

    PYTHONPATH=$PWD .venv/bin/python bench/routing_covid.py
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.routing import train_routing  # noqa: E402
from evals.grid import Grid, bootstrap_ci  # noqa: E402
from evals.results import ConfigResult  # noqa: E402
from evals.routing import routing_rows  # noqa: E402
from evals.runner import ensure_index, evaluate_config, load_items  # noqa: E402
from serving.embedding_cache import CachingEmbedder  # noqa: E402
from sluice.config import PipelineConfig, parse_config  # noqa: E402
from sluice.db import Database  # noqa: E402
from sluice.settings import load_settings  # noqa: E402
from tasks.embed import get_embedder  # noqa: E402
from tasks.pricing import count_tokens  # noqa: E402
from tasks.text import sentence_spans  # noqa: E402
from tests.fake_openai import Behaviour, FakeOpenAI, two_tiers  # noqa: E402

MAX_DOCS, LARGE_SHARE, TOLERANCE = 5, 0.3, 0.02
PRICES = {
    "small-extractive-2x1": {"input_per_mtok": 0.15, "output_per_mtok": 0.60},
    "large-extractive-10x3": {"input_per_mtok": 2.50, "output_per_mtok": 10.00},
}
_BLOCK = re.compile(r"^\[(\d+)\] \(source: [^)\n]*\)\n", re.M)
QUALITY = "semantic_similarity"


def parse_prompt(messages: list[dict]) -> tuple[str, list[str]]:
    """The question and the numbered passages of the `openai` generator's prompt."""
    user = messages[-1]["content"]
    body, _, question = user.rpartition("\n\nQuestion: ")
    parts = _BLOCK.split(body.removeprefix("Context passages:\n\n"))
    return question.removesuffix("\nAnswer:"), [parts[i + 1].strip() for i in range(1, len(parts), 2)]


def extractive_model(embedder, max_passages: int, max_sentences: int):
    """A 'model' answering with the prompt's sentences most similar to the question, cited by passage number.

    `embedder` should cache: the same passages come back for many questions (the speed of this stand-in
    is not what is measured; its tier latencies are only indicative).
    """
    lock = threading.Lock()  # the embedder is shared with the evaluation

    def respond(messages: list[dict]) -> tuple[str, int]:
        question, passages = parse_prompt(messages)
        prompt_tokens = count_tokens(embedder.tokenizer, *(m["content"] for m in messages))
        candidates = [
            (n, " ".join(p[s:e].split()))
            for n, p in enumerate(passages[:max_passages], 1)
            for s, e in sentence_spans(p)
            if len(p[s:e].split()) >= 5
        ]
        if not candidates:
            return "I cannot answer from the documents.", prompt_tokens
        with lock:
            vectors = embedder.encode([question, *(c[1] for c in candidates)])
        best = np.argsort(-(vectors[1:] @ vectors[0]), kind="stable")[:max_sentences]
        return " ".join(f"{candidates[i][1]} [{candidates[i][0]}]" for i in best), prompt_tokens

    return respond


def grid_spec() -> Grid:
    body = {
        "name": "covid_qa_routing",
        "tenant": "eval-covid-qa",
        "corpus": {"kind": "covid_qa", "dataset": "covid_qa", "max_docs": MAX_DOCS},
        "chunkers": [{"kind": "recursive", "chunk_size": 1000, "chunk_overlap": 150}],
        "retrieval": [{"mode": "dense", "k": 10}],
    }
    return Grid.model_validate(body)


def config(small: FakeOpenAI, large: FakeOpenAI, routing: dict) -> PipelineConfig:
    generator = two_tiers(small, large, ("small-extractive-2x1", "large-extractive-10x3"), PRICES)
    # Generous: on 2 shared cores under other jobs' load one stand-in answer has taken > 30 s.
    generator.update(deadline_s=600, attempts_per_tier=1)
    for tier in generator["tiers"].values():
        tier["timeout_s"] = 300
    body = {
        "name": json.dumps(routing),
        "chunker": {"kind": "recursive", "chunk_size": 1000, "chunk_overlap": 150},
        "retrieval": {"mode": "dense", "k": 10},
        "routing": routing,
        "generator": generator,
    }
    return parse_config(body, source="bench/routing_covid.py")


def train_classifier(settings, embedder, small: ConfigResult, large: ConfigResult, train: list[int]) -> dict:
    """Train on the training questions' small vs large scores (the `sluice router train` code path)."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for i in train:
            s, g = small.records[i], large.records[i]
            row = {"question": s.item.question, "small_score": s.scores[QUALITY], "large_score": g.scores[QUALITY]}
            f.write(json.dumps(row) + "\n")
    labels = [small.records[i].scores[QUALITY] >= large.records[i].scores[QUALITY] - TOLERANCE for i in train]
    print(f"classifier training: {len(train)} questions, small as good on {sum(labels)}", flush=True)
    routing = train_routing(Path(f.name), embedder, LARGE_SHARE, None, TOLERANCE, settings.data_dir)
    return {**routing, "small": "small", "large": "large"}


def paired_ci(result: ConfigResult, base: ConfigResult) -> tuple[float, float]:
    diffs = np.array([a.scores[QUALITY] - b.scores[QUALITY] for a, b in zip(result.records, base.records, strict=True)])
    return bootstrap_ci(diffs, 2000, 0, 0.95)


def table(results: list[ConfigResult]) -> str:
    rows = routing_rows(results, "ndcg_at_10")
    base = results[1]  # all-large
    lines = [
        "| policy | questions | answer sim. | Δ sim. vs all-large [95% CI] | ROUGE-L | nDCG@10 | small | large "
        "| cost / answer | cost vs all-large | TTFT p50 ms | latency p50 / p95 ms |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result, row in zip(results, rows, strict=True):
        lo, hi = paired_ci(result, base)
        delta = row["semantic_similarity_change_vs_all_large"]
        lines.append(
            f"| {row['policy']} | {len(result.records)} | {row[QUALITY]:.3f} | {delta:+.3f} [{lo:+.3f}, {hi:+.3f}] "
            f"| {row['rouge_l']:.3f} | {row['ndcg_at_10']:.3f} | {row.get('share_small', 0):.0%} "
            f"| {row.get('share_large', 0):.0%} | ${row['cost_per_answer'] * 1000:.3f}/1k "
            f"| {row['cost_change_vs_all_large']:+.0%} | {row['latency_ttft_p50_ms']:.0f} "
            f"| {row['latency_total_p50_ms']:.0f} / {row['latency_total_p95_ms']:.0f} |"
        )
    return "\n".join(lines)


def progress(config: PipelineConfig, n: int, total: int) -> None:
    if n % 10 == 0 or n == total:
        print(f"  {config.name}: {n}/{total} at {time.strftime('%H:%M:%S')}", flush=True)


def main() -> None:
    settings = load_settings()
    grid = grid_spec()
    t0 = time.perf_counter()
    with Database(settings) as db:
        embedder = get_embedder(PipelineConfig().embedder, settings.embed_batch_size)
        cached = CachingEmbedder(embedder)  # both "models" reuse sentence vectors across questions
        small_model = Behaviour(respond=extractive_model(cached, 2, 1))
        large_model = Behaviour(respond=extractive_model(cached, 10, 3))
        with FakeOpenAI(small_model) as small, FakeOpenAI(large_model) as large:
            configs = {p: config(small, large, {"policy": "single", "tier": p}) for p in ("small", "large")}
            items, docs = load_items(settings, grid, None)
            print(f"{len(items)} questions on {MAX_DOCS} articles; indexing", flush=True)
            ensure_index(settings, db, grid, configs["small"], docs)
            train, test = list(range(0, len(items), 2)), list(range(1, len(items), 2))
            # Training answers first; then all four policies on the held-out questions, back to back, so
            # that they meet the stand-in servers in the same state (their sentence cache is warm by then).
            labels = {
                p: evaluate_config(settings, db, grid, c, [items[i] for i in train], progress)
                for p, c in configs.items()
            }
            print(f"training answers done ({time.perf_counter() - t0:.0f} s)", flush=True)
            every = list(range(len(train)))
            configs["rules"] = config(small, large, {"policy": "rules"})
            configs["classifier"] = config(small, large, train_classifier(settings, embedder, *labels.values(), every))
            held = [items[i] for i in test]
            results = [evaluate_config(settings, db, grid, c, held, progress) for c in configs.values()]
    print(f"\nheld-out questions: {len(test)}; total time {time.perf_counter() - t0:.0f} s\n")
    print(table(results))


if __name__ == "__main__":
    main()
