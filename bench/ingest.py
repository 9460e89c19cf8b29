"""Ingestion benchmark: end-to-end ingest vs raw model.encode of the same chunks, re-ingest, memory.

    PYTHONPATH=$PWD .venv/bin/python bench/ingest.py [--repeats 2] [--limit N]

Each measurement runs in its own child process (so peak RSS is that of one ingest), with the model
loaded and unstructured imported before the clock starts. Baseline (raw encode) and candidate
(ingest into a fresh tenant, so the embedding cache is empty) are interleaved and repeated.

    --parts        parse and chunk alone (wall and CPU seconds): the non-model work, no vectors needed
    --warm         ingest_source and the Prefect flow into tenants whose cache holds every vector
                   (everything but the model), next to Sluice's store alone
    --langchain    the same chunks through PGVector (bench/ingest_langchain.py in the peer venv,
                   SLUICE_BENCH_VENV, default .bench-venv/, built by scripts/bench-venv.sh): store alone
                   (vectors given) and end to end (--e2e-limit docs)
    --peer-tuned   with --langchain: each round also runs PGVector with MALLOC_*_THRESHOLD_ set, the
                   allocator tuning Sluice's embedder applies to itself
    --isolation    parsing in the ingesting process (as before bounded parsing) vs in the bounded parse
                   process (tasks.parse_process), interleaved: cold ingests and warm-cache ones
    --skip-encode  skip the ingest vs raw encode comparison (e.g. to run only the above)
Vectors for --warm/--langchain come from tenant 'bench-cache' (seeded from every bench tenant's cache),
so the model only runs for chunk texts no earlier bench run embedded.
Corpora (covid_qa, example-docs) are read under SLUICE_DATASETS_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "sluice_bench"


# ---------------------------------------------------------------- child process
def child(mode: str, source: str, tenant: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import tasks.ingest
    from tasks.ingest import list_source
    from tasks.parse import parse_file

    settings, pipeline, embedder = _loaded()
    files = list_source(source)
    warm_up_s = _warm_up(mode, files, pipeline, embedder)
    if mode == "ingest-inproc":
        tasks.ingest.parse_bounded = parse_file
    if mode == "idle":  # the floor every ingest child starts from: model loaded, unstructured imported
        return {"mode": mode, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if mode in ("prep", "store", "parts"):
        return store_child(mode, files, Path(tenant), settings, pipeline, embedder)
    if mode == "flow":
        return flow_child(source, tenant, settings)
    if mode == "encode":
        seconds, out = _encode_only(files, pipeline, embedder)
    else:
        seconds, out = _ingest_timed(settings, tenant, pipeline, embedder, source)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = round(os.getloadavg()[1], 1)  # 5-minute load average at the end: the machine is shared
    out = {**out, "warm_up_s": round(warm_up_s, 2), "parser_peak_mb": _parser_peak_mb()}
    return {"mode": mode, "seconds": seconds, "rss_mb": rss_mb, "docs": len(files), "load5": load, **out}


def _loaded() -> tuple:
    """(settings, default pipeline config, its embedder with the model loaded)."""
    from sluice.config import PipelineConfig
    from sluice.settings import load_settings
    from tasks.embed import get_embedder

    settings = load_settings(db_name=BENCH_DB)
    pipeline = PipelineConfig()
    embedder = get_embedder(pipeline.embedder, settings.embed_batch_size, settings.data_dir)
    embedder.warm_up()
    return settings, pipeline, embedder


def _warm_up(mode: str, files: list, pipeline, embedder) -> float:
    """Import unstructured (in the parse process for `ingest`) and the chunker's splitter before the clock.

    PGVector's side does the same. `ingest-inproc` parses in this process, as ingestion did before bounded parsing.
    """
    from tasks.chunk import make_chunker
    from tasks.parse import parse_file
    from tasks.parse_process import parse_bounded

    warm_parse = parse_bounded if mode == "ingest" else parse_file
    started = time.perf_counter()
    warm_doc = warm_parse(files[0].path, "warm-up", pipeline.parser, files[0].path.read_bytes())
    make_chunker(pipeline.chunker, embedder).split(warm_doc)
    return time.perf_counter() - started


def _encode_only(files: list, pipeline, embedder) -> tuple[float, dict]:
    """One raw model.encode call over every chunk of the corpus (no slicing, no cache): (seconds, figures)."""
    from tasks.chunk import make_chunker
    from tasks.parse import parse_file

    chunker = make_chunker(pipeline.chunker, embedder)
    texts = [c.text for f in files for c in chunker.split(parse_file(f.path, f.source_id, pipeline.parser))]
    start, cpu = time.perf_counter(), time.process_time()
    embedder._encode(texts)
    seconds = time.perf_counter() - start
    return seconds, {"chunks": len(texts), "cpu_seconds": time.process_time() - cpu}


def _ingest_timed(settings, tenant: str, pipeline, embedder, source: str) -> tuple[float, dict]:
    """Ingest the corpus into `tenant`, timing the model's share: (seconds, the run's summary and figures)."""
    from sluice.db import Database
    from tasks.ingest import ingest_source

    model_seconds = _time_encode(embedder)
    with Database(settings) as db:
        start, cpu = time.perf_counter(), time.process_time()
        limit, batch = settings.max_file_bytes, settings.ingest_batch_chunks
        summary = ingest_source(db, tenant, pipeline, embedder, source, limit, batch_chunks=batch)
        seconds = time.perf_counter() - start
    out = {k: v for k, v in summary.as_dict().items() if k != "run_id"}
    out["encode_seconds"] = model_seconds[0]
    out["cpu_seconds"] = time.process_time() - cpu  # this process only: Postgres' share is not in it
    return seconds, out


def _parser_peak_mb() -> float | None:
    """Peak RSS of this process's parse process (VmHWM), when it has one."""
    from tasks.parse_process import parse_pool

    for pid in parse_pool().pids():
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024
    return None


