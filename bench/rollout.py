"""Rollout benchmark: a chunker-only rollout against a cold ingest, and query latency during it against idle.

    PYTHONPATH=$PWD .venv/bin/python bench/rollout.py --data PATH/covid_qa [--docs 20] [--idle-s 60]
        [--questions 20] [--target parent_child|recursive800]

`--data` (or SLUICE_DATASETS_DIR/covid_qa) is the covid_qa folder (docs.jsonl, qa.jsonl). On a database
of its own (`sluice_bench_rollout`, dropped first), the first `--docs` documents are written out as .txt
files and split between two tenants, then:
1. cold ingest: each tenant's files through the ingestion every entry point uses (parse, chunk, embed,
   store into the served index; empty embedding cache): the baseline;
2. a worker and `sluice serve` (answer cache off, so every query runs) and a client asking `--questions`
   covid_qa questions per tenant in turn, one at a time (c=1): once through untimed (warming the worker's
   sentence-embedding cache), then for `--idle-s` seconds: idle latency;
3. the target config promoted and rolled out by the driver `sluice champion rollout` runs, in a process of
   its own with the model loaded before the clock (as for the cold ingest), while the same client keeps
   asking: rollout time, texts embedded (new embedding-cache rows), and latency and failures during it,
   also split by the index that answered (the old one while building, the new one once a tenant switched:
   a parent_child answer reads whole sections, a cost of the config, not of the rollout).
Goals (issue 16): rollout ≤ 0.5 × cold ingest; p99 during rollout ≤ 2 × idle p99; 0 failed queries.
Targets: `parent_child` (children of 1000/150 characters in 3000-character sections: most child texts
equal the old chunks, so the embedding cache serves them), `recursive800` (800/100 chunks: almost no
text shared, the cost of a rollout that must embed nearly everything again).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving.auth import create_key  # noqa: E402
from sluice import champion  # noqa: E402
from sluice.config import PipelineConfig, parse_config  # noqa: E402
from sluice.db import Database, create_tenant, drop_database, migrate  # noqa: E402
from sluice.settings import load_settings  # noqa: E402
from tasks.embed import get_embedder  # noqa: E402
from tasks.generate import NO_ANSWER  # noqa: E402
from tasks.ingest import ingest_source  # noqa: E402
from tasks.ingest_served import ingest_served  # noqa: E402
from tests.reliability.stack import drop_keys, private_settings  # noqa: E402
from tests.serving_support import serving_stack  # noqa: E402

DB = "sluice_bench_rollout"
TENANTS = ("covid-a", "covid-b")
TARGETS = {
    "parent_child": {"kind": "parent_child", "parent_max_chars": 3000, "child_chars": 1000, "child_overlap": 150},
    "recursive800": {"kind": "recursive", "chunk_size": 800, "chunk_overlap": 100},
}


def data_folder(given: str | None) -> Path:
    """--data, else SLUICE_DATASETS_DIR/covid_qa; an error naming both when neither is there."""
    if given:
        return Path(given)
    root = os.environ.get("SLUICE_DATASETS_DIR")
    if root and (Path(root) / "covid_qa").is_dir():
        return Path(root) / "covid_qa"
    raise SystemExit("pass --data PATH/covid_qa (or set SLUICE_DATASETS_DIR to the folder holding covid_qa/)")


def write_tenant_files(folder: Path, docs: list[dict]) -> dict[str, Path]:
    """Alternate documents between the two tenants, one .txt file each."""
    out = {}
    for n, tenant in enumerate(TENANTS):
        out[tenant] = folder / tenant
        out[tenant].mkdir(parents=True, exist_ok=True)
        for doc in docs[n :: len(TENANTS)]:
            (out[tenant] / f"{doc['doc_id']}.txt").write_text(doc["text"])
    return out


def fresh_database(settings) -> None:
    drop_database(settings)
    migrate(settings)


def cold_ingest(settings, db: Database, folders: dict[str, Path]) -> tuple[float, int]:
    """Ingest each tenant's folder into its served index; (seconds, chunks)."""
    get_embedder(PipelineConfig().embedder, settings.embed_batch_size).warm_up()  # model load not timed
    t0, chunks = time.perf_counter(), 0
    for tenant, folder in folders.items():

        def once(config, embedder, folder=folder, tenant=tenant):
            return ingest_source(db, tenant, config, embedder, folder, settings.max_file_bytes)

        chunks += ingest_served(settings, db, tenant, "default", once).summary.chunks
    return time.perf_counter() - t0, chunks


