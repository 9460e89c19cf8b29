"""HNSW build parameters: build time, size, and dense recall/latency per graph, interleaved.

A graph is an `ef_construction` and a type (`vector`: float32, the graphs before migration 0021; `halfvec`).
Runs on the data `bench/retrieval.py --load-only` loaded (database `sluice_bench`). Per repeat, each
graph in rotated order: drop the synthetic index's graph, build it again over every tenant's rows as the
product does (`tasks.bulk.build_vector_index`'s memory and parallel workers, the statement of
`ensure_index_hnsw` with the given `ef_construction` and type), time the build, read its size, then sweep
`ef_search` on the measured tenant (`bench/dense_sweep.sweep`, through `dense_search` as shipped, which
orders by the graph's type: p50/p99, recall@10 against the float32 exact scan, lost queries). The graph
left in place is the one built last: `bench/retrieval.py --load-only` after a `DROP INDEX` of it builds the
shipped one again.

    PYTHONPATH=$PWD .venv/bin/python bench/graph_build.py --n 100000 --efc 64,200 [--types vector,halfvec] \
        [--repeats 2] [--queries 100] [--ef 40,100]
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


def build(admin: psycopg.Connection, efc: int, cast: str) -> dict:
    """Drop and rebuild the synthetic graph with `ef_construction = efc` on `cast`; seconds and size."""
    rows = admin.execute("SELECT count(*) FROM chunks WHERE index_id = %s", (SYNTHETIC.index_id,)).fetchone()[0]
    with admin.transaction():
        admin.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(GRAPH)))
        bulk.set_build_resources(admin, rows, DIM, cast)  # as tasks.bulk.build_vector_index
        t0 = time.perf_counter()
        admin.execute(
            sql.SQL(
                "CREATE INDEX {} ON chunks USING hnsw ((embedding::{}({})) {}) "
                "WITH (m = 16, ef_construction = {}) WHERE index_id = {} AND dim = {}"
            ).format(
                sql.Identifier(GRAPH),
                sql.SQL(cast),
                sql.Literal(DIM),
                sql.Identifier(f"{cast}_cosine_ops"),
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
    parser.add_argument("--types", default="vector", help="graph types: vector, halfvec or both")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--ef", default="40,100")
    args = parser.parse_args()
    graphs = [f"{efc}/{cast}" for efc in map(int, args.efc.split(",")) for cast in args.types.split(",")]
    efs = [int(x) for x in args.ef.split(",")]
    tenant = args.tenant or f"bench-{args.n}"
    settings = load_settings(db_name="sluice_bench")
    runs: dict[str, list[dict]] = {g: [] for g in graphs}
    with Database(settings) as db, psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
        queries = near_queries(sources(db, tenant), args.queries + 20, np.random.default_rng(7))
        for r in range(args.repeats):
            for graph in graphs[r % len(graphs) :] + graphs[: r % len(graphs)]:
                efc, cast = graph.split("/")
                load = os.getloadavg()[0]
                built = build(admin, int(efc), cast)
                sweep(db, tenant, queries[:20], efs)  # warm-up, not counted
                built.update(load_average=round(load, 2), ef=sweep(db, tenant, queries[20:], efs))
                runs[graph].append(built)
                print(f"{graph}: built in {built['build_s']} s, {built['size_mb']} MB", flush=True)
    print(json.dumps({"tenant": tenant, "queries": args.queries, "runs": runs}, indent=2))
    base = graphs[0]
    print(
        f"\n| ef_construction / type | build s | size MB | build ÷ {base} (medians) | "
        + " | ".join(f"ef_search {ef}: recall / p50 / p99 ms (lost), per repeat" for ef in efs)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(efs))
    median = {g: float(np.median([b["build_s"] for b in runs[g]])) for g in graphs}
    for graph in graphs:
        cells = " | ".join(
            "; ".join(
                f"{run['ef'][ef]['recall@10_mean']:.3f} / {run['ef'][ef]['p50_ms']:.1f} / "
                f"{run['ef'][ef]['p99_ms']:.1f} ({run['ef'][ef]['lost_queries']})"
                for run in runs[graph]
            )
            for ef in efs
        )
        builds = ", ".join(str(b["build_s"]) for b in runs[graph])
        print(f"| {graph} | {builds} | {runs[graph][-1]['size_mb']} | {median[graph] / median[base]:.2f}× | {cells} |")


if __name__ == "__main__":
    main()