def store_child(mode: str, files: list, data: Path, settings, pipeline, embedder) -> dict:
    """prep: write the corpus' chunks and their vectors (from the cache tenant named in `data`'s
    cache.txt, so the model runs only for texts never seen) for bench/ingest_langchain.py.
    store: time parse, chunk and Sluice's store alone (vectors given) into the tenant in tenant.txt."""
    from sluice.db import Database
    from tasks.chunk import make_chunker
    from tasks.ingest import CachedEncoder
    from tasks.parse import parse_file

    chunker = make_chunker(pipeline.chunker, embedder)
    t0, c0 = time.perf_counter(), time.process_time()
    docs = [parse_file(f.path, f.source_id, pipeline.parser) for f in files]
    t1, c1 = time.perf_counter(), time.process_time()
    chunks = [chunker.split(d) for d in docs]
    t2, c2 = time.perf_counter(), time.process_time()
    texts = [c.text for cs in chunks for c in cs]
    times = {"parse_seconds": t1 - t0, "chunk_seconds": t2 - t1, "parse_cpu": c1 - c0, "chunk_cpu": c2 - c1}
    if mode == "parts":  # parse and chunk only: needs no vectors, so it runs on any corpus size
        return {"mode": mode, "chunks": len(texts), "docs": len(files), **times, **_load()}
    with Database(settings) as db:
        if mode == "prep":
            vectors = CachedEncoder(db, (data / "cache.txt").read_text(), embedder).encode(texts)
            np.save(data / "vectors.npy", vectors)
            pairs = zip(files, chunks, strict=True)
            listing = [{"source": f.source_id, "texts": [c.text for c in cs]} for f, cs in pairs]
            (data / "chunks.json").write_text(json.dumps(listing))
            return {"mode": mode, "chunks": len(texts), "embedded": embedder.encoded}
        seconds = _store_timed(db, data, list(zip(files, docs, chunks, strict=True)), len(texts), pipeline, embedder)
    return {"mode": mode, "seconds": seconds, "chunks": len(texts), "docs": len(files), **times}


