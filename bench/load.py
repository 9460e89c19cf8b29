"""Open-loop HTTP load against `sluice serve` + `sluice worker` on loopback: the latency curve.

    PYTHONPATH=$PWD python bench/load.py [--rates 2,4,8,16,32] [--seconds 20] [--workers 2]

Needs Redis on 127.0.0.1:6379 and `sluice db up`. Reuses bench/serving.py: the sample corpus is
ingested into tenant `bench` in-process, then a worker (extractive generator, answer cache off,
rate limit off, default query queue limit) and the API are started as subprocesses on their own
broker key prefix. For each offered rate, requests are sent on a fixed schedule (open loop: a slow
answer never delays the next send) and each latency counts from its scheduled send time, so queueing
in the client is not hidden (no coordinated omission). Every question is unique (no cache hits).

Prints a markdown table (offered rate, achieved rate, p50, p99, error rate), writes the curve to
docs/img/load_curve.png, and names the highest offered rate with p99 <= --slo-ms and no errors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import REDIS, bench_tenant, pct, question, served_env, start_stack, stop_stack, wait_ready  # noqa: E402
from sluice.settings import load_settings  # noqa: E402

PORT = 8793
PREFIX = "sluice-bench-load:"  # its own queues even if bench/serving.py runs on the same Redis database


@dataclass
class Step:
    offered: float
    sent: int
    ok: list[float]  # latencies (s) of answered requests
    failures: Counter  # by kind: "503", "429", "202" (not answered within SLUICE_QUERY_TIMEOUT_S), "timeout", ...
    achieved: float  # answered requests per second over the step

    @property
    def error_rate(self) -> float:
        return sum(self.failures.values()) / self.sent if self.sent else 0.0

    def row(self) -> str:
        p50, p99 = (pct(self.ok, 50) * 1000, pct(self.ok, 99) * 1000) if self.ok else (float("nan"),) * 2
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.failures.items())) or "-"
        cells = (f"{self.offered:g}", self.sent, f"{self.achieved:.1f}", f"{p50:.0f}", f"{p99:.0f}")
        return "| " + " | ".join(map(str, cells)) + f" | {self.error_rate:.1%} | {kinds} |"


HEADER = "| offered q/s | sent | answered q/s | p50 ms | p99 ms | errors | error kinds |\n|---|---|---|---|---|---|---|"


async def one(client: httpx.AsyncClient, due: float) -> tuple[float, str]:
    """Send one query at `due` (loop time); its latency from `due`, and its outcome ("200", "503", ...)."""
    await asyncio.sleep(max(0.0, due - time.perf_counter()))
    try:
        outcome = str((await client.post("/v1/query", json={"question": question()})).status_code)
    except httpx.TimeoutException:
        outcome = "timeout"
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    return time.perf_counter() - due, outcome


async def step(url: str, key: str, rate: float, seconds: float) -> Step:
    """Offer `rate` requests/s for `seconds`, on a fixed schedule."""
    n = max(1, round(rate * seconds))
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512, keepalive_expiry=2)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        start = time.perf_counter() + 0.1
        results = await asyncio.gather(*(one(client, start + i / rate) for i in range(n)))
        elapsed = time.perf_counter() - start
    ok = [lat for lat, outcome in results if outcome == "200"]
    return Step(rate, n, ok, Counter(outcome for _, outcome in results if outcome != "200"), len(ok) / elapsed)


def drain(client: httpx.Client, timeout: float = 600) -> None:
    """Wait until the query queue is empty, so each step starts from an idle service."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        families = text_string_to_metric_families(client.get("/metrics").text)
        depths = [s.value for f in families for s in f.samples if s.name == "sluice_queue_depth"]
        if depths and not any(depths):
            return
        time.sleep(1)


def sustained(steps: list[Step], slo_ms: float) -> Step | None:
    """The highest offered rate whose p99 meets the SLO with no errors (every lower rate too)."""
    best = None
    for s in steps:
        if not s.ok or s.failures or pct(s.ok, 99) * 1000 > slo_ms:
            break
        best = s
    return best


def plot(steps: list[Step], slo_ms: float, path: Path, title: str) -> None:
    """Offered load against p50/p99 latency (log) and error rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s.offered for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(x, [pct(s.ok, 50) * 1000 if s.ok else float("nan") for s in steps], "o-", label="p50")
    ax.plot(x, [pct(s.ok, 99) * 1000 if s.ok else float("nan") for s in steps], "s-", label="p99")
    ax.axhline(slo_ms, color="grey", linestyle="--", label=f"p99 target {slo_ms:g} ms")
    ax.set(xscale="log", yscale="log", xlabel="offered load (queries/s)", ylabel="latency (ms)", title=title)
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.minorticks_off()
    errors = ax.twinx()
    errors.bar(x, [s.error_rate * 100 for s in steps], width=[v * 0.15 for v in x], alpha=0.25, color="red")
    errors.set(ylabel="errors (%)", ylim=(0, 100))
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def run(args: argparse.Namespace, key: str, worker) -> list[Step]:
    url = f"http://127.0.0.1:{PORT}"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        wait_ready(client, args.workers, worker)
        steps = []
        for rate in args.rates:
            steps.append(asyncio.run(step(url, key, rate, args.seconds)))
            print(steps[-1].row(), flush=True)
            drain(client)  # queries the API gave up on (202) are still answered by the workers
            time.sleep(2)
    return steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")], default=[2, 4, 8, 16, 32])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--slo-ms", type=float, default=200)
    ap.add_argument("--plot", type=Path, default=ROOT / "docs/img/load_curve.png")
    args = ap.parse_args()
    settings = load_settings()
    db, _, _, key = bench_tenant(settings)
    env = served_env(REDIS, SLUICE_BROKER_KEY_PREFIX=PREFIX, SLUICE_QUEUE_LIMIT=str(settings.queue_limit))
    worker, api = start_stack(env, args.workers, PORT, Path("/tmp/sluice-bench-load"))
    load_before = os.getloadavg()
    print(HEADER, flush=True)
    try:
        steps = run(args, key, worker)
    finally:
        stop_stack(api, worker)
        db.close()
    best = sustained(steps, args.slo_ms)
    print(f"\nsustained at p99 <= {args.slo_ms:g} ms: {f'{best.offered:g} q/s' if best else 'none of the rates'}")
    print(f"load average (1/5/15 min) before: {load_before}, after: {os.getloadavg()}; cores: {os.cpu_count()}")
    plot(steps, args.slo_ms, args.plot, f"sluice serve + {args.workers} worker processes, extractive")
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
