"""Local LLMs on 2 cores: streaming speed per model, and the quality/cost table of four answer policies.

Both parts run the packaged models (SmolLM2-135M = `small`, Gemma 3 270M = `large`) on llama.cpp servers
started by `tasks.llm.local.start_server` (2 threads each, loopback), and talk to them only through the
project's code: the `openai` generator and its gateway (streaming, server-reported usage).

Part 1, speed: the sample gold questions with their retrieved top-3 chunks (retrieved once, before any
timing) are streamed through the generator at concurrency 1 and 4, ROUNDS rounds, models interleaved with
the order rotated each round. Per model and concurrency: TTFT p50/p99 (from the request to the first
piece, queueing in the server included), decode tokens/s per request (tokens after the first piece over
the time after it), and aggregate completion tokens/s (all completion tokens over the wall time). The ratio
column is Gemma over SmolLM2 in the same round (the baseline is the smaller model).

Part 2, quality and cost: on the sample gold set (16 questions) and the first COVID_QUESTIONS covid_qa
questions (`SLUICE_DATASETS_DIR`; skipped with the reason when absent), four configs on one index
(recursive 1000/150, dense k=3): extractive, all-small, all-large and routed (rules router), answered by
the evaluation runner. Semantic similarity (the packaged MiniLM) and ROUGE-L on every answer; RAGAS
faithfulness judged by Gemma 3 270M on the first JUDGED questions of each set, with the share of judge
failures; cost per answer = server-reported tokens x the prices of the shipped routing config.

    PYTHONPATH=$PWD .venv/bin/python bench/llm.py [speed|quality|all]
"""

from __future__ import annotations

import argparse
import math
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.grid import Grid  # noqa: E402
from evals.metrics import QuestionRecord  # noqa: E402
from evals.ragas_metrics import JudgeConfig, judge_failure_summary, score_ragas  # noqa: E402
from evals.runner import ensure_index, evaluate_config, load_items, resolve_items  # noqa: E402
from sluice.config import PipelineConfig, parse_config  # noqa: E402
from sluice.db import Database  # noqa: E402
from sluice.settings import Settings, load_settings  # noqa: E402
from tasks.answer import search_chunks  # noqa: E402
from tasks.embed import get_embedder  # noqa: E402
from tasks.generate import build_generator  # noqa: E402
from tasks.llm.local import start_server  # noqa: E402
from tasks.llm.state import MemoryState  # noqa: E402

MODELS = {"small": "smollm2-135m", "large": "gemma3-270m"}
SHIPPED = Path(__file__).resolve().parent.parent / "configs" / "llm-local.yaml"
THREADS, N_CTX, K = 2, 4096, 3
ROUNDS, PER_ROUND = 3, {1: 6, 4: 12}
COVID_QUESTIONS, COVID_DOCS, JUDGED, JUDGE_MAX_TOKENS = 100, 14, 16, 512
CHUNKER = {"kind": "recursive", "chunk_size": 1000, "chunk_overlap": 150}
RETRIEVAL = {"mode": "dense", "k": K}


def shipped() -> dict:
    """The shipped two-tier config (configs/llm-local.yaml): prompt, tiers, prices and rules."""
    return yaml.safe_load(SHIPPED.read_text())


def generator_body(urls: dict[str, str]) -> dict:
    """The shipped `openai` generator, its tiers on these servers; no fallback (each policy answers alone).

    Timeouts are raised: at concurrency 4 on 2 cores shared with other jobs, a queued request waits minutes.
    """
    body = shipped()["generator"]
    for tier, url in urls.items():
        body["tiers"][tier].update(replicas=[url], timeout_s=600)
    return {**body, "fallback": [], "fallback_extractive": False, "deadline_s": 1800, "attempts_per_tier": 1}


def pipeline(name: str, routing: dict, generator: dict | None) -> PipelineConfig:
    body = {"name": name, "chunker": CHUNKER, "retrieval": RETRIEVAL, "routing": routing}
    if generator is not None:
        body["generator"] = generator
    return parse_config(body, source="bench/llm.py")


def sample_grid() -> Grid:
    body = {
        "name": "llm-bench-sample",
        "tenant": "bench-llm-sample",
        "corpus": {"kind": "files", "path": "data/sample/corpus"},
        "gold": "data/sample/gold.jsonl",
        "chunkers": [CHUNKER],
        "retrieval": [RETRIEVAL],
    }
    return Grid.model_validate(body)


def covid_grid() -> Grid:
    body = {
        "name": "llm-bench-covid",
        "tenant": "bench-llm-covid",
        "corpus": {"kind": "covid_qa", "dataset": "covid_qa", "max_docs": COVID_DOCS},
        "chunkers": [CHUNKER],
        "retrieval": [RETRIEVAL],
    }
    return Grid.model_validate(body)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


# ---------------------------------------------------------------- part 1: speed
def stream_one(generator, tier: str, question: str, hits) -> tuple[float, float | None, int]:
    """TTFT ms, decode tokens/s and completion tokens of one streamed answer."""
    stream = generator.generate(question, hits, tier)
    for _ in stream:
        pass
    answer = stream.answer
    return answer.ttft_ms, answer.tokens_per_s, answer.usage.completion_tokens


