"""Distributed ingestion: covid_qa through the Celery `ingest` queue with 1 and 2 worker processes.

    PYTHONPATH=$PWD .venv/bin/python bench/distributed.py [--limit 20] [--repeats 2] [--shard-size 2]

Three measurements per round, each into a fresh tenant (empty embedding cache), order alternating:
- *direct*: the single-task path (`ingest_served` + `ingest_source`, what one `sluice.ingest` job runs) in
  a child process, one torch thread, model loaded before the clock, with its time split into parse,
  embed, store and the rest (read, hash, chunk, listing) by timers around those three calls;
- *1 worker*: `serving.shards.ingest_distributed` with one `sluice worker --concurrency 1` (warm);
- *2 workers*: the same with `--concurrency 2` (one torch thread per process, as deployed).
Every process is warm before its clock starts: model loaded and, unless `--cold-parser`, its parse child's
imports done (`SLUICE_WORKER_WARM_PARSER=1`; the direct child warms its own), so a second process does not add
a second parser start (~5 CPU s) to a 20-document run: the steady state of a long ingest.
Scaling = 1-worker time ÷ 2-worker time (goal ≥ 1.8, efficiency = scaling ÷ 2); orchestration overhead
per document = (1-worker time − direct time) ÷ documents, as % of the direct time per document (goal ≤ 5 %):
the broker, the shard tasks, the ledger rows and the parent's polling, with the same single process
doing the work.

Corpus: covid_qa under SLUICE_DATASETS_DIR, one .txt per document; without it the sample corpus
(data/sample/corpus), said in the output. Broker: SLUICE_BROKER_URL, else redis://127.0.0.1:6379/0
(scripts/ensure-redis.sh) under a key prefix of its own; database: the embedded server's `sluice_bench`.

Hook for the multi-host harness: `--external-workers N` starts no worker and measures only the
distributed run against the workers already consuming the broker (e.g. N worker network namespaces);
`--corpus DIR` names a corpus folder those workers can read (shards name files by path).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "sluice_bench"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def bench_settings():
    """The bench database, the broker of SLUICE_BROKER_URL (or local Redis) under a private key prefix."""
    from sluice.settings import load_settings

    settings = load_settings(db_name=BENCH_DB)
    return settings.model_copy(
        update={
            "broker_url": settings.broker_url or DEFAULT_BROKER,
            "broker_key_prefix": settings.broker_key_prefix or f"bench-dist-{uuid.uuid4().hex[:8]}:",
            "worker_torch_threads": 1,
        }
    )


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system, reaped children included) of a process and its live descendants, from /proc."""
    return sum(tree_cpu_by_process(root).values())


