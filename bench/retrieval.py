"""Retrieval benchmark: p50/p99 latency and recall@10 against exact search, at 100k or 1M chunks among tenants.

Loads (once; reused on later runs) `--n` synthetic chunks with clustered 384-d unit vectors and
realistic metadata into tenant `bench-<n>` of database `sluice_bench`, after `--others` tenants of
`--other-n` chunks each in the same index. The load is the bulk path for many tenants: every tenant's
rows (COPY into a staging table, INSERT ... SELECT under RLS, a transaction per 5,000 rows, so a killed
load resumes), then one parallel build of each HNSW graph (`tasks.bulk`): a graph of its own for each tenant
of at least `--own-graph-rows` chunks (Settings.own_graph_rows; migration 0022), one the others share. Then,
warm and interleaved per query (the cases in a fresh random order per query, so no case always runs on
pages another case just read), it times dense, hybrid (rrf and convex), lexical (BM25) and filtered (1%,
0.1%) retrieval and the exact scan (baseline); `lexical_ts_rank` is the lexical search Sluice had before
BM25 (ts_rank_cd over an OR tsquery, which RLS answers by scanning the tenant's rows), the baseline of the
lexical rows. Recall@10 is measured against the exact scan, untimed. `--langchain` adds the peer rows,
timed in the same loop on the same rows and queries: langchain-postgres PGVector (dense, filtered) and
PGVectorStore's hybrid search (its tsvector column, RRF) for the hybrid rows.

Reported besides: the load's rows/s, row and build seconds, peak memory of the Postgres cluster and of
this process (bench/memory.py), the on-disk sizes of the graph, table and indexes, the wall time and
the load average. The 1M case of issue 18 (opt-in, hours on 2 cores; not in CI):

    PYTHONPATH=$PWD .venv/bin/python bench/retrieval.py --n 1000000 --others 9 --other-n 111111 \
        --queries 200 --build-memory-mb 6000

    PYTHONPATH=$PWD .venv/bin/python bench/retrieval.py [--n 100000] [--queries 200] [--others 2] \
        [--other-n 20000] [--langchain-load] [--langchain]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from bench.bm25_reference import TS_RANK
from bench.memory import ClusterMemory, loader_peak_rss_mb
from bench.paths import peer_python
from bench.synthetic import DIM, IDENTITY, SYNTHETIC, VOCAB, near_queries, synthetic_batches
from sluice.config import RetrievalConfig
from sluice.db import Database, admin_conninfo, create_tenant, migrate
from sluice.settings import Settings, load_settings
from tasks import bulk
from tasks import retrieve as R
from tasks.graph import claim_own_graph
from tasks.records import store_records
from tasks.store import register_index

TENANT = "bench"  # suffixed with the chunk count, so runs at different sizes do not mix
K = 10
CASES = {
    "dense": ("dense", None),
    "hybrid": ("hybrid", None),
    "hybrid_convex": ("hybrid_convex", None),
    "lexical": ("lexical", None),
    "filtered_1pct": ("dense", {"doc.pct": 7}),
    "filtered_0.1pct": ("dense", {"doc.permille": 7}),
}


BATCH = 5000  # rows per load transaction: a killed load resumes at the last committed batch
SPACE = (SYNTHETIC, IDENTITY)  # the index loaded and measured (bench/own_graph.py loads two)
GRAPH = f"chunks_hnsw_{SYNTHETIC.index_id}"  # the graph the index's tenants share (migration 0014)


def layout(n: int, others: int, other_n: int, tenant: str | None) -> list[tuple[str, int, int]]:
    """(tenant, chunks, seed) to hold: the other tenants, then the measured one."""
    rest = [(f"bench-other{i}-{other_n}", other_n, 100 + i) for i in range(others)]
    return [*rest, (tenant or f"bench-{n}", n, 42)]


def _held(db: Database, tenant: str, n: int, space=SPACE) -> int:
    create_tenant(db, tenant)
    with db.tenant(tenant) as conn:
        have = conn.execute("SELECT count(*) FROM chunks WHERE index_id = %s", (space[0].index_id,)).fetchone()[0]
    if have > n or have % BATCH and have != n:
        raise SystemExit(f"tenant {tenant} holds {have} chunks, not {n}: drop the benchmark's database first")
    return have


def _load_rows(db: Database, tenant: str, n: int, seed: int, have: int, own_graph_rows: int, space=SPACE) -> None:
    """Rows have..n of the tenant's synthetic set, a committed transaction per batch, through the bulk
    path's staging (`tasks.records.store_records`: COPY into a TEMP table, INSERT ... SELECT under RLS),
    its own graph claimed first when it holds `own_graph_rows` (as `tasks.bulk.bulk_load_records` does)."""
    config, identity = space
    with db.tenant(tenant) as conn:
        register_index(conn, config, identity, vector_index=False)
        claim_own_graph(conn, config.index_id, n - have, own_graph_rows)
    for records, vectors in synthetic_batches(tenant, n, seed, BATCH, start=have):
        with db.tenant(tenant) as conn:
            store_records(conn, config.index_id, records, vectors)


def _graph(db: Database, tenant: str, space=SPACE) -> tuple[str, bool]:
    """The graph `tenant` searches (its own, or the shared one), and whether it is built."""
    with db.tenant(tenant) as conn:
        return conn.execute(
            "SELECT index_graph(%(i)s), to_regclass(quote_ident(index_graph(%(i)s))) IS NOT NULL",
            {"i": space[0].index_id},
        ).fetchone()


def _build_graphs(
    db: Database, admin: psycopg.Connection, tenants: list[str], build_memory_mb: int | None, space=SPACE
) -> None:
    """One parallel HNSW build per graph the tenants search (`tasks.bulk.build_vector_index`), then statistics."""
    if build_memory_mb:  # the product caps a build at 4 GB and a quarter of memory; 2M 384-d halfvec rows need ~3.3 GB
        bulk.MAX_BUILD_MEMORY = build_memory_mb << 20
    index_id = space[0].index_id
    shared = f"chunks_hnsw_{index_id}"
    for tenant in tenants:
        name, built = _graph(db, tenant, space)
        if built:
            continue  # the shared graph, built for an earlier tenant
        t0 = time.perf_counter()
        count = "SELECT count(*) FROM chunks WHERE index_id = %s"
        if name == shared:  # every unclaimed tenant's rows (the admin reads past RLS)
            rows = admin.execute(count + " AND NOT own_graph", (index_id,)).fetchone()[0]
        with db.tenant(tenant) as conn:
            if name != shared:  # the tenant's own
                rows = conn.execute(count, (index_id,)).fetchone()[0]
            bulk.build_vector_index(conn, index_id, rows, DIM)
        print(f"built {name} ({rows} rows) in {time.perf_counter() - t0:.0f} s", flush=True)
    for table in ("chunks", "documents", "lexical_postings"):
        admin.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))


def ensure_data(
    settings: Settings,
    db: Database,
    tenants: list[tuple[str, int, int]],
    build_memory_mb=None,
    own_graph_rows=None,
    space=SPACE,
) -> dict:
    """Load what each (tenant, n, seed) lacks with its graph absent, then build each graph once; the load's cost.

    The bulk path for many tenants: every tenant's rows first, then each graph over all of its rows (loading
    tenant after tenant through `bulk_load_records` would insert every tenant after the first that shares
    the graph into a live graph, one row at a time).
    """
    own_graph_rows = own_graph_rows or settings.own_graph_rows
    missing = [(t, n, seed, have) for t, n, seed in tenants if (have := _held(db, t, n, space)) < n]
    if not missing and all(_graph(db, t, space)[1] for t, _, _ in tenants):
        return {"loaded_rows": 0}
    with psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
        memory, t0 = ClusterMemory(settings.pgdata), time.perf_counter()
        memory.start()
        for tenant, *_ in missing:  # its rows go in without a graph: the one it searches is built afterwards
            admin.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(_graph(db, tenant, space)[0])))
        for tenant, n, seed, have in missing:
            t1 = time.perf_counter()
            _load_rows(db, tenant, n, seed, have, own_graph_rows, space)
            print(f"loaded {n - have} chunks into {tenant} in {time.perf_counter() - t1:.0f} s", flush=True)
        t1 = time.perf_counter()
        _build_graphs(db, admin, [t for t, _, _ in tenants], build_memory_mb, space)
        t2 = time.perf_counter()
        print(f"built the graphs in {t2 - t1:.0f} s", flush=True)
        rows = sum(n - have for _, n, _, have in missing)
        return {
            "loaded_rows": rows,
            "rows_s": round(t1 - t0, 1),
            "build_s": round(t2 - t1, 1),
            "rows_per_s": round(rows / (t2 - t0), 1),
            **memory.stop(),
            "loader_peak_rss_mb": loader_peak_rss_mb(),
        }


def query_sources(db: Database) -> np.ndarray:
    """The measured tenant's first 5,000 stored vectors in chunk order (queries start near them)."""
    with db.tenant(TENANT) as conn:
        rows = conn.execute(
            "SELECT embedding FROM chunks WHERE index_id = %s ORDER BY chunk_id LIMIT 5000", (SYNTHETIC.index_id,)
        ).fetchall()
    return np.vstack([np.asarray(getattr(r[0], "to_numpy", lambda v=r[0]: v)(), dtype=np.float32) for r in rows])


