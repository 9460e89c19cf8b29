"""HNSW build parameters: build time, size, and dense recall/latency per graph, interleaved.

A graph is an `ef_construction`, a type (`vector`: float32, the graphs before migration 0021; `halfvec`)
and a number of parallel maintenance workers beside the leader (`--workers`; default: the product's,
`tasks.bulk.set_build_resources`, cores - 1): `--workers 0,1` measures how the build scales with a core.
Runs on the data `bench/retrieval.py --load-only` loaded (database `sluice_bench`). Per repeat, each
graph in rotated order: drop the graph the measured tenant searches (`index_graph`, migration 0022: its own
when it holds `own_graph_rows`, else the one its index shares), build it again over the same rows (its
predicate) as the product does (`tasks.bulk.build_vector_index`'s memory and parallel workers, the
statement of `ensure_index_hnsw` with the given `ef_construction` and type), time the build, read its size, then sweep
`ef_search` on the measured tenant (`bench/dense_sweep.sweep`, through `dense_search` as shipped, which
orders by the graph's type: p50/p99, recall@10 against the float32 exact scan, lost queries). The graph
left in place is the one built last: `bench/retrieval.py --load-only` after a `DROP INDEX` of it builds the
shipped one again.

    PYTHONPATH=$PWD .venv/bin/python bench/graph_build.py --n 100000 --efc 64,200 [--types vector,halfvec] \
        [--workers 0,1] [--repeats 2] [--queries 100] [--ef 40,100]
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


def searched_graph(admin: psycopg.Connection, tenant: str) -> tuple[str, str]:
    """The name and row predicate of the graph `tenant` searches in the synthetic index (it must exist)."""
    admin.execute("SELECT set_config('app.tenant_id', %s, false)", (tenant,))
    name = admin.execute("SELECT index_graph(%s)", (SYNTHETIC.index_id,)).fetchone()[0]
    admin.execute("SELECT set_config('app.tenant_id', '', false)")
    found = admin.execute(
        "SELECT pg_get_expr(indpred, indrelid) FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)
    ).fetchone()
    if found is None:
        raise SystemExit(f"graph {name} of tenant {tenant} is not built: load with bench/retrieval.py --load-only")
    return name, found[0]


def build(admin: psycopg.Connection, graph: tuple[str, str], efc: int, cast: str, workers: int | None = None) -> dict:
    """Drop and rebuild `graph` (name, predicate) with `ef_construction = efc` on `cast` (with `workers`
    parallel maintenance workers, default the product's); seconds and size."""
    name, predicate = graph
    rows = admin.execute(f"SELECT count(*) FROM chunks WHERE {predicate}").fetchone()[0]  # noqa: S608 (catalog)
    with admin.transaction():
        admin.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
        bulk.set_build_resources(admin, rows, DIM, cast)  # as tasks.bulk.build_vector_index
        if workers is not None:
            admin.execute("SELECT set_config('max_parallel_maintenance_workers', %s, true)", (str(workers),))
        t0 = time.perf_counter()
        admin.execute(
            sql.SQL(
                "CREATE INDEX {} ON chunks USING hnsw ((embedding::{}({})) {}) "
                "WITH (m = 16, ef_construction = {}) WHERE {}"
            ).format(
                sql.Identifier(name),
                sql.SQL(cast),
                sql.Literal(DIM),
                sql.Identifier(f"{cast}_cosine_ops"),
                sql.Literal(efc),
                sql.SQL(predicate),  # the graph's own, from the catalog
            )
        )
        seconds = time.perf_counter() - t0
    size = admin.execute("SELECT pg_relation_size(%s::regclass)", (name,)).fetchone()[0]
    return {"rows": rows, "build_s": round(seconds, 1), "size_mb": round(size / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--tenant", help="the measured tenant (default bench-<n>)")
    parser.add_argument("--efc", default="64,200")
    parser.add_argument("--types", default="vector", help="graph types: vector, halfvec or both")
    parser.add_argument("--workers", help="parallel maintenance workers, e.g. 0,1 (default: the product's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--ef", default="40,100")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")] if args.workers else [None]
    # label -> (ef_construction, type, workers)
    variants = {
        f"{efc}/{cast}" + (f"/{w}w" if w is not None else ""): (efc, cast, w)
        for efc in map(int, args.efc.split(","))
        for cast in args.types.split(",")
        for w in workers
    }
    graphs = list(variants)
    efs = [int(x) for x in args.ef.split(",")]
    tenant = args.tenant or f"bench-{args.n}"
    settings = load_settings(db_name="sluice_bench")
    runs: dict[str, list[dict]] = {g: [] for g in graphs}
    with Database(settings) as db, psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
        queries = near_queries(sources(db, tenant), args.queries + 20, np.random.default_rng(7))
        graph_of_tenant = searched_graph(admin, tenant)
        for r in range(args.repeats):
            for graph in graphs[r % len(graphs) :] + graphs[: r % len(graphs)]:
                load = os.getloadavg()[0]
                built = build(admin, graph_of_tenant, *variants[graph])
                sweep(db, tenant, queries[:20], efs)  # warm-up, not counted
                built.update(load_average=round(load, 2), ef=sweep(db, tenant, queries[20:], efs))
                runs[graph].append(built)
                print(f"{graph}: built in {built['build_s']} s, {built['size_mb']} MB", flush=True)
    print(json.dumps({"tenant": tenant, "queries": args.queries, "runs": runs}, indent=2))
    base = graphs[0]
    print(
        f"\n| ef_construction / type (/ workers) | build s | size MB | build ÷ {base} (medians) | "
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