def run_load(generator, tier: str, prompts: list, concurrency: int, n: int) -> dict[str, list[float]]:
    """n streamed answers at `concurrency` clients; per-request TTFT and tokens/s, and aggregate tokens/s."""
    jobs = [prompts[i % len(prompts)] for i in range(n)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: stream_one(generator, tier, *p), jobs))
    wall = time.perf_counter() - t0
    return {
        "ttft": [r[0] for r in results],
        "tps": [r[1] for r in results if r[1] is not None],
        "aggregate": [sum(r[2] for r in results) / wall],
        "tokens": [float(r[2]) for r in results],
    }


def bench_speed(settings: Settings, db: Database, urls: dict[str, str], rounds: int) -> None:
    grid = sample_grid()
    config = pipeline("speed", {"policy": "single", "tier": "small"}, generator_body(urls))
    embedder = get_embedder(config.embedder, settings.embed_batch_size, settings.data_dir)
    items, docs = load_items(settings, grid, None)
    ensure_index(settings, db, grid, config, docs)
    prompts = [(i.question, search_chunks(db, grid.tenant, config, embedder, i.question).hits) for i in items]
    generator = build_generator(config.generator, embedder, state=MemoryState(), data_dir=settings.data_dir)
    stats: dict[tuple[str, int], dict[str, list[float]]] = {}
    ratios: dict[int, list[float]] = {c: [] for c in PER_ROUND}
    try:
        stream_one(generator, "small", *prompts[0]), stream_one(generator, "large", *prompts[0])  # warm up
        for r in range(rounds):
            order = list(MODELS) if r % 2 == 0 else list(reversed(MODELS))
            for conc, n in PER_ROUND.items():
                round_p50 = {}
                for tier in order:
                    got = run_load(generator, tier, prompts, conc, n)
                    for key, values in got.items():
                        stats.setdefault((tier, conc), {}).setdefault(key, []).extend(values)
                    round_p50[tier] = got["aggregate"][0]
                    print(f"round {r + 1} {tier} x{conc}: {got['aggregate'][0]:.1f} tok/s", flush=True)
                ratios[conc].append(round_p50["large"] / round_p50["small"])
    finally:
        generator.gateway.close()
    print_speed(stats, ratios, rounds)


