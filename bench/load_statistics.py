"""Searches right after a bulk load: statistics left to autovacuum (before) against refreshed by the load.

A search asks the planner how many chunks a filter matches (`tasks.retrieve.estimated_rows`) and answers a
filter estimated under PREFILTER_ROWS with an exact scan of its matches, a larger one with the HNSW graph.
Before migration 0024 a bulk load left the statistics of `chunks` as they were, so until autovacuum's next
analyze (on its own schedule, and only once the changes pass a tenth of the table) the planner did not know
the new rows. As shipped, the load's graph transaction runs `refresh_statistics` (`tasks.bulk`).

Per trial, a new database `sluice_bench_stats` (never analyzed, as on a first load), autovacuum off on the
tables a load writes (so "before" is what a reader meets until its analyze), `--n` clustered synthetic
chunks of one tenant bulk-loaded by `tasks.bulk.bulk_load_records` with `doc.pct` and `doc.permille`
promoted, with `tasks.bulk.refresh_statistics` replaced by a no-op (before) or as shipped. Then per query
each case in a fresh random order, timed from opening the tenant's transaction to its commit, through
`dense_search` / `lexical_search` as shipped: filters matching 0.1%, 1%, 10%, 30% and 60% of the tenant's
rows, no filter, and BM25. Recall@10 against the exact scan (untimed). Trials alternate the variants.

    PYTHONPATH=$PWD .venv/bin/python bench/load_statistics.py [--n 100000] [--trials 4] [--queries 60]
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import numpy as np
import psycopg
from psycopg import sql

from bench.synthetic import SYNTHETIC, VOCAB, load_synthetic, near_queries
from sluice.config import RetrievalConfig
from sluice.db import Database, admin_conninfo, create_tenant, drop_database, migrate
from sluice.settings import load_settings
from tasks import bulk
from tasks import retrieve as R

DB = "sluice_bench_stats"
PROMOTED = {"pct": "integer", "permille": "integer"}
TABLES = ("chunks", "documents", "lexical_postings")
FILTERS = {
    "0.1%": {"doc.permille": 7},
    "1%": {"doc.pct": 7},
    "10%": {"doc.pct": {"lt": 10}},
    "30%": {"doc.pct": {"lt": 30}},
    "60%": {"doc.pct": {"lt": 60}},
    "none": None,
}
CASES = [*FILTERS, "bm25"]
VARIANTS = ("before: left to autovacuum", "as shipped: refreshed by the load")
K = 10


def fresh_database(settings) -> None:
    drop_database(settings)
    migrate(settings)
    with psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
        for table in TABLES:
            admin.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(sql.Identifier(table)))


def estimates(db: Database, tenant: str, q: np.ndarray) -> dict[str, int]:
    """The planner's estimated matches per filter, as `dense_search` reads them."""
    params = {"q": q, "index_id": SYNTHETIC.index_id, "k": K, "fetch": K}
    with db.tenant(tenant) as conn:
        return {
            name: R.estimated_rows(conn, params, R.compile_for(conn, spec), sql.Literal(len(q)))
            for name, spec in FILTERS.items()
            if spec is not None
        }


def trial(settings, variant: str, n: int, n_queries: int, rng: np.random.Generator) -> dict:
    fresh_database(settings)
    tenant = "bench-stats"
    refreshed: list[float] = []
    real = bulk.refresh_statistics

    def timed_refresh(conn, loaded, lock_timeout_s):
        t0 = time.perf_counter()
        done = real(conn, loaded, lock_timeout_s)
        refreshed.append(time.perf_counter() - t0)
        return done

    shipped = variant == VARIANTS[1]
    with Database(settings) as db:
        create_tenant(db, tenant)
        patch = timed_refresh if shipped else (lambda conn, loaded, lock_timeout_s: False)
        t0 = time.perf_counter()
        with mock.patch.object(bulk, "refresh_statistics", patch):
            _, vectors = load_synthetic(db, tenant, n, 42, clustered=True)
        load_s = time.perf_counter() - t0
        queries = near_queries(vectors, n_queries + 5, rng)
        words = [" ".join(rng.choice(VOCAB, 4)) for _ in queries]
        estimated = estimates(db, tenant, queries[0])
        times = {c: [] for c in CASES}
        recall = {c: [] for c in FILTERS}
        for i, (q, text) in enumerate(zip(queries, words, strict=True)):
            for case in rng.permutation(CASES):
                t0 = time.perf_counter()
                with db.tenant(tenant) as conn:
                    if case == "bm25":
                        R.lexical_search(conn, SYNTHETIC.index_id, text, RetrievalConfig(k=K, mode="lexical"))
                    else:
                        hits = R.dense_search(conn, SYNTHETIC.index_id, q, RetrievalConfig(k=K), FILTERS[case])
                ms = (time.perf_counter() - t0) * 1000
                if i < 5:
                    continue  # warm-up
                times[case].append(ms)
                if case != "bm25":
                    with db.tenant(tenant) as conn:
                        truth = {h.chunk_id for h in R.exact_search(conn, SYNTHETIC.index_id, q, K, FILTERS[case])}
                    recall[case].append(len(truth & {h.chunk_id for h in hits}) / max(1, len(truth)))
    return {
        "variant": variant,
        "load_s": round(load_s, 1),
        "refresh_s": round(sum(refreshed), 2) if shipped else None,
        "estimated_rows": estimated,
        "p50_ms": {c: round(float(np.median(v)), 1) for c, v in times.items()},
        "p99_ms": {c: round(float(np.percentile(v, 99)), 1) for c, v in times.items()},
        "recall@10": {c: round(float(np.mean(v)), 3) for c, v in recall.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--queries", type=int, default=60)
    args = parser.parse_args()
    settings = load_settings(db_name=DB, filter_columns=PROMOTED)
    rng = np.random.default_rng(7)
    runs = []
    for t in range(args.trials):
        variant = VARIANTS[t % 4 in (1, 2)]  # before, shipped, shipped, before, ...
        runs.append(trial(settings, variant, args.n, args.queries, rng))
        print(json.dumps(runs[-1]), flush=True)
    drop_database(settings)
    print(f"\n| case ({args.n:,} chunks) | " + " | ".join(f"{v}: p50 ms per trial" for v in VARIANTS) + " | ÷ before |")
    print("|---|---|---|---|")
    for case in CASES:
        per = {v: [r["p50_ms"][case] for r in runs if r["variant"] == v] for v in VARIANTS}
        ratio = np.median(per[VARIANTS[1]]) / np.median(per[VARIANTS[0]])
        cells = " | ".join(", ".join(str(x) for x in per[v]) for v in VARIANTS)
        print(f"| {case} | {cells} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