def _store_timed(db, data: Path, parsed: list[tuple], count: int, pipeline, embedder) -> float:
    """Seconds Sluice's store takes for the (file, document, chunks) in `parsed`, with the prepared vectors."""
    from tasks.ingest import Prepared, store_prepared
    from tasks.store import register_index
    from tasks.text import text_hash

    vectors = np.load(data / "vectors.npy")
    assert len(vectors) == count, "chunks differ from the prepared ones: re-run prep"
    tenant, key = (data / "tenant.txt").read_text(), embedder.identity.key
    with db.tenant(tenant) as conn:
        register_index(conn, pipeline, embedder.identity)
    t3, row = time.perf_counter(), 0
    for f, doc, cs in parsed:
        by_hash = {text_hash(c.text): vectors[row + i] for i, c in enumerate(cs)}
        row += len(cs)
        store_prepared(db, tenant, pipeline, key, Prepared(f, doc, cs, None), by_hash, by_hash)
    return time.perf_counter() - t3


def flow_child(source: str, tenant: str, settings) -> dict:
    """Time the Prefect flow `ingest` (local ephemeral API, started before the clock)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.ingest import ingest

    os.environ["SLUICE_DB_NAME"] = BENCH_DB  # the flow reads Settings at its own entry point
    with prefect_test_harness(server_startup_timeout=300):
        start = time.perf_counter()
        state = ingest(source, tenant, return_state=True)
        seconds = time.perf_counter() - start
    assert state.is_completed() and state.name == "Completed", state.message
    counts = state.data if isinstance(state.data, dict) else {}
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": "flow", "seconds": seconds, "rss_mb": rss_mb, "chunks": counts.get("chunks"), **_load()}


def _load() -> dict:
    return {"load5": round(os.getloadavg()[1], 1)}


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
    return last_json(f"child {mode}", cmd, cwd=ROOT)


def last_json(what: str, cmd: list[str], **kw: object) -> dict:
    """Run `cmd` to its end and return (and print) the JSON object on its last output line."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
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
    args = _arguments().parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    sys.path.insert(0, str(ROOT))
    from sluice.db import migrate
    from sluice.settings import load_settings

    migrate(load_settings(db_name=BENCH_DB))
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(_measure(args, Path(tmp)), indent=2))


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="first N covid_qa documents only")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SOURCE", "TENANT"))
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-encode", action="store_true", help="skip the ingest vs raw encode comparison")
    parser.add_argument("--parts", action="store_true", help="CPU and wall time of parse and chunk alone")
    parser.add_argument("--warm", action="store_true", help="profile the non-model time (cache-seeded runs)")
    parser.add_argument("--langchain", action="store_true", help="also compare PGVector (peer venv)")
    parser.add_argument("--e2e-limit", type=int, default=10, help="documents in the end-to-end PGVector comparison")
    parser.add_argument("--peer-tuned", action="store_true", help="also run PGVector with malloc tuned by env vars")
    parser.add_argument("--isolation", action="store_true", help="in-process parse vs the bounded parse process")
    parser.add_argument(
        "--memory-files", nargs="*", default=["example-10k.html"], help="example-docs files ingested alone for peak RSS"
    )
    return parser


def _measure(args: argparse.Namespace, tmp: Path) -> dict:
    """Every comparison the arguments ask for, on the covid_qa text corpus written into `tmp`."""
    from bench.paths import write_covid_txt

    corpus = tmp / "covid"
    write_covid_txt(corpus, args.limit)
    results = {} if args.skip_encode else compare(corpus, args.repeats)
    if args.parts:
        results["parts"] = run_child("parts", corpus, "-")
    if args.langchain:
        results["langchain"] = langchain(tmp, corpus, args.repeats, args.e2e_limit, args.peer_tuned)
        print(json.dumps(results["langchain"]), flush=True)
    if args.warm:
        results["warm"] = warm(tmp, corpus, args.repeats)
    if args.isolation:
        results["isolation"] = isolation(corpus, args.repeats)
    if not args.skip_memory:
        results["memory"] = memory(tmp, args.memory_files)
    return results


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


def seeded_cache_tenant() -> str:
    """Tenant 'bench-cache' holding every vector any bench tenant computed, so prep embeds only new texts."""
    import psycopg

    from sluice.db import Database, admin_conninfo, create_tenant
    from sluice.settings import load_settings

    settings = load_settings(db_name=BENCH_DB)
    with Database(settings) as db:
        create_tenant(db, "bench-cache")
    with psycopg.connect(admin_conninfo(settings), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO embedding_cache (tenant_id, model_key, text_hash, embedding) "
            "SELECT DISTINCT ON (model_key, text_hash) 'bench-cache', model_key, text_hash, embedding "
            "FROM embedding_cache WHERE tenant_id <> 'bench-cache' ON CONFLICT DO NOTHING"
        )
    return "bench-cache"