def tree_cpu_by_process(root: int) -> dict[int, float]:
    """CPU seconds of a process and each of its live descendants (reaped children in their parent's), by pid."""
    tick, procs = os.sysconf("SC_CLK_TCK"), {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            procs[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / tick)
    tree = {root}
    for _ in range(8):  # parse children are at depth 2 (worker main, pool process, parse process)
        tree |= {pid for pid, (ppid, _) in procs.items() if ppid in tree}
    return {pid: procs.get(pid, (0, 0.0))[1] for pid in tree}


def _roles(root: int, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """CPU seconds spent in the run per kind of process: the worker's main process, its pool processes (model,
    chunking, store), their parse children."""
    out: dict[str, float] = {}
    for pid, cpu in after.items():
        role = "main" if pid == root else "parse" if _is_parser(pid) else "pool"
        out[role] = round(out.get(role, 0.0) + cpu - before.get(pid, 0.0), 2)
    return out


def _is_parser(pid: int) -> bool:
    try:
        return b"tasks.parse_child" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def new_tenant(settings, prefix: str) -> str:
    from sluice.db import Database, create_tenant

    tenant = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with Database(settings) as db:
        create_tenant(db, tenant)
    return tenant


# ---------------------------------------------------------------- direct (child process)
def direct_child(source: str, tenant: str) -> dict:
    """The single-task ingest of `source`, timed, with its parse, embed and store shares."""
    import torch

    import tasks.ingest as ingest
    from sluice.db import Database
    from tasks.embed import get_embedder
    from tasks.ingest_served import ingest_served

    torch.set_num_threads(1)
    settings = bench_settings()
    with Database(settings) as db:
        from sluice.served import served

        embedder = get_embedder(served(settings, db, tenant, "default").config.embedder, settings.embed_batch_size)
        embedder.warm_up()
        embedder.encode(["warm up"])
        if settings.worker_warm_parser:  # as warm as the workers: the parser imported
            from tasks.parse_process import parse_pool

            parse_pool().warm()
        spent = {name: _timed(ingest, name) for name in ("parse_bounded", "embed_texts", "store_prepared")}

        def once(config, emb):
            cap = settings.max_file_bytes
            return ingest.ingest_source(db, tenant, config, emb, source, cap, batch_chunks=settings.ingest_batch_chunks)

        start, cpu = time.perf_counter(), tree_cpu(os.getpid())
        summary = ingest_served(settings, db, tenant, "default", once).summary
        seconds, cpu = time.perf_counter() - start, tree_cpu(os.getpid()) - cpu
    shares = {"parse_s": spent["parse_bounded"][0], "embed_s": spent["embed_texts"][0]}
    shares["store_s"] = spent["store_prepared"][0]
    shares["other_s"] = seconds - sum(shares.values())
    counts = {"docs": summary.ingested + summary.updated, "chunks": summary.chunks, "failed": summary.failed}
    shares = {k: round(v, 3) for k, v in shares.items()}
    return {"mode": "direct", "seconds": seconds, "cpu_s": round(cpu, 2), **counts, **shares}


def _timed(module, name: str) -> list[float]:
    """Replace `module.name` by a wrapper that adds its wall time to the returned cell."""
    spent = [0.0]
    inner = getattr(module, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    setattr(module, name, timed)
    return spent


def run_direct(corpus: Path, settings, warm_parser: bool) -> dict:
    tenant = new_tenant(settings, "dist-direct")
    env = {**os.environ, **_env(settings, warm_parser)}
    cmd = [sys.executable, __file__, "--child", str(corpus), tenant]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"direct child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- distributed
def _env(settings, warm_parser: bool) -> dict[str, str]:
    return {
        "SLUICE_WORKER_WARM_PARSER": "1" if warm_parser else "0",
        "SLUICE_DB_NAME": BENCH_DB,
        "SLUICE_BROKER_URL": settings.broker_url,
        "SLUICE_BROKER_KEY_PREFIX": settings.broker_key_prefix,
        "SLUICE_WORKER_TORCH_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }


@contextmanager
def workers(settings, processes: int, log: Path, warm_parser: bool):
    """`sluice worker --concurrency N` on the ingest queue, warm (model loaded in every process, and with
    `warm_parser` its parse child started) before yielding."""
    cmd = [sys.executable, "-m", "cli", "worker", "--concurrency", str(processes), "--queues", "ingest"]
    cmd += ["--name", f"bench-{processes}-{uuid.uuid4().hex[:4]}@%h"]
    env = {**os.environ, **_env(settings, warm_parser)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while log.read_text().count("worker process warm") < processes or "ready." not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def run_distributed(corpus: Path, settings, shard_size: int, label: str, worker: int | None = None) -> dict:
    """One distributed run; CPU seconds of the worker's process tree and of this (parent) process when known."""
    from serving.shards import ingest_distributed
    from sluice.db import Database

    tenant = new_tenant(settings, "dist")
    with Database(settings) as db:
        start, own = time.perf_counter(), time.process_time()
        before = tree_cpu_by_process(worker) if worker else {}
        state = ingest_distributed(settings, db, tenant, corpus, shard_size, timeout_s=7200)
        seconds = time.perf_counter() - start
        after = tree_cpu_by_process(worker) if worker else {}
        parent = time.process_time() - own
        cpu = sum(after.values()) - sum(before.values()) + parent
    summary = state.summary
    docs = summary.ingested + summary.updated
    out = {"mode": label, "seconds": seconds, "docs": docs, "chunks": summary.chunks, "shards": state.shards}
    if not worker:
        return out
    return {
        **out,
        "cpu_s": round(cpu, 2),
        "cpu_by_role": {**_roles(worker, before, after), "parent": round(parent, 2)},
    }


def one_round(corpus: Path, settings, args, tmp: Path, reverse: bool) -> list[dict]:
    """Direct, 1 worker, 2 workers (reversed on odd rounds); each result tagged with the load average."""
    steps = [("direct", 0), ("1 worker", 1), ("2 workers", 2)]
    out = []
    for label, processes in reversed(steps) if reverse else steps:
        if processes == 0:
            result = run_direct(corpus, settings, not args.cold_parser)
        else:
            with workers(settings, processes, tmp / f"worker-{processes}.log", not args.cold_parser) as proc:
                result = run_distributed(corpus, settings, args.shard_size, label, proc.pid)
        result["load1"] = round(os.getloadavg()[0], 1)
        print(json.dumps(result), flush=True)
        out.append(result)
    return out


def summarise(rounds: list[list[dict]]) -> dict:
    """Per round: scaling, efficiency, overhead per document; medians across rounds."""
    rows = []
    for results in rounds:
        by = {r["mode"]: r for r in results}
        direct, one, two = by["direct"], by["1 worker"], by["2 workers"]
        per_doc = (one["seconds"] - direct["seconds"]) / max(direct["docs"], 1)
        rows.append(
            {
                "scaling_1_to_2": round(one["seconds"] / two["seconds"], 3),
                "efficiency": round(one["seconds"] / two["seconds"] / 2, 3),
                "overhead_s_per_doc": round(per_doc, 4),
                "overhead_pct": round(100 * (one["seconds"] - direct["seconds"]) / direct["seconds"], 2),
                # CPU seconds are far less sensitive to other work on the machine than wall time.
                "cpu_overhead_pct": round(100 * (one["cpu_s"] - direct["cpu_s"]) / direct["cpu_s"], 2),
                "cpu_s": {k: v["cpu_s"] for k, v in by.items()},
                "docs_per_s": {k: round(v["docs"] / v["seconds"], 3) for k, v in by.items()},
            }
        )
    keys = ("scaling_1_to_2", "efficiency", "overhead_pct", "cpu_overhead_pct")
    median = {k: statistics.median(r[k] for r in rows) for k in keys}
    return {"rounds": rows, "median": median}


def corpus_folder(args, tmp: Path) -> tuple[Path, str]:
    """The corpus to ingest and a note naming it (covid_qa, or the sample corpus when covid_qa is absent)."""
    from bench.paths import write_covid_txt
    from sluice.errors import ConfigError
    from sluice.settings import load_settings

    if args.corpus:
        return Path(args.corpus), f"corpus {args.corpus}"
    try:
        load_settings().dataset_path("covid_qa")
    except ConfigError as exc:
        return ROOT / "data" / "sample" / "corpus", f"covid_qa absent ({exc}): the sample corpus instead"
    write_covid_txt(tmp / "covid", args.limit or None)
    return tmp / "covid", f"covid_qa, first {args.limit or 'all'} documents"


def main() -> None:
    args = _arguments().parse_args()
    if args.child:
        print(json.dumps(direct_child(*args.child)))
        return
    from sluice.db import migrate

    settings = bench_settings()
    migrate(settings)
    with tempfile.TemporaryDirectory() as tmp:
        corpus, note = corpus_folder(args, Path(tmp))
        print(json.dumps({"corpus": note, "load1_before": os.getloadavg()[0]}), flush=True)
        if args.external_workers:
            label = f"{args.external_workers} external workers"
            print(json.dumps(run_distributed(corpus, settings, args.shard_size, label)))
            return
        first = 1 if args.reverse_first else 0  # rounds of two invocations alternate too
        rounds = [one_round(corpus, settings, args, Path(tmp), (first + i) % 2 == 1) for i in range(args.repeats)]
    print(json.dumps({"corpus": note, **summarise(rounds)}, indent=2))


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=20, help="first N covid_qa documents (0: all)")
    parser.add_argument("--shard-size", type=int, default=2, help="documents per shard")
    parser.add_argument("--external-workers", type=int, default=0, help="measure against N running workers only")
    parser.add_argument("--corpus", default=None, help="a corpus folder instead of covid_qa")
    parser.add_argument(
        "--cold-parser",
        action="store_true",
        help="start every process's parse child inside the timed run (runs 1-3): each process pays ~5 CPU s of imports",
    )
    parser.add_argument("--reverse-first", action="store_true", help="start with the reversed order (2, 1, direct)")
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "TENANT"))
    return parser


if __name__ == "__main__":
    main()
