"""Sweep HNSW settings for a 1% filter on the bench-100000 tenant: recall@10 vs exact, and latency.

PYTHONPATH=$PWD .venv/bin/python bench/retrieval_filter_sweep.py   (after bench/retrieval.py loaded the data)
"""

from __future__ import annotations

import time

import numpy as np
from psycopg import sql

from bench.synthetic import SYNTHETIC, near_queries
from sluice.db import Database
from sluice.settings import load_settings
from tasks import retrieve as R

TENANT = "bench-100000"
SPEC = {"doc.pct": 7}
SETTINGS = [(100, 40, 5000), (400, 40, 5000), (100, 100, 20000), (400, 100, 20000), (1000, 100, 20000)]


def main() -> None:
    db = Database(load_settings(db_name="sluice_bench"))
    with db.tenant(TENANT) as conn:
        rows = conn.execute(
            "SELECT embedding FROM chunks WHERE index_id = %s ORDER BY chunk_id LIMIT 5000", (SYNTHETIC.index_id,)
        ).fetchall()
    queries = near_queries(np.vstack([r[0].to_numpy() for r in rows]), 25, np.random.default_rng(11))
    truth = []
    for q in queries:
        with db.tenant(TENANT) as conn:
            truth.append({h.chunk_id for h in R.exact_search(conn, SYNTHETIC.index_id, q, 10, SPEC)})
    for ef, fetch, cap in SETTINGS:
        recall, times = [], []
        for q, expected in zip(queries, truth, strict=True):
            with db.tenant(TENANT) as conn:
                conn.execute(
                    "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', "
                    "'relaxed_order', true), set_config('hnsw.max_scan_tuples', %s, true)",
                    (str(ef), str(cap)),
                )
                t0 = time.perf_counter()
                params = {"q": q, "index_id": SYNTHETIC.index_id, "k": 10, "fetch": fetch}
                found = R.ann_rows(conn, R.graph_beam(conn, SYNTHETIC.index_id), params, SPEC, sql.Literal(384))
                times.append((time.perf_counter() - t0) * 1000)
            top = {r[0] for r in sorted(found, key=lambda r: -r[7])[:10]}
            recall.append(len(top & expected) / 10)
        print(f"| {ef} | {fetch} | {cap} | {np.mean(recall):.3f} | {np.median(times):.0f} |", flush=True)


if __name__ == "__main__":
    main()
