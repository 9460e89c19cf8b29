"""Dense search of a large tenant in a graph it shares against a graph of its own, interleaved (issue 18).

Loads the same layout into two indexes of database `sluice_bench_graphs` (once; reused on later runs):
the measured tenant's `--n` clustered chunks beside `--others` tenants of `--other-n`, through the bulk
path of `bench/retrieval.py`. In index `shared` no tenant claims a graph of its own, so one graph holds
every row (Sluice before migration 0022); in index `own` each tenant of at least `--own-graph-rows` chunks
has its own (as shipped). The same vectors go into both. Then per query the cases (graph x `ef_search`)
run in a fresh random order, each a `tasks.retrieve.dense_search` as shipped, timed from opening the
tenant's transaction to its commit; recall@10 against the exact scan, untimed. A query is lost when its
recall is under 0.5.

    PYTHONPATH=$PWD .venv/bin/python bench/own_graph.py [--n 200000] [--others 9] [--other-n 22222] \
        [--queries 200] [--ef 40,60,100]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from bench.retrieval import BATCH, ensure_data, layout
from bench.synthetic import near_queries, new_space, synthetic_batches
from sluice.config import RetrievalConfig
from sluice.db import Database, migrate
from sluice.settings import load_settings
from tasks import retrieve as R

K = 10
NEVER = 1 << 62  # an own_graph_rows no tenant reaches: every row in one shared graph
SPACES = {"shared": new_space("own-graph-bench-shared"), "own": new_space("own-graph-bench-own")}


def run(args: argparse.Namespace) -> dict:
    settings = load_settings(db_name="sluice_bench_graphs")
    migrate(settings)
    tenants = layout(args.n, args.others, args.other_n, None)
    measured, n, seed = tenants[-1]
    efs = [int(e) for e in args.ef.split(",")]
    out: dict = {"layout": {"measured": tenants[-1], "others": args.others, "other_n": args.other_n}}
    with Database(settings) as db:
        threshold = args.own_graph_rows or settings.own_graph_rows
        for name, space in SPACES.items():
            load = ensure_data(settings, db, tenants, None, NEVER if name == "shared" else threshold, space)
            out[f"load_{name}"] = load
        base = next(synthetic_batches(measured, n, seed, BATCH))[1]
        queries = near_queries(base, args.queries, np.random.default_rng(7))
        cases = [(name, ef) for name in SPACES for ef in efs]
        beams = {}
        for name, ef in cases:
            with db.tenant(measured) as conn:
                beam = R.set_search_params(conn, ef, SPACES[name][0].index_id)
                graph = conn.execute("SELECT index_graph(%s)", (SPACES[name][0].index_id,)).fetchone()[0]
            beams[f"{name}@{ef}"] = {"ef_search_set": beam.ef_search, "graph": graph}
        times: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
        recall: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
        for i, q in enumerate(queries):
            with db.tenant(measured) as conn:
                exact = {h.source_id for h in R.exact_search(conn, SPACES["own"][0].index_id, q, K)}
            rng = np.random.default_rng(i)
            for c in [cases[j] for j in rng.permutation(len(cases))]:
                name, ef = c
                t0 = time.perf_counter()
                with db.tenant(measured) as conn:
                    hits = R.dense_search(conn, SPACES[name][0].index_id, q, RetrievalConfig(k=K, ef_search=ef))
                if i >= args.warm:
                    times[c].append((time.perf_counter() - t0) * 1000)
                    recall[c].append(len({h.source_id for h in hits} & exact) / K)
    out["beams"] = beams
    out["cases"] = {
        f"{name}@{ef}": {
            "p50_ms": round(float(np.percentile(times[(name, ef)], 50)), 2),
            "p99_ms": round(float(np.percentile(times[(name, ef)], 99)), 2),
            "recall@10_mean": round(float(np.mean(recall[(name, ef)])), 3),
            "lost": int(sum(r < 0.5 for r in recall[(name, ef)])),
            "queries": len(times[(name, ef)]),
        }
        for name, ef in cases
    }
    out["p50_own_over_shared"] = {
        ef: round(out["cases"][f"own@{ef}"]["p50_ms"] / out["cases"][f"shared@{ef}"]["p50_ms"], 3) for ef in efs
    }
    out["load_average"] = os.getloadavg()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--others", type=int, default=9)
    parser.add_argument("--other-n", type=int, default=22_222)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warm", type=int, default=20, help="first queries run untimed")
    parser.add_argument("--ef", default="40,60,100", help="configured ef_search values, comma-separated")
    parser.add_argument("--own-graph-rows", type=int, help="default: the setting (100,000)")
    result = run(parser.parse_args())
    print(json.dumps(result, indent=2))
    print("\n| graph | ef_search (set) | p50 ms | p99 ms | recall@10 | lost |")
    print("|---|---|---|---|---|---|")
    for case, row in result["cases"].items():
        name, ef = case.split("@")
        beam = result["beams"][case]["ef_search_set"]
        print(
            f"| {name} | {ef} ({beam}) | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['recall@10_mean']:.3f} "
            f"| {row['lost']} |"
        )


if __name__ == "__main__":
    main()