def sizes(settings: Settings, measured_graph: str) -> dict[str, float]:
    """On-disk sizes (MB): the measured tenant's HNSW graph, every graph of the index, the chunks table, the
    promoted keys' covering btrees on chunks (`chunks_meta_<key>`, each holding every carrying chunk's vector),
    the other chunk indexes, postings, documents."""
    covering = (
        "(SELECT coalesce(sum(pg_relation_size(indexrelid)), 0)::bigint FROM pg_index "
        "WHERE indrelid = 'chunks'::regclass AND indexrelid::regclass::text LIKE 'chunks\\_meta\\_%%')"
    )
    graphs = (
        "(SELECT coalesce(sum(pg_relation_size(indexrelid)), 0)::bigint FROM pg_index "
        "WHERE indrelid = 'chunks'::regclass AND starts_with(indexrelid::regclass::text, %(g)s))"
    )
    query = (
        f"SELECT pg_relation_size(to_regclass(%(m)s)), {graphs}, pg_table_size('chunks'), {covering}, "
        f"pg_indexes_size('chunks') - {graphs} - {covering}, "
        "pg_total_relation_size('lexical_postings'), pg_total_relation_size('documents')"
    )
    with psycopg.connect(admin_conninfo(settings)) as admin:
        row = admin.execute(query, {"g": GRAPH, "m": measured_graph}).fetchone()
    names = (
        "hnsw_graph",
        "hnsw_graphs_all",
        "chunks_table",
        "promoted_covering",
        "chunks_other_indexes",
        "lexical_postings",
        "documents",
    )
    return {f"{name}_mb": round((v or 0) / 2**20, 1) for name, v in zip(names, row, strict=True)}