class Client:
    """Asks questions one after another (c=1) in a thread; keeps (seconds, ok, index id) per answer."""

    def __init__(self, url: str, keys: dict[str, str], questions: dict[str, list[str]]):
        self.url, self.keys, self.questions = url, keys, questions
        self.samples: list[tuple[float, bool, str]] = []
        self.stop, self.warm = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        clients = {
            t: httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {k}"}, timeout=300)
            for t, k in self.keys.items()
        }
        n = 0
        while not self.stop.is_set():
            tenant = TENANTS[n % len(TENANTS)]
            question = self.questions[tenant][(n // len(TENANTS)) % len(self.questions[tenant])]
            t0 = time.perf_counter()
            r = clients[tenant].post("/v1/query", json={"question": question})
            body = r.json() if r.status_code == 200 else {}
            ok = body.get("answer") not in (None, NO_ANSWER)
            self.samples.append((time.perf_counter() - t0, ok, body.get("index_id", "")))
            n += 1
            if n == sum(len(q) for q in self.questions.values()):
                self.warm.set()

    def window(self, seconds: float | None = None, until: threading.Event | None = None) -> list:
        """The samples taken while sleeping `seconds`, or until `until` is set."""
        start = len(self.samples)
        if until is not None:
            until.wait()
        else:
            time.sleep(seconds)
        return self.samples[start:]


def summary(samples: list) -> dict:
    """Queries, failures, p50 and p99 of (seconds, ok, index id) samples."""
    if not samples:
        return {"queries": 0}
    times = sorted(s[0] for s in samples)
    q = statistics.quantiles(times, n=100) if len(times) >= 2 else times * 99
    failed = sum(not s[1] for s in samples)
    return {"queries": len(times), "failed": failed, "p50_ms": round(1000 * q[49], 1), "p99_ms": round(1000 * q[98], 1)}


def questions_for(data: Path, folders: dict[str, Path], per_tenant: int) -> dict[str, list[str]]:
    ids = {t: {p.stem for p in f.glob("*.txt")} for t, f in folders.items()}
    out: dict[str, list[str]] = {t: [] for t in folders}
    for line in (data / "qa.jsonl").read_text().splitlines():
        item = json.loads(line)
        for tenant, docs in ids.items():
            if str(item["doc_id"]) in docs:
                out[tenant].append(item["question"])
    return {tenant: questions[:per_tenant] for tenant, questions in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="covid_qa folder (docs.jsonl, qa.jsonl); else SLUICE_DATASETS_DIR/covid_qa")
    parser.add_argument("--docs", type=int, default=20, help="first N covid_qa documents (98 = all)")
    parser.add_argument("--idle-s", type=float, default=60.0, help="seconds of idle queries")
    parser.add_argument("--questions", type=int, default=20, help="questions per tenant, asked in turn")
    parser.add_argument("--target", choices=sorted(TARGETS), default="parent_child")
    parser.add_argument("--work", default="/tmp/sluice-bench-rollout", help="folder for files and logs")
    args = parser.parse_args()
    data, work = data_folder(args.data), Path(args.work)
    base = load_settings(db_name=DB)
    fresh_database(base)
    docs = [json.loads(line) for line in (data / "docs.jsonl").read_text().splitlines()[: args.docs]]
    folders = write_tenant_files(work / "files", docs)
    settings = private_settings(base, "rollout", work, answer_cache=False, db_name=DB)
    settings = settings.model_copy(update={"config_path": None})
    questions = questions_for(data, folders, args.questions)
    run(settings, questions, folders, work, TARGETS[args.target], args.idle_s)


def run(settings, questions: dict, folders: dict[str, Path], work: Path, target_chunker: dict, idle_s: float) -> None:
    """Cold ingest, then idle queries, then the rollout under the same queries; print the figures."""
    with Database(settings) as db:
        for tenant in TENANTS:
            create_tenant(db, tenant)
        keys = {t: create_key(db, t).secret for t in TENANTS}
        cold_s, cold_chunks = cold_ingest(settings, db, folders)
        files = sum(len(list(f.glob("*.txt"))) for f in folders.values())
        print(f"cold ingest: {cold_s:.1f} s, {files} documents, {cold_chunks} chunks", flush=True)
        try:
            with serving_stack(settings, work, api_process=True) as stack:
                client = Client(stack.url, keys, questions)
                client.thread.start()
                client.window(until=client.warm)  # every question once: the worker's sentence cache is warm
                idle = summary(client.window(idle_s))
                print(f"idle: {idle}", flush=True)
                rollout_s, fresh, samples = roll_out_under_queries(settings, db, client, target_chunker)
        finally:
            drop_keys(settings)
    print(f"rollout: {rollout_s:.1f} s = {rollout_s / cold_s:.3f} x cold ingest; {fresh} texts embedded")
    report(idle, samples, PipelineConfig().index_id)


def report(idle: dict, samples: list, old_index: str) -> None:
    """Latency during the rollout, as a whole and split by the index that answered (old: still building)."""
    during = summary(samples)
    print(f"during rollout: {during}")
    print(f"  answered from the old index (build phase): {summary([s for s in samples if s[2] == old_index])}")
    print(f"  answered from the new index (switched): {summary([s for s in samples if s[2] != old_index])}")
    ratios = f"p50 ratio {during['p50_ms'] / idle['p50_ms']:.2f}, p99 ratio {during['p99_ms'] / idle['p99_ms']:.2f}"
    print(f"{ratios}, failed {during['failed'] + idle['failed']}")


def roll_out_under_queries(settings, db: Database, client: Client, target_chunker: dict) -> tuple[float, int, list]:
    """Promote the target and run the rollout driver in a process of its own while the client asks.

    Returns (seconds, texts the rollout embedded, the samples taken meanwhile). The rollout process loads
    the model before the clock starts (as the cold ingest did) and runs the same driver as `sluice champion
    rollout`; in this process its Python work would hold the GIL against the client's and skew the latencies.
    """
    target = parse_config({"chunker": target_chunker})
    champion.store_config(db, target)
    champion.record_promotion(db, target.config_id, run_id=None, model_version=None, evaluated_on=None, reason="bench")
    context = multiprocessing.get_context("spawn")
    ready, go, result = context.Event(), context.Event(), context.Queue()
    child = context.Process(target=rollout_child, args=(settings.db_name, ready, go, result))
    child.start()
    ready.wait()
    cached, done, reported = cache_rows(db), threading.Event(), []
    threading.Thread(target=lambda: (reported.append(result.get()), done.set()), daemon=True).start()
    go.set()
    during = client.window(until=done)
    seconds, outcomes = reported[0]
    child.join()
    print(f"rollout outcomes: {outcomes}", flush=True)
    client.stop.set()
    client.thread.join(timeout=300)
    return seconds, cache_rows(db) - cached, during


def rollout_child(db_name: str, ready, go, result) -> None:
    """The rollout process: load the model, wait for the signal, run the driver, report (seconds, outcomes)."""
    from tasks.rollout import run_rollout

    settings = load_settings(db_name=db_name)
    get_embedder(PipelineConfig().embedder, settings.embed_batch_size).warm_up()
    with Database(settings) as db:
        ready.set()
        go.wait()
        t0 = time.perf_counter()
        ro = run_rollout(settings, db, None, "bench")
        result.put((time.perf_counter() - t0, ro.outcomes))


def cache_rows(db: Database) -> int:
    """Vectors in the tenants' embedding caches: each text the model embedded adds one."""
    return sum(db.execute_as(t, "SELECT count(*) FROM embedding_cache")[0][0] for t in TENANTS)


if __name__ == "__main__":
    main()
