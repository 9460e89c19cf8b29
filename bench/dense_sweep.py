"""Dense search per `ef_search`: p50/p99, recall@10 against the exact scan, and lost queries, interleaved.

Runs on the data `bench/retrieval.py` loaded (database `sluice_bench`; the measured tenant `bench-<n>`,
or `--tenant`). Per query the `ef_search` values run in a fresh random order, each through
`tasks.retrieve.dense_search` as shipped with `RetrievalConfig(ef_search=...)`; recall@10 against
`exact_search` (untimed). A query is *lost* when its recall is under 0.5: HNSW's beam never reached the
query's neighbourhood (docs/retrieval.md, "Dense search in a shared graph").

    PYTHONPATH=$PWD .venv/bin/python bench/dense_sweep.py --n 100000 [--queries 300] [--ef 40,64,100,160]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from bench.synthetic import SYNTHETIC, near_queries
from sluice.config import RetrievalConfig
from sluice.db import Database
from sluice.settings import load_settings
from tasks import retrieve as R

K = 10


def sources(db: Database, tenant: str) -> np.ndarray:
    """The tenant's first 5,000 stored vectors in chunk order (bench/retrieval.py's query sources)."""
    with db.tenant(tenant) as conn:
        rows = conn.execute(
            "SELECT embedding FROM chunks WHERE index_id = %s ORDER BY chunk_id LIMIT 5000", (SYNTHETIC.index_id,)
        ).fetchall()
    if not rows:
        raise SystemExit(f"tenant {tenant} holds no synthetic chunks: load it with bench/retrieval.py first")
    return np.vstack([np.asarray(r[0].to_numpy(), dtype=np.float32) for r in rows])


def sweep(db: Database, tenant: str, queries: np.ndarray, efs: list[int]) -> dict:
    """Each ef for each query, in random order per query; latency, recall and lost queries per ef."""
    times: dict[int, list[float]] = {ef: [] for ef in efs}
    recall: dict[int, list[float]] = {ef: [] for ef in efs}
    for i, q in enumerate(queries):
        with db.tenant(tenant) as conn:
            truth = {h.chunk_id for h in R.exact_search(conn, SYNTHETIC.index_id, q, K)}
        for ef in map(int, np.random.default_rng(i).permutation(efs)):
            t0 = time.perf_counter()
            with db.tenant(tenant) as conn:
                hits = R.dense_search(conn, SYNTHETIC.index_id, q, RetrievalConfig(k=K, ef_search=ef))
            times[ef].append((time.perf_counter() - t0) * 1000)
            recall[ef].append(len(truth & {h.chunk_id for h in hits}) / K)
    return {
        ef: {
            "p50_ms": round(float(np.percentile(times[ef], 50)), 2),
            "p99_ms": round(float(np.percentile(times[ef], 99)), 2),
            "recall@10_mean": round(float(np.mean(recall[ef])), 4),
            "recall@10_min": float(np.min(recall[ef])),
            "lost_queries": int(np.sum(np.array(recall[ef]) < 0.5)),
        }
        for ef in efs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--tenant", help="the measured tenant (default bench-<n>)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--ef", default="40,64,100,160")
    args = parser.parse_args()
    efs = [int(x) for x in args.ef.split(",")]
    tenant = args.tenant or f"bench-{args.n}"
    load_before = os.getloadavg()
    with Database(load_settings(db_name="sluice_bench")) as db:
        queries = near_queries(sources(db, tenant), args.queries + 20, np.random.default_rng(7))
        sweep(db, tenant, queries[:20], efs)  # warm-up, not counted
        result = sweep(db, tenant, queries[20:], efs)
    out = {"tenant": tenant, "queries": args.queries, "load_average": [load_before, os.getloadavg()], "ef": result}
    print(json.dumps(out, indent=2))
    print("\n| ef_search | p50 ms | p99 ms | recall@10 mean (min) | lost queries (recall < 0.5) |")
    print("|---|---|---|---|---|")
    for ef, row in result.items():
        print(
            f"| {ef} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['recall@10_mean']:.3f} "
            f"({row['recall@10_min']:.2f}) | {row['lost_queries']} |"
        )


if __name__ == "__main__":
    main()
