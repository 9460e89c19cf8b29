"""Latency and throughput of /v1/query through API + Celery versus the same query in-process.

    PYTHONPATH=$PWD python bench/serving.py [--workers 2] [--rounds 2] [--concurrency 1 8 32]
        [--breakdown 40] [--torch-threads 1]

Needs Redis on 127.0.0.1:6379 (scripts/ensure-redis.sh) and `sluice db up`. Starts `sluice worker`
and `sluice serve` as subprocesses (answer cache off, limits off), ingests the sample corpus into
tenant `bench`, prints the c=1 stage breakdown (medians of the response's `timings_ms`), then for
each concurrency alternates in-process and served rounds. Every question is unique per request, so
neither path hits a cache for the question embedding. Both paths compute with the same number of
torch threads (`--torch-threads`, given to each worker process too), and the CPU time per request
of the processes involved is reported next to the latencies: on a shared machine it is the figure
the load cannot inflate."""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving.auth import create_key  # noqa: E402
from serving.celery_app import create_celery  # noqa: E402
from serving.embedding_cache import CachingEmbedder  # noqa: E402
from sluice.config import PipelineConfig  # noqa: E402
from sluice.db import Database, create_tenant, migrate  # noqa: E402
from sluice.settings import load_settings  # noqa: E402
from tasks.answer import answer_question  # noqa: E402
from tasks.embed import get_embedder  # noqa: E402
from tasks.ingest import ingest_source  # noqa: E402

REDIS = "redis://127.0.0.1:6379/12"
PORT = 8791
QUESTIONS = [
    "How many days do I have to return an unridden bike",
    "How much is the restocking fee",
    "How long is the warranty on a carbon fibre frame",
    "Who pays for return shipping",
]
_ids = count()


def question() -> str:
    n = next(_ids)
    return f"{QUESTIONS[n % len(QUESTIONS)]} (request {n})?"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def run(fn, concurrency: int, n: int) -> tuple[list[float], float]:
    def one(_):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = list(pool.map(one, range(n)))
    return lat, n / (time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def bench_tenant(settings, tenant: str = "bench"):
    """Migrate, ingest the sample corpus into `tenant` in-process; (db, config, embedder, API key)."""
    migrate(settings)
    config = PipelineConfig()
    embedder = CachingEmbedder(get_embedder(config.embedder, settings.embed_batch_size, settings.data_dir))
    db = Database(settings)
    create_tenant(db, tenant)
    ingest_source(db, tenant, config, embedder.inner, ROOT / "data/sample/corpus", settings.max_file_bytes)
    return db, config, embedder, create_key(db, tenant).secret


def served_env(redis_url: str = REDIS, **extra: str) -> dict[str, str]:
    """Environment of the served stack: answer cache off, rate and queue limits off unless `extra` sets them."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        SLUICE_BROKER_URL=redis_url,
        SLUICE_ANSWER_CACHE="false",
        SLUICE_RATE_LIMIT_PER_S="100000",
        SLUICE_RATE_LIMIT_BURST="100000",
        SLUICE_QUEUE_LIMIT="100000",
    )
    return {**env, **extra}


def start_stack(env: dict, workers: int, port: int, logs: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    """`sluice worker` (WARNING logs) and `sluice serve` as subprocesses; (worker, api)."""
    logs.mkdir(exist_ok=True)
    py = [sys.executable, "-m", "cli"]
    worker = start(py + ["worker", "--concurrency", str(workers), "--loglevel", "WARNING"], env, logs / "worker.log")
    api = start(py + ["serve", "--port", str(port)], env, logs / "api.log")
    return worker, api


def stop_stack(*procs: subprocess.Popen) -> None:
    """SIGTERM each process group and wait for it."""
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="Levels to measure.")
    ap.add_argument("--breakdown", type=int, default=40, help="Sequential requests for the c=1 stage breakdown.")
    ap.add_argument(
        "--torch-threads", type=int, default=1, help="Torch threads, the same in-process and per worker process."
    )
    args = ap.parse_args()
    settings = load_settings(worker_torch_threads=args.torch_threads)
    # A fair baseline: the in-process path computes with as many torch threads as each worker process.
    torch.set_num_threads(args.torch_threads)
    db, config, embedder, key = bench_tenant(settings)
    env = served_env(SLUICE_WORKER_TORCH_THREADS=str(args.torch_threads))
    worker, api = start_stack(env, args.workers, PORT, Path("/tmp/sluice-bench-serving"))
    try:
        bench(db, config, embedder, key, worker, api, args)
    finally:
        stop_stack(api, worker)
        db.close()


def wait_ready(client: httpx.Client, workers: int, worker: subprocess.Popen) -> None:
    """Wait for /readyz with live workers, then send a few warm-up queries."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            ready = client.get("/readyz").json()
            if ready["ready"] and ready["checks"]["workers"].startswith("ok"):
                # each worker process answers at least once before timing starts
                for _ in range(4 * workers):
                    client.post("/v1/query", json={"question": question()}).raise_for_status()
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("API or worker not ready; see /tmp/sluice-bench-serving/*.log")


def breakdown(client: httpx.Client, n: int, procs: dict[str, list[int]]) -> None:
    """Medians over n sequential queries of each stage the response reports, the client's view, and CPU per process."""
    rows: dict[str, list[float]] = {}
    cpu0 = {name: cpu_s(pids) for name, pids in procs.items()}
    for _ in range(n):
        t0 = time.perf_counter()
        body = client.post("/v1/query", json={"question": question()}).json()
        timings = {**body["timings_ms"], "client_total": (time.perf_counter() - t0) * 1000}
        timings["api_outside_handler"] = timings["client_total"] - timings["api_total"]
        timings["api_minus_worker"] = timings["api_total"] - timings["worker_total"]
        for k, v in timings.items():
            rows.setdefault(k, []).append(v)
    print(f"c=1 breakdown, medians of {n} sequential requests (ms):")
    for k in sorted(rows, key=lambda k: -statistics.median(rows[k])):
        print(f"  {k:22s} {statistics.median(rows[k]):7.2f}")
    cpu = ", ".join(f"{name} {(cpu_s(pids) - cpu0[name]) * 1000 / n:.1f}" for name, pids in procs.items())
    print(f"CPU ms per request: {cpu}")
    print(f"load average {os.getloadavg()[0]:.2f}\n")


def bench(db, config, embedder, key, worker, api, args) -> None:
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{PORT}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
        limits=httpx.Limits(max_connections=64, keepalive_expiry=2),  # under uvicorn's 5 s idle close
    )
    wait_ready(client, args.workers, worker)
    answer_question(db, "bench", config, embedder, question())  # warm the in-process path
    paths = measured_paths(db, config, embedder, client)
    procs = {"API": [api.pid], "worker main": [worker.pid], "worker pool": children(worker.pid)}
    breakdown(client, args.breakdown, procs)
    print("| concurrency | path | p50 ms | p99 ms | req/s | CPU ms/request |")
    print("|---|---|---|---|---|---|")
    # CPU per request is what the machine's load cannot inflate: the in-process path's is this
    # process's; the served path's is the API's plus the worker's (main process and pool children).
    served_pids = [api.pid, worker.pid, *children(worker.pid)]
    for conc in args.concurrency:
        level = paths if conc == 1 else dict(list(paths.items())[:2])
        level_rows(conc, level, served_pids, args.rounds)
    procs = children(worker.pid)
    print(
        f"\nworker main RSS {rss_mb(worker.pid):.0f} MB; worker processes RSS: "
        + ", ".join(f"{rss_mb(p):.0f} MB" for p in procs)
    )
    print(f"API process RSS {rss_mb(api.pid):.0f} MB")