def _timed(db: Database, mode: str, spec: dict | None, text: str, q: np.ndarray) -> tuple[float, list]:
    config = RetrievalConfig(mode="hybrid", k=K, fusion="convex") if mode == "hybrid_convex" else None
    t0 = time.perf_counter()
    with db.tenant(TENANT) as conn:
        hits = R.retrieve(conn, SYNTHETIC.index_id, text, q, config or RetrievalConfig(mode=mode, k=K), spec)
    return (time.perf_counter() - t0) * 1000, hits


def _exact(db: Database, q: np.ndarray, spec: dict | None) -> tuple[float, list]:
    t0 = time.perf_counter()
    with db.tenant(TENANT) as conn:
        hits = R.exact_search(conn, SYNTHETIC.index_id, q, K, spec)
    return (time.perf_counter() - t0) * 1000, hits


def _lexical_ts_rank(db: Database, text: str) -> float:
    """The pre-BM25 lexical query, as the app role under RLS: the baseline of the lexical rows."""
    t0 = time.perf_counter()
    with db.tenant(TENANT) as conn:
        conn.execute(TS_RANK, {"text": text, "index_id": SYNTHETIC.index_id, "k": K}).fetchall()
    return (time.perf_counter() - t0) * 1000


class LangChain:
    """bench/retrieval_langchain.py in the peer venv, answering one timed search per request."""

    CASES = ("dense", "hybrid", "filtered_1pct", "filtered_0.1pct")

    def __init__(self, admin: str, tenant: str, n_queries: int):
        script = Path(__file__).with_name("retrieval_langchain.py")
        args = [str(peer_python()), str(script), "--serve", admin, tenant, str(n_queries)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def search(self, case: str, index: int, text: str) -> tuple[float, set[int]]:
        self.proc.stdin.write(f"{case} {index} {text}\n")
        self.proc.stdin.flush()
        ms, _, ids = self.proc.stdout.readline().split(" ")
        return float(ms), {int(i) for i in ids.strip().split(",") if i}

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _default_plan_count(db: Database, q: np.ndarray, spec: dict) -> int:
    """Rows the stock plan (ef_search 40, no iterative scan) returns for a filtered LIMIT k."""
    with db.tenant(TENANT) as conn:
        params = {"q": q, "index_id": SYNTHETIC.index_id, "k": K, "fetch": K}
        beam = R.graph_beam(conn, SYNTHETIC.index_id)
        return len(R.ann_rows(conn, beam, params, spec, sql.Literal(q.shape[0])))


def run(args: argparse.Namespace) -> dict:
    """Load what is missing, then time every case; the results with the load's cost, sizes and wall time."""
    global TENANT
    start, load_before = time.perf_counter(), os.getloadavg()
    # doc.pct and doc.permille promoted (sluice/filter_columns.py): the filtered rows measure the shipped path;
    # bench/retrieval_filtered.py measures it against the jsonb path.
    settings = load_settings(db_name="sluice_bench", filter_columns={"pct": "integer", "permille": "integer"})
    t_migrate = time.perf_counter()
    migrate(settings)  # on data loaded before a key was promoted, this carries the key onto every chunk
    migrate_s = round(time.perf_counter() - t_migrate, 1)
    tenants = layout(args.n, args.others, args.other_n, args.tenant)
    TENANT = tenants[-1][0]
    with Database(settings) as db:
        load = ensure_data(settings, db, tenants, args.build_memory_mb, args.own_graph_rows)
        memory = ClusterMemory(settings.pgdata)
        memory.start()
        t0 = time.perf_counter()
        out = {} if args.load_only else measure(db, settings, args.queries, args.langchain)
        out["query_phase"] = {"seconds": round(time.perf_counter() - t0, 1), **memory.stop()}
        measured_graph = _graph(db, TENANT)[0]
    out["layout"] = {"measured": tenants[-1], "others": len(tenants) - 1, "other_n": args.other_n}
    out["layout"]["measured_graph"] = measured_graph
    out["load"], out["sizes"], out["migrate_s"] = load, sizes(settings, measured_graph), migrate_s
    out["loader_peak_rss_mb"] = loader_peak_rss_mb()
    out["wall_s"] = round(time.perf_counter() - start, 1)
    out["load_average"] = {"start": load_before, "end": os.getloadavg()}
    return out


def _warm(db: Database, lc: LangChain | None, queries: np.ndarray, texts: list[str]) -> None:
    """Run every case once per query, untimed: caches and the pool warm."""
    for i, (q, text) in enumerate(zip(queries, texts, strict=True)):
        for mode, spec in CASES.values():
            _timed(db, mode, spec, text, q)
        for case in LangChain.CASES if lc else ():
            lc.search(case, i, text)


def measure(db: Database, settings: Settings, n_queries: int, langchain: bool) -> dict:
    """Every case, warm and interleaved per query, on the loaded data; the summary."""
    with db.tenant(TENANT) as conn:
        n = conn.execute("SELECT count(*) FROM chunks WHERE index_id = %s", (SYNTHETIC.index_id,)).fetchone()[0]
    base = query_sources(db)
    rng = np.random.default_rng(7)
    queries = near_queries(base, n_queries, rng)
    texts = [" ".join(VOCAB[int(i)] for i in rng.integers(0, len(VOCAB), size=3)) for _ in range(n_queries)]
    lc = LangChain(admin_conninfo(settings), TENANT, n_queries) if langchain else None
    _warm(db, lc, queries[:20], texts[:20])
    lc_names = [f"langchain_{c}" for c in LangChain.CASES] if lc else []
    times: dict[str, list[float]] = {
        name: [] for name in [*CASES, "exact", "exact_filtered_1pct", "lexical_ts_rank", *lc_names]
    }
    recall: dict[str, list[float]] = {
        name: [] for name in [*CASES, *lc_names] if "lexical" not in name and "hybrid" not in name
    }
    counts: dict[str, list[int]] = {name: [] for name in [*CASES, *lc_names]}
    for i, (q, text) in enumerate(zip(queries, texts, strict=True)):
        exact = _measure_sluice(db, q, text, times, recall, counts, np.random.default_rng(i))
        times["lexical_ts_rank"].append(_lexical_ts_rank(db, text))
        if lc:
            _measure_langchain(lc, i, text, exact, times, recall, counts)
        times["exact"].append(exact[None][0])
        times["exact_filtered_1pct"].append(exact[json.dumps(CASES["filtered_1pct"][1])][0])
    if lc:
        lc.close()
    default = {
        name: [_default_plan_count(db, q, spec) for q in queries[:50]] for name, (_, spec) in CASES.items() if spec
    }
    return _summary(n, n_queries, times, recall, counts, default)


def _measure_sluice(db: Database, q: np.ndarray, text: str, times: dict, recall: dict, counts: dict, rng) -> dict:
    """Every case for one query, interleaved (every case sees the same load); the exact answers by filter.

    The cases run in a random order per query: in a fixed order the first case to read a query's HNSW
    neighbourhood or BM25 postings paid for the cases after it (hybrid rrf ran first and measured 2x convex).
    """
    exact = {None: _exact(db, q, None)}
    for name in map(str, rng.permutation(list(CASES))):
        mode, spec = CASES[name]
        ms, hits = _timed(db, mode, spec, text, q)
        times[name].append(ms)
        counts[name].append(len(hits))
        if name in recall:
            key = json.dumps(spec)
            if key not in exact:
                exact[key] = _exact(db, q, spec)
            truth = {h.chunk_id for h in exact[key][1]}
            recall[name].append(len(truth & {h.chunk_id for h in hits}) / max(1, len(truth)))
    return exact


def _measure_langchain(lc: LangChain, i: int, text: str, exact: dict, times: dict, recall: dict, counts: dict) -> None:
    """The peer's cases for query `i`; the dense ones scored against the exact answers Sluice's cases computed."""
    for case in LangChain.CASES:
        ms, ids = lc.search(case, i, text)
        times[f"langchain_{case}"].append(ms)
        counts[f"langchain_{case}"].append(len(ids))
        if f"langchain_{case}" in recall:
            truth = {h.chunk_id for h in exact[json.dumps(CASES[case][1])][1]}
            recall[f"langchain_{case}"].append(len(truth & ids) / max(1, len(truth)))


def _summary(n, n_queries, times, recall, counts, default) -> dict:
    out = {"chunks": n, "queries": n_queries, "k": K, "cases": {}}
    for name, values in times.items():
        row = {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}
        if name in recall:
            row["recall@10_mean"] = float(np.mean(recall[name]))
            row["recall@10_min"] = float(np.min(recall[name]))
        if name in counts:
            row["min_rows_returned"] = int(np.min(counts[name]))
        if name in default:
            row["default_plan_rows_max"] = int(np.max(default[name]))
        out["cases"][name] = row
    dense, exact = np.array(times["dense"]), np.array(times["exact"])
    out["dense_vs_exact_median_ratio"] = float(np.median(dense / exact))
    out["lexical_vs_ts_rank_median_ratio"] = float(np.median(np.array(times["lexical"]) / times["lexical_ts_rank"]))
    for case in LangChain.CASES:
        if f"langchain_{case}" in times:  # per-query ratio, same query, measured back to back
            ratio = np.array(times[case]) / np.array(times[f"langchain_{case}"])
            out[f"{case}_vs_langchain_median_ratio"] = float(np.median(ratio))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--others", type=int, default=0, help="other tenants loaded into the same index first")
    parser.add_argument("--other-n", type=int, default=20_000, help="chunks per other tenant")
    parser.add_argument("--tenant", help="measure this loaded tenant of --n chunks (e.g. bench-other0-20000)")
    parser.add_argument("--langchain", action="store_true", help="also time PGVector (peer venv)")
    parser.add_argument("--langchain-load", action="store_true", help="copy the data into PGVector first")
    parser.add_argument("--build-memory-mb", type=int, help="maintenance_work_mem of the graph build (over 2 GB)")
    parser.add_argument("--load-only", action="store_true", help="load (and report the load), measure nothing")
    parser.add_argument(
        "--own-graph-rows", type=int, help="a tenant's chunks from which it gets its own graph (default: the setting)"
    )
    args = parser.parse_args()
    if args.langchain_load:
        admin = admin_conninfo(load_settings(db_name="sluice_bench"))
        script = Path(__file__).with_name("retrieval_langchain.py")
        tenant = args.tenant or f"bench-{args.n}"
        subprocess.run([str(peer_python()), str(script), "--load", admin, tenant], check=True)
    result = run(args)
    print(json.dumps(result, indent=2))
    if "cases" not in result:
        return
    print("\n| case | p50 ms | p99 ms | recall@10 mean (min) | min rows | default plan rows (max) |")
    print("|---|---|---|---|---|---|")
    for name, row in result["cases"].items():
        rec = f"{row['recall@10_mean']:.3f} ({row['recall@10_min']:.2f})" if "recall@10_mean" in row else "-"
        print(
            f"| {name} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {rec} | {row.get('min_rows_returned', '-')} "
            f"| {row.get('default_plan_rows_max', '-')} |"
        )


if __name__ == "__main__":
    main()
