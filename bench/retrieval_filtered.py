"""Filtered dense search at 1% and 0.1% selectivity: promoted keys (candidate) against the jsonb path (baseline).

One tenant of `--n` synthetic chunks (clustered 384-d unit vectors, bench/synthetic.py metadata) among
`--others` tenants of `--other-n` chunks each, in database `sluice_bench`, with `doc.pct` and
`doc.permille` promoted (SLUICE_FILTER_COLUMNS, sluice/filter_columns.py). Per query, interleaved and
warm: the candidate (`dense_search` as shipped: a bounded filter answered by an exact scan over the rows
its btree index finds) and the baseline (the same call with `promoted={}`: every condition on jsonb, the
path before migration 0012: iterative HNSW, then an exact scan of the tenant's rows when it under-returns).
Recall@10 against `exact_search` (untimed). p50/p99, minimum rows returned, and the per-query ratio.

Loading: the HNSW index is dropped while a missing tenant is loaded and rebuilt after (a bench shortcut:
row-by-row HNSW inserts took 942 s for 100k chunks). The 1M case is opt-in: `--n 1000000`.

    SLUICE_PG_SETTINGS='{"shared_buffers":"256MB"}' PYTHONPATH=$PWD .venv/bin/python bench/retrieval_filtered.py \
        [--n 100000] [--others 3] [--other-n 20000] [--queries 100]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import psycopg
from psycopg import sql

from bench.synthetic import IDENTITY, SYNTHETIC, clustered_vectors, make_records, near_queries
from sluice.config import RetrievalConfig
from sluice.db import Database, admin_conninfo, create_tenant, migrate
from sluice.settings import load_settings
from tasks import retrieve as R
from tasks.records import store_records
from tasks.store import register_index

K = 10
PROMOTED = {"pct": "integer", "permille": "integer"}
# 10%: 10k matches at 100k, still under PREFILTER_ROWS: the exact scan's cost near the threshold vs HNSW.
CASES = {
    "filtered_1pct": {"doc.pct": 7},
    "filtered_0.1pct": {"doc.permille": 7},
    "filtered_10pct": {"doc.pct": {"lt": 10}},
}
GRAPH = f"chunks_hnsw_{SYNTHETIC.index_id}"  # the index's own HNSW graph (migration 0014)


def _held(db: Database, tenant: str) -> int:
    create_tenant(db, tenant)
    with db.tenant(tenant) as conn:
        register_index(conn, SYNTHETIC, IDENTITY)  # (re)creates the HNSW index if it is missing
        return conn.execute("SELECT count(*) FROM chunks WHERE index_id = %s", (SYNTHETIC.index_id,)).fetchone()[0]


def _load(db: Database, tenant: str, n: int, seed: int, have: int, batch: int = 5000) -> None:
    """Records have..n of bench/synthetic.py's deterministic set for `seed` (a killed load resumes)."""
    rng = np.random.default_rng(seed)
    records = make_records(n, rng, prefix=tenant)
    vectors = clustered_vectors(n, rng)
    for start in range(have, n, batch):
        with db.tenant(tenant) as conn:
            store_records(conn, SYNTHETIC.index_id, records[start : start + batch], vectors[start : start + batch])


def ensure_data(settings, db: Database, tenants: list[tuple[str, int, int]]) -> None:
    """Load what each (tenant, n, seed) lacks, with the HNSW index dropped meanwhile and rebuilt after."""
    missing = [(t, n, seed, have) for t, n, seed in tenants if (have := _held(db, t)) < n]
    if not missing:
        return
    with psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(GRAPH)))
        for tenant, n, seed, have in missing:
            t0 = time.perf_counter()
            _load(db, tenant, n, seed, have)
            print(f"loaded {n - have} chunks into {tenant} in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        admin.execute("SELECT ensure_index_hnsw(%s)", (SYNTHETIC.index_id,))
        admin.execute("VACUUM ANALYZE chunks")
        admin.execute("VACUUM ANALYZE documents")
        print(f"built the HNSW index in {time.perf_counter() - t0:.0f} s", flush=True)


def _timed(db: Database, tenant: str, q: np.ndarray, spec: dict, promoted: dict | None) -> tuple[float, list]:
    t0 = time.perf_counter()
    with db.tenant(tenant) as conn:
        hits = R.dense_search(conn, SYNTHETIC.index_id, q, RetrievalConfig(k=K), spec, promoted=promoted)
    return (time.perf_counter() - t0) * 1000, hits


def run(n: int, others: int, other_n: int, n_queries: int) -> dict:
    settings = load_settings(db_name="sluice_bench", filter_columns=PROMOTED)
    migrate(settings)
    tenant = f"bench-{n}"
    with Database(settings) as db:
        ensure_data(
            settings, db, [(f"bench-other{i}-{other_n}", other_n, 100 + i) for i in range(others)] + [(tenant, n, 42)]
        )
        with db.tenant(tenant) as conn:
            rows = conn.execute(
                "SELECT embedding FROM chunks WHERE index_id = %s ORDER BY chunk_id LIMIT 5000", (SYNTHETIC.index_id,)
            ).fetchall()
        queries = near_queries(np.vstack([r[0].to_numpy() for r in rows]), n_queries, np.random.default_rng(7))
        names = [f"{case}_{path}" for case in CASES for path in ("promoted", "jsonb")]
        times = {name: [] for name in names}
        recall = {name: [] for name in names}
        counts = {name: [] for name in names}
        for i, q in enumerate(queries):
            for case, spec in CASES.items():
                with db.tenant(tenant) as conn:
                    truth = {h.chunk_id for h in R.exact_search(conn, SYNTHETIC.index_id, q, K, spec)}
                order = ("promoted", "jsonb") if i % 2 else ("jsonb", "promoted")  # neither always runs first
                for path in order:
                    ms, hits = _timed(db, tenant, q, spec, None if path == "promoted" else {})
                    if i >= 3:  # the first queries warm caches and the pool
                        name = f"{case}_{path}"
                        times[name].append(ms)
                        counts[name].append(len(hits))
                        recall[name].append(len(truth & {h.chunk_id for h in hits}) / max(1, len(truth)))
    return _summary(n, others, other_n, times, recall, counts)


def _summary(n, others, other_n, times, recall, counts) -> dict:
    out = {"chunks": n, "other_tenants": others, "other_chunks_each": other_n, "k": K, "cases": {}}
    for name, values in times.items():
        out["cases"][name] = {
            "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)),
            "recall@10_mean": float(np.mean(recall[name])),
            "recall@10_min": float(np.min(recall[name])),
            "min_rows_returned": int(np.min(counts[name])),
        }
    for case in CASES:
        ratio = np.array(times[f"{case}_jsonb"]) / np.array(times[f"{case}_promoted"])
        out[f"{case}_speedup_median"] = float(np.median(ratio))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=3, help="other tenants in the same index")
    parser.add_argument("--other-n", type=int, default=20_000, help="chunks per other tenant")
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    t0 = time.perf_counter()
    result = run(args.n, args.others, args.other_n, args.queries)
    result["wall_s"] = round(time.perf_counter() - t0)
    print(json.dumps(result, indent=2))
    print("\n| case | path | p50 ms | p99 ms | recall@10 mean (min) | min rows |")
    print("|---|---|---|---|---|---|")
    for name, row in result["cases"].items():
        case, _, path = name.rpartition("_")
        rec = f"{row['recall@10_mean']:.3f} ({row['recall@10_min']:.2f})"
        print(f"| {case} | {path} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {rec} | {row['min_rows_returned']} |")


if __name__ == "__main__":
    main()
