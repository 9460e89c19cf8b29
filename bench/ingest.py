"""Ingestion benchmark: end-to-end ingest vs raw model.encode of the same chunks, re-ingest, memory.

    PYTHONPATH=$PWD .venv/bin/python bench/ingest.py [--repeats 2] [--limit N]

Each measurement runs in its own child process (so peak RSS is that of one ingest), with the model
loaded and unstructured imported before the clock starts. Baseline (raw encode) and candidate
(ingest into a fresh tenant, so the embedding cache is empty) are interleaved and repeated.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COVID = ROOT.parent / "shared" / "data" / "covid_qa" / "docs.jsonl"
EXAMPLES = ROOT.parent / "shared" / "data" / "example-docs"
BENCH_DB = "sluice_bench"


def write_corpus(folder: Path, limit: int | None) -> int:
    """One .txt file per covid_qa document."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = COVID.read_text().splitlines()[:limit]
    for line in lines:
        doc = json.loads(line)
        (folder / f"{doc['doc_id']}.txt").write_text(doc["text"])
    return len(lines)


# ---------------------------------------------------------------- child process
def child(mode: str, source: str, tenant: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from sluice.db import Database
    from sluice.settings import load_settings
    from tasks.embed import get_embedder
    from tasks.ingest import ingest_source, list_source
    from tasks.parse import parse_file

    settings = load_settings(db_name=BENCH_DB)
    from sluice.config import PipelineConfig

    pipeline = PipelineConfig()
    embedder = get_embedder(pipeline.embedder, settings.embed_batch_size)
    embedder.warm_up()
    files = list_source(source)
    parse_file(files[0].path, "warm-up", pipeline.parser)  # imports unstructured before the clock
    if mode == "encode":
        from tasks.chunk import make_chunker

        chunker = make_chunker(pipeline.chunker, embedder)
        texts = [c.text for f in files for c in chunker.split(parse_file(f.path, f.source_id, pipeline.parser))]
        start = time.perf_counter()
        embedder.encode(texts)
        seconds = time.perf_counter() - start
        out = {"chunks": len(texts)}
    else:
        model_seconds = _time_encode(embedder)
        with Database(settings) as db:
            start = time.perf_counter()
            summary = ingest_source(
                db,
                tenant,
                pipeline,
                embedder,
                source,
                settings.max_file_bytes,
                batch_chunks=settings.ingest_batch_chunks,
            )
            seconds = time.perf_counter() - start
        out = {k: v for k, v in summary.as_dict().items() if k != "run_id"}
        out["encode_seconds"] = model_seconds[0]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "seconds": seconds, "rss_mb": rss_mb, "docs": len(files), **out}


def _time_encode(embedder) -> list[float]:
    """Accumulate the time the ingest spends inside the model (same process, same load)."""
    spent = [0.0]
    encode = embedder.encode

    def timed(texts):
        start = time.perf_counter()
        try:
            return encode(texts)
        finally:
            spent[0] += time.perf_counter() - start

    embedder.encode = timed
    return spent


def run_child(mode: str, source: Path, tenant: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(source), tenant]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


# ---------------------------------------------------------------- orchestration
def new_tenant(prefix: str) -> str:
    from sluice.db import Database, create_tenant
    from sluice.settings import load_settings

    tenant = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with Database(load_settings(db_name=BENCH_DB)) as db:
        create_tenant(db, tenant)
    return tenant


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="first N covid_qa documents only")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SOURCE", "TENANT"))
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--memory-files", nargs="*", default=["example-10k.html"], help="example-docs files ingested alone for peak RSS"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    sys.path.insert(0, str(ROOT))
    from sluice.db import migrate
    from sluice.settings import load_settings

    migrate(load_settings(db_name=BENCH_DB))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "covid"
        write_corpus(corpus, args.limit)
        results = compare(corpus, args.repeats)
        if not args.skip_memory:
            results["memory"] = memory(Path(tmp), args.memory_files)
    print(json.dumps(results, indent=2))


def compare(corpus: Path, repeats: int) -> dict:
    ratios, rerun_ratios, firsts, inside = [], [], [], []
    for _ in range(repeats):
        base = run_child("encode", corpus, "-")
        tenant = new_tenant("bench")
        first = run_child("ingest", corpus, tenant)
        again = run_child("ingest", corpus, tenant)
        assert first["failed"] == 0 and again["unchanged"] == first["docs"] and again["embedded"] == 0
        ratios.append(first["seconds"] / base["seconds"])
        inside.append(first["seconds"] / first["encode_seconds"])
        rerun_ratios.append(again["seconds"] / first["seconds"])
        firsts.append(first)
    best = min(firsts, key=lambda r: r["seconds"])
    return {
        "ingest_over_encode": [round(r, 3) for r in ratios],
        "reingest_over_ingest": [round(r, 4) for r in rerun_ratios],
        "median_ingest_over_encode": round(statistics.median(ratios), 3),
        "ingest_over_its_own_encode_time": [round(r, 3) for r in inside],
        "docs_per_s": round(best["docs"] / best["seconds"], 2),
        "chunks_per_s": round(best["chunks"] / best["seconds"], 1),
        "peak_rss_mb_covid": round(max(r["rss_mb"] for r in firsts)),
    }


def memory(tmp: Path, names: list[str]) -> dict:
    """Peak RSS of one ingest of each large single file: it must not grow with corpus size."""
    out = {}
    for name in names:
        folder = tmp / name.replace(".", "_")
        folder.mkdir()
        (folder / name).symlink_to(EXAMPLES / name)
        result = run_child("ingest", folder, new_tenant("mem"))
        out[name] = {
            "rss_mb": round(result["rss_mb"]),
            "seconds": round(result["seconds"], 1),
            "chunks": result["chunks"],
        }
    return out


if __name__ == "__main__":
    main()
