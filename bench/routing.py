"""Routing benchmark: balancers under a slow replica, and router decision overhead.

Part 1: three fake OpenAI replicas on 127.0.0.1, one 5x slower; the same closed-loop load
(CONCURRENCY clients, REQUESTS each round) runs under round robin, least outstanding requests and
latency EWMA (plus least-outstanding with Redis state), interleaved over ROUNDS rounds.
Part 2: time of RulesRouter and ClassifierRouter decisions (the classifier with the query vector
already computed, as in serving, where retrieval embedded the question).

    PYTHONPATH=$PWD .venv/bin/python bench/routing.py
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sluice.config import ClassifierRouting, OpenAIGenerator, PipelineConfig, RulesRouting  # noqa: E402
from tasks.llm.gateway import Gateway  # noqa: E402
from tasks.llm.state import MemoryState, RedisState  # noqa: E402
from tasks.route import build_router, question_type  # noqa: E402
from tasks.route_train import save_router_model, train_router  # noqa: E402
from tests.fake_openai import Behaviour, FakeOpenAI  # noqa: E402

FAST = Behaviour(latency_s=0.030, token_delay_s=0.002)  # ~44 ms per answer of 8 tokens
SLOW = Behaviour(latency_s=0.150, token_delay_s=0.010)  # 5x: ~220 ms
CONCURRENCY, REQUESTS, ROUNDS = 6, 180, 3
VARIANTS = ["round_robin", "least_outstanding", "latency_ewma", "least_outstanding+redis"]
MESSAGES = [{"role": "user", "content": "How long is the warranty?"}]


def one_request(gateway: Gateway) -> tuple[float, str]:
    t0 = time.perf_counter()
    chat = gateway.chat("small", MESSAGES)
    while True:
        try:
            next(chat)
        except StopIteration as stop:
            return time.perf_counter() - t0, stop.value.replica


def run_variant(variant: str, urls: list[str], slow_url: str) -> tuple[list[float], float]:
    balancer, _, store = variant.partition("+")
    config = OpenAIGenerator(tiers={"small": {"model": "m", "replicas": urls, "balancer": balancer}})
    state = (
        RedisState.from_url("redis://127.0.0.1:6379/15", f"sluice:bench:{uuid.uuid4().hex[:8]}")
        if store
        else MemoryState()
    )
    gateway = Gateway(config, state)
    try:
        one_request(gateway)  # open connections outside the measurement
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(lambda _: one_request(gateway), range(REQUESTS)))
    finally:
        gateway.close()
        if isinstance(state, RedisState):
            state.reset()
    return [r[0] for r in results], sum(r[1] == slow_url for r in results) / len(results)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def bench_balancers() -> None:
    servers = [FakeOpenAI(Behaviour(**vars(FAST))).start() for _ in range(2)] + [
        FakeOpenAI(Behaviour(**vars(SLOW))).start()
    ]
    urls, slow_url = [s.url for s in servers], servers[2].url
    latencies: dict[str, list[float]] = {v: [] for v in VARIANTS}
    slow_share: dict[str, list[float]] = {v: [] for v in VARIANTS}
    p99_ratio: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        for r in range(ROUNDS):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            round_p99 = {}
            for variant in order:
                lat, share = run_variant(variant, urls, slow_url)
                latencies[variant] += lat
                slow_share[variant].append(share)
                round_p99[variant] = pct(lat, 99)
            for variant in VARIANTS:
                p99_ratio[variant].append(round_p99[variant] / round_p99["round_robin"])
    finally:
        for s in servers:
            s.stop()
    print(
        f"\n{CONCURRENCY} concurrent clients, {REQUESTS} requests x {ROUNDS} rounds per policy; replicas ~44/44/220 ms"
    )
    print("| policy | p50 ms | p95 ms | p99 ms | mean ms | share to slow replica | p99 / round robin (per round) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for v in VARIANTS:
        ratios = ", ".join(f"{x:.2f}" for x in p99_ratio[v])
        share = statistics.mean(slow_share[v])
        lat = latencies[v]
        cells = f"{pct(lat, 50):.0f} | {pct(lat, 95):.0f} | {pct(lat, 99):.0f} | {statistics.mean(lat) * 1000:.0f}"
        print(f"| {v} | {cells} | {share:.0%} | {ratios} |")


def timings_us(fn, items, repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        for item in items:
            t0 = time.perf_counter_ns()
            fn(item)
            samples.append((time.perf_counter_ns() - t0) / 1000)
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def bench_routers() -> None:
    from tasks.embed import get_embedder
    from tests.test_routing import _hits, _questions

    embedder = get_embedder(PipelineConfig().embedder)
    questions = _questions()
    vectors = embedder.encode(questions)
    labels = np.array([question_type(q) == "lookup" for q in questions], dtype=int)
    model = train_router(vectors, labels, 0.3, embedder.identity.key)
    with tempfile.TemporaryDirectory() as tmp:
        path, sha = save_router_model(model, Path(tmp))
        classifier = build_router(ClassifierRouting(model_path=str(path), model_sha256=sha), embedder)
    rules = build_router(RulesRouting())
    hits = _hits(1, 2, 2, 3, 4)
    items = list(zip(questions, vectors, strict=True))
    random.Random(0).shuffle(items)
    print("\n| router | p50 µs | p99 µs | decisions |")
    print("|---|---:|---:|---:|")
    for name, fn in [
        ("rules", lambda it: rules.route(it[0], hits)),
        ("classifier (query vector given)", lambda it: classifier.route(it[0], hits, vector=it[1])),
    ]:
        p50, p99 = timings_us(fn, items, repeat=10)
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {len(items) * 10} |")
    p50, p99 = timings_us(lambda it: classifier.route(it[0], hits), items[:50], repeat=2)
    print(f"| classifier (embeds the question itself) | {p50:.0f} | {p99:.0f} | 100 |")


if __name__ == "__main__":
    bench_balancers()
    bench_routers()