def print_speed(stats: dict, ratios: dict[int, list[float]], rounds: int) -> None:
    print(
        f"\n{rounds} rounds; per round {PER_ROUND[1]} answers at concurrency 1, {PER_ROUND[4]} at 4; "
        f"top-{K} chunks, prompt and max_tokens of {SHIPPED.name}"
    )
    print(
        "| model | concurrency | answers | TTFT p50 ms | TTFT p99 ms | decode tok/s p50 (per request) "
        "| aggregate tok/s (mean of rounds) | completion tokens p50 | aggregate large/small per round |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for (tier, conc), s in sorted(stats.items(), key=lambda kv: (kv[0][1], kv[0][0] != "small")):
        ratio = ", ".join(f"{x:.2f}" for x in ratios[conc]) if tier == "large" else "1 (baseline)"
        print(
            f"| {MODELS[tier]} | {conc} | {len(s['ttft'])} | {pct(s['ttft'], 50):.0f} | {pct(s['ttft'], 99):.0f} "
            f"| {pct(s['tps'], 50):.1f} | {statistics.mean(s['aggregate']):.1f} | {pct(s['tokens'], 50):.0f} "
            f"| {ratio} |"
        )


# ---------------------------------------------------------------- part 2: quality and cost
def policies(urls: dict[str, str]) -> list[PipelineConfig]:
    gen = generator_body(urls)
    return [
        pipeline("extractive", {"policy": "single"}, None),
        pipeline("all-small", {"policy": "single", "tier": "small"}, gen),
        pipeline("all-large", {"policy": "single", "tier": "large"}, gen),
        pipeline("routed (shipped rules)", shipped()["routing"], gen),
    ]


def judged(records: list[QuestionRecord], embedder, judge: JudgeConfig, n: int) -> dict[str, float]:
    """Faithfulness by the judge on the first n answered questions: mean where it parsed, failure share."""
    subset = [r for r in records if r.failure is None][:n]
    t0 = time.perf_counter()
    score_ragas(subset, embedder, judge, names=("faithfulness",))
    out = judge_failure_summary(subset)
    values = [r.scores["faithfulness"] for r in subset if not math.isnan(r.scores["faithfulness"])]
    out["faithfulness"] = statistics.mean(values) if values else math.nan
    out["judge_s"] = time.perf_counter() - t0
    return out


def row(name: str, records: list[QuestionRecord], judge: dict[str, float], elapsed_s: float) -> dict:
    answers = [r.generation for r in records if r.generation is not None]
    return {
        "policy": name,
        "questions": len(records),
        "semantic_similarity": statistics.mean(r.scores["semantic_similarity"] for r in records),
        "rouge_l": statistics.mean(r.scores["rouge_l"] for r in records),
        "faithfulness": judge.get("faithfulness", math.nan),
        "judged": judge.get("judge_asked_faithfulness", 0),
        "judge_fail": judge.get("judge_failure_share_faithfulness", math.nan),
        "small": sum(a.tier == "small" for a in answers) / len(records),
        "large": sum(a.tier == "large" for a in answers) / len(records),
        "failures": sum(r.failure is not None for r in records),
        "cost": statistics.mean((r.generation.cost_usd if r.generation else 0.0) for r in records),
        "tokens_in": statistics.mean(a.usage.prompt_tokens for a in answers) if answers else 0.0,
        "tokens_out": statistics.mean(a.usage.completion_tokens for a in answers) if answers else 0.0,
        "estimated": sum(a.usage.estimated for a in answers),
        "p50_ms": pct([r.timings_ms["total"] for r in records], 50),
        "elapsed_s": elapsed_s,
        "judge_s": judge.get("judge_s", math.nan),
    }


def bench_quality_set(
    settings: Settings, db: Database, grid: Grid, urls: dict[str, str], judge: JudgeConfig, limit: int, n_judged: int
) -> None:
    configs = policies(urls)
    items, docs = load_items(settings, grid, None)
    items = items[:limit]
    ensure_index(settings, db, grid, configs[0], docs)
    items = resolve_items(db, grid, items)
    embedder = get_embedder(configs[0].embedder, settings.embed_batch_size, settings.data_dir)
    print(f"\n{grid.name}: {len(items)} questions", flush=True)
    rows = []
    for config in configs:
        t0 = time.perf_counter()
        result = evaluate_config(settings, db, grid, config, items, progress)
        elapsed = time.perf_counter() - t0
        print(f"  {config.name}: answered in {elapsed:.0f} s; judging", flush=True)
        rows.append(row(config.name, result.records, judged(result.records, embedder, judge, n_judged), elapsed))
        print(f"  {config.name}: judged in {rows[-1]['judge_s']:.0f} s", flush=True)
    print_quality(grid.name, rows)


def print_quality(name: str, rows: list[dict]) -> None:
    print(f"\n{name}")
    print(
        "| policy | questions | sem. sim. | ROUGE-L | faithfulness (judged, parsed) | judge failures | small "
        "| large | gen. failures | tokens in / out | cost / 1k answers | latency p50 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['policy']} | {r['questions']} | {r['semantic_similarity']:.3f} | {r['rouge_l']:.3f} "
            f"| {r['faithfulness']:.3f} | {r['judge_fail']:.0%} of {r['judged']:.0f} | {r['small']:.0%} "
            f"| {r['large']:.0%} | {r['failures']} | {r['tokens_in']:.0f} / {r['tokens_out']:.0f} "
            f"| ${r['cost'] * 1000:.4f} | {r['p50_ms']:.0f} |"
        )
    estimated = sum(r["estimated"] for r in rows)
    print(f"(usage estimated locally, not server-reported, on {estimated} answers)")


def progress(config: PipelineConfig, n: int, total: int) -> None:
    if n % 20 == 0 or n == total:
        print(f"  {config.name}: {n}/{total} at {time.strftime('%H:%M:%S')}", flush=True)


def bench_quality(
    settings: Settings, db: Database, urls: dict[str, str], covid: int, n_judged: int, sample: bool = True
) -> None:
    judge = JudgeConfig(urls["large"], MODELS["large"], timeout_s=600, max_tokens=JUDGE_MAX_TOKENS)
    if sample:
        bench_quality_set(settings, db, sample_grid(), urls, judge, 10_000, n_judged)
    if not covid:
        return
    if settings.datasets_dir is None or not (Path(settings.datasets_dir) / "covid_qa").exists():
        print("\ncovid_qa skipped: SLUICE_DATASETS_DIR does not name a folder holding covid_qa/")
        return
    bench_quality_set(settings, db, covid_grid(), urls, judge, covid, n_judged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("speed", "quality", "all"), nargs="?", default="all")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--covid", type=int, default=COVID_QUESTIONS, help="covid_qa questions (0: none)")
    parser.add_argument("--judged", type=int, default=JUDGED, help="questions per set and policy put to the judge")
    parser.add_argument("--no-sample", action="store_true", help="quality: covid_qa only (run the sets in parallel)")
    args = parser.parse_args()
    settings = load_settings()
    # SIGTERM (kill, a CI timeout) as an exit, so `finally` stops the model servers: they would outlive us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    servers = [start_server(m, settings.data_dir, n_ctx=N_CTX, threads=THREADS) for m in MODELS.values()]
    urls = dict(zip(MODELS, (s.base_url for s in servers), strict=True))
    try:
        with Database(settings) as db:
            if args.part in ("speed", "all"):
                bench_speed(settings, db, urls, args.rounds)
            if args.part in ("quality", "all"):
                bench_quality(settings, db, urls, args.covid, args.judged, not args.no_sample)
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
