"""HNSW build parameters: build time, size, and dense recall/latency per `ef_construction`, interleaved.

Runs on the data `bench/retrieval.py --load-only` loaded (database `sluice_bench`). Per repeat, each
`--efc` value in rotated order: drop the synthetic index's graph, build it again over every tenant's rows
as the product does (`tasks.bulk.build_vector_index`'s memory and parallel workers, migration 0020's
statement with the given `ef_construction`), time the build, read its size, then sweep `ef_search` on the
measured tenant (`bench/dense_sweep.sweep`: p50/p99, recall@10 against the exact scan, lost queries).
The graph left in place is the one built last: `bench/retrieval.py --load-only` after a `DROP INDEX` of it
builds the shipped one again.

    PYTHONPATH=$PWD .venv/bin/python bench/graph_build.py --n 100000 --efc 64,200 [--repeats 2] \
        [--queries 100] [--ef 40,100]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import psycopg
from psycopg import sql

from bench.dense_sweep import sources, sweep
from bench.synthetic import DIM, SYNTHETIC, near_queries
from sluice.db import Database, admin_conninfo
from sluice.settings import load_settings
from tasks import bulk

GRAPH = f"chunks_hnsw_{SYNTHETIC.index_id}"


def build(admin: psycopg.Connection, efc: int) -> dict:
    """Drop and rebuild the synthetic graph with `ef_construction = efc`; seconds and size."""
    rows = admin.execute("SELECT count(*) FROM chunks WHERE index_id = %s", (SYNTHETIC.index_id,)).fetchone()[0]
    with admin.transaction():
        admin.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(GRAPH)))
        bulk.set_build_resources(admin, rows, DIM)  # as tasks.bulk.build_vector_index
        t0 = time.perf_counter()
        admin.execute(
            sql.SQL(
                "CREATE INDEX {} ON chunks USING hnsw ((embedding::vector({})) vector_cosine_ops) "
                "WITH (m = 16, ef_construction = {}) WHERE index_id = {} AND dim = {}"
            ).format(
                sql.Identifier(GRAPH),
                sql.Literal(DIM),
                sql.Literal(efc),
                sql.Literal(SYNTHETIC.index_id),
                sql.Literal(DIM),
            )
        )
        seconds = time.perf_counter() - t0
    size = admin.execute("SELECT pg_relation_size(%s::regclass)", (GRAPH,)).fetchone()[0]
    return {"rows": rows, "build_s": round(seconds, 1), "size_mb": round(size / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--tenant", help="the measured tenant (default bench-<n>)")
    parser.add_argument("--efc", default="64,200")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--ef", default="40,100")
    args = parser.parse_args()
    efcs = [int(x) for x in args.efc.split(",")]
    efs = [int(x) for x in args.ef.split(",")]
    tenant = args.tenant or f"bench-{args.n}"
    settings = load_settings(db_name="sluice_bench")
    runs: dict[int, list[dict]] = {efc: [] for efc in efcs}
    with Database(settings) as db, psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
        queries = near_queries(sources(db, tenant), args.queries + 20, np.random.default_rng(7))
        for r in range(args.repeats):
            for efc in efcs[r % len(efcs) :] + efcs[: r % len(efcs)]:
                load = os.getloadavg()[0]
                built = build(admin, efc)
                sweep(db, tenant, queries[:20], efs)  # warm-up, not counted
                built.update(load_average=round(load, 2), ef=sweep(db, tenant, queries[20:], efs))
                runs[efc].append(built)
                print(f"efc {efc}: built in {built['build_s']} s, {built['size_mb']} MB", flush=True)
    print(json.dumps({"tenant": tenant, "queries": args.queries, "runs": runs}, indent=2))
    base = efcs[0]
    print(
        f"\n| ef_construction | build s | size MB | build ÷ efc {base} (medians) | "
        + " | ".join(f"ef_search {ef}: recall / p50 / p99 ms (lost)" for ef in efs)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(efs))
    median = {efc: float(np.median([b["build_s"] for b in runs[efc]])) for efc in efcs}
    for efc in efcs:
        last = runs[efc][-1]["ef"]
        cells = " | ".join(
            f"{last[ef]['recall@10_mean']:.3f} / {last[ef]['p50_ms']:.1f} / {last[ef]['p99_ms']:.1f} "
            f"({last[ef]['lost_queries']})"
            for ef in efs
        )
        builds = ", ".join(str(b["build_s"]) for b in runs[efc])
        print(f"| {efc} | {builds} | {runs[efc][-1]['size_mb']} | {median[efc] / median[base]:.2f}× | {cells} |")


if __name__ == "__main__":
    main()