def seed_cache(tenant: str) -> None:
    """Copy bench-cache's vectors into a tenant's cache: its ingest then never reaches the model."""
    import psycopg

    from sluice.db import admin_conninfo
    from sluice.settings import load_settings

    with psycopg.connect(admin_conninfo(load_settings(db_name=BENCH_DB)), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO embedding_cache (tenant_id, model_key, text_hash, embedding) "
            "SELECT %s, model_key, text_hash, embedding FROM embedding_cache WHERE tenant_id = 'bench-cache'",
            (tenant,),
        )


def warm(tmp: Path, corpus: Path, repeats: int) -> dict:
    """Everything but the model: ingest_source and the Prefect flow into tenants whose cache already
    holds every vector, plus parse, chunk and store timed apart (interleaved, repeated)."""
    data = prepared(corpus, tmp / "warm")
    rounds = []
    for _ in range(repeats):
        (data / "tenant.txt").write_text(new_tenant("parts"))
        parts = run_child("store", corpus, str(data))
        plain, flow = new_tenant("warm"), new_tenant("flow")
        seed_cache(plain)
        seed_cache(flow)
        direct, flowed = run_child("ingest", corpus, plain), run_child("flow", str(corpus), flow)
        assert direct["embedded"] == 0, "a warm ingest reached the model"
        rounds.append(
            {
                "parse_s": round(parts["parse_seconds"], 1),
                "chunk_s": round(parts["chunk_seconds"], 1),
                "store_s": round(parts["seconds"], 1),
                "ingest_warm_s": round(direct["seconds"], 1),
                "flow_warm_s": round(flowed["seconds"], 1),
            }
        )
    return {"rounds": rounds}


def isolation(corpus: Path, repeats: int) -> dict:
    """`ingest` (parse process) vs `ingest-inproc` (as before), who goes first alternating: a cold ingest (the
    model runs) and a warm one (cache seeded: everything but the model) each, every one into a fresh tenant.
    The overhead is the warm difference over the cold ingest: the model's noise is not in the numerator."""
    rounds = []
    for i in range(repeats):
        got = {}
        for mode in ("ingest-inproc", "ingest")[:: 1 if i % 2 == 0 else -1]:
            cold = run_child(mode, corpus, new_tenant("iso"))
            seeded_cache_tenant()  # now holds the vectors the cold run computed
            tenant = new_tenant("iso-warm")
            seed_cache(tenant)
            warm_run = run_child(mode, corpus, tenant)
            assert cold["failed"] == warm_run["failed"] == 0 and warm_run["embedded"] == 0
            got[mode] = (cold["seconds"], warm_run["seconds"], cold["warm_up_s"])
        (old_cold, old_warm, old_start), (new_cold, new_warm, new_start) = got["ingest-inproc"], got["ingest"]
        rounds.append(
            {
                "cold_s": [round(old_cold, 2), round(new_cold, 2)],
                "warm_s": [round(old_warm, 3), round(new_warm, 3)],
                "start_s": [old_start, new_start],
                "overhead_of_cold_ingest": round((new_warm - old_warm) / new_cold, 4),
            }
        )
    return {"rounds": rounds, "median_overhead": statistics.median(r["overhead_of_cold_ingest"] for r in rounds)}


# What Sluice's embedder does from inside (tasks.embed.keep_freed_tensor_memory), set from outside for PGVector.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def run_langchain(mode: str, data: Path, tuned: bool = False) -> dict:
    from bench.paths import peer_python
    from sluice.db import admin_conninfo
    from sluice.settings import load_settings

    admin = admin_conninfo(load_settings(db_name=BENCH_DB))
    cmd = [str(peer_python()), str(ROOT / "bench" / "ingest_langchain.py"), mode, admin, str(data)]
    env = {**os.environ, **TUNED_MALLOC} if tuned else None
    return last_json(f"langchain {mode}", cmd, env=env)