def measured_paths(db, config, embedder, client: httpx.Client) -> dict:
    """The two paths compared, then (measured at c=1 only) the two floors of the served one."""

    def local():
        answer_question(db, "bench", config, embedder, question())

    def served():
        client.post("/v1/query", json={"question": question()}).raise_for_status()

    # Floors of the served path, run in the same rounds at c=1: an HTTP round trip to the same API
    # (uvicorn, FastAPI, the observing middleware; no auth, no body), and a no-op Celery task
    # (Celery's built-in `celery.accumulate`) through the same broker, worker and result backend.
    celery = create_celery(load_settings(broker_url=REDIS))

    def http_floor():
        client.get("/healthz").raise_for_status()

    def celery_floor():
        celery.send_task("celery.accumulate", args=[1], queue="query").get(timeout=30)

    return {
        "in-process": local,
        "API+Celery": served,
        "floor: HTTP GET /healthz": http_floor,
        "floor: no-op Celery task": celery_floor,
    }


def level_rows(conc: int, paths: dict, served_pids: list[int], rounds: int) -> None:
    """Measure every path at concurrency `conc`, alternating them over the rounds; print their rows."""
    n = {1: 40, 8: 80, 32: 128}.get(conc, 64)
    results = {name: ([], [], []) for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            pids = [os.getpid()] if name == "in-process" else served_pids
            cpu0 = cpu_s(pids)
            lat, tput = run(fn, conc, n)
            results[name][0].extend(lat)
            results[name][1].append(tput)
            results[name][2].append((cpu_s(pids) - cpu0) * 1000 / n)
    for name, (lat, tputs, cpu) in results.items():
        print(
            f"| {conc} | {name} | {pct(lat, 50):.1f} | {pct(lat, 99):.1f} | {statistics.median(tputs):.1f}"
            f" | {statistics.median(cpu):.1f} |"
        )
    p50 = {k: pct(v[0], 50) for k, v in results.items()}
    overhead = p50["API+Celery"] - p50["in-process"]
    print(f"|   | serving overhead at p50 | {overhead:+.1f} ms | | | |")
    if conc == 1:
        floors = p50["floor: HTTP GET /healthz"] + p50["floor: no-op Celery task"]
        print(f"|   | overhead above the two floors | {overhead - floors:+.1f} ms | | | |")
    print(f"|   | load average (1 min) | {os.getloadavg()[0]:.1f} | | | |")


if __name__ == "__main__":
    main()