def prepared(corpus: Path, folder: Path) -> Path:
    """Write the corpus' chunks and vectors for both sides (the model runs only for uncached texts)."""
    folder.mkdir()
    (folder / "cache.txt").write_text(seeded_cache_tenant())
    run_child("prep", corpus, str(folder))
    return folder


def langchain(tmp: Path, corpus: Path, repeats: int, e2e_limit: int, peer_tuned: bool = False) -> dict:
    """Sluice vs PGVector on the same chunks, interleaved: the store alone, then end to end.

    With `peer_tuned`, each round also runs PGVector with glibc's malloc tuned from the environment as
    Sluice's embedder tunes it from inside: the ratio a PGVector user who knew the trick would see."""
    from bench.paths import write_covid_txt

    data = prepared(corpus, tmp / "lc-store")
    store = []
    for i in range(repeats):
        (data / "tenant.txt").write_text(new_tenant("store"))
        theirs = run_langchain("store", data) if i % 2 else None
        ours = run_child("store", corpus, str(data))
        store.append((ours, theirs or run_langchain("store", data)))
    small = tmp / "e2e"
    write_covid_txt(small, e2e_limit)
    e2e_data, e2e, again, tuned = prepared(small, tmp / "lc-e2e"), [], [], []
    for i in range(repeats):  # alternate who goes first: the load on this shared machine drifts
        tenant = new_tenant("e2e")
        if i % 2:
            theirs = run_langchain("e2e", e2e_data)
            ours = run_child("ingest", small, tenant)
        else:
            ours = run_child("ingest", small, tenant)
            theirs = run_langchain("e2e", e2e_data)
        e2e.append((ours, theirs))
        if peer_tuned:
            tuned.append((ours, run_langchain("e2e", e2e_data, tuned=True)))
        # Re-ingest of the unchanged corpus: Sluice into the same tenant, PGVector's second pass (above).
        again.append((run_child("ingest", small, tenant)["seconds"], theirs["reingest_seconds"]))
    reingest = [
        {"sluice_s": round(s, 3), "langchain_s": round(t, 1), "sluice_speedup": round(t / s, 1)} for s, t in again
    ]
    from sluice.config import PipelineConfig

    out = {
        # The children ingest with the default config: `auto` is bfloat16 on a CPU with bf16 instructions.
        "sluice_embedder_precision": PipelineConfig().embedder.precision,
        "langchain_embedder_precision": "float32",  # sentence-transformers' default, as PGVector users run it
        "store": _ratios(store),
        "end_to_end": _ratios(e2e),
        "re_ingest": {"rounds": reingest, "median": statistics.median(r["sluice_speedup"] for r in reingest)},
    }
    return {**out, "end_to_end_vs_tuned_malloc_peer": _ratios(tuned)} if tuned else out


def _ratios(pairs: list[tuple[dict, dict]]) -> dict:
    """Sluice chunks/s, PGVector chunks/s and their ratio (>1: Sluice faster) per round."""
    rounds = [
        {
            "chunks": ours["chunks"],
            "sluice_chunks_per_s": round(ours["chunks"] / ours["seconds"], 1),
            "langchain_chunks_per_s": round(theirs["chunks"] / theirs["seconds"], 1),
            "sluice_over_langchain": round(theirs["seconds"] / ours["seconds"], 2),
        }
        for ours, theirs in pairs
    ]
    return {"rounds": rounds, "median": statistics.median(r["sluice_over_langchain"] for r in rounds)}


def memory(tmp: Path, names: list[str]) -> dict:
    """Peak RSS of one ingest of each large single file: it must not grow with corpus size."""
    from bench.paths import dataset

    examples = dataset("example-docs")
    out = {"idle_rss_mb": round(run_child("idle", examples / "README.md", "-")["rss_mb"])}
    for name in names:
        folder = tmp / name.replace(".", "_")
        folder.mkdir()
        (folder / name).symlink_to(examples / name)
        result = run_child("ingest", folder, new_tenant("mem"))
        out[name] = {
            "rss_mb": round(result["rss_mb"]),
            "parser_peak_mb": result["parser_peak_mb"] and round(result["parser_peak_mb"]),
            "seconds": round(result["seconds"], 1),
            "chunks": result["chunks"],
        }
    return out


if __name__ == "__main__":
    main()
