"""Where an unfiltered dense search's time goes: each round trip timed by the client, and the HNSW
statement's planning and execution as the server reports them (EXPLAIN ANALYZE, TIMING OFF).

Runs on the data `bench/retrieval.py` loaded (database `sluice_bench`, tenant `bench-<n>` or `--tenant`).
Per query and `ef_search` (in a random order per query), one transaction does what
`tasks.retrieve.dense_search` does, step by step: open (BEGIN, the tenant's setting, its existence check),
`set_search_params`, the HNSW statement, COMMIT; another runs the same statement under EXPLAIN, before or
after it in alternating order. Medians over the queries after 10 for warm-up.

With `--compare-open`, whole dense searches are also timed opened two ways, alternating per query:
`Database.tenant` as shipped (BEGIN, the tenant's setting, its check: three round trips) against a candidate
that pipelines the three into one (not adopted: docs/benchmarks.md, Run 11).

    PYTHONPATH=$PWD .venv/bin/python bench/dense_steps.py --n 1000000 [--ef 80] [--queries 100] [--compare-open]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from psycopg import sql

from bench.dense_sweep import sources
from bench.synthetic import SYNTHETIC, near_queries
from sluice.config import RetrievalConfig
from sluice.db import Database
from sluice.settings import load_settings
from tasks import retrieve as R

K = 10
WARM = 10


def hnsw(conn, beam: R.Beam, q: np.ndarray, prefix: str = "") -> list:
    """The HNSW statement `dense_search` runs for `q` without a filter (under `prefix`, e.g. EXPLAIN); its rows."""
    params = {"q": q, "index_id": SYNTHETIC.index_id, "k": K, "fetch": K}
    return R.ann_rows(conn, beam, params, None, sql.Literal(SYNTHETIC.embedder.dim), prefix)


def timed(db: Database, tenant: str, q: np.ndarray, ef: int) -> tuple[R.Beam, list[float]]:
    """One dense search, step by step: open, search params, the HNSW statement, commit (ms each)."""
    t0 = time.perf_counter()
    with db.tenant(tenant) as conn:
        t1 = time.perf_counter()
        beam = R.set_search_params(conn, ef, SYNTHETIC.index_id)
        t2 = time.perf_counter()
        rows = hnsw(conn, beam, q)
        t3 = time.perf_counter()
    t4 = time.perf_counter()
    assert len(rows) == K, len(rows)
    return beam, [(b - a) * 1000 for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t0, t4))]


def explained(db: Database, tenant: str, q: np.ndarray, ef: int) -> tuple[float, float]:
    """The HNSW statement's planning and execution time (ms) as the server reports them."""
    with db.tenant(tenant) as conn:
        beam = R.set_search_params(conn, ef, SYNTHETIC.index_id)
        plan = hnsw(conn, beam, q, "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) ")[0][0][0]
    return plan["Planning Time"], plan["Execution Time"]


@contextmanager
def pipelined(db: Database, tenant: str) -> Iterator:
    """A candidate `Database.tenant`: BEGIN, the tenant's setting and its check in one pipelined round trip
    (BEGIN by hand: psycopg's `transaction()` opened in a pipeline leaves the connection in pipeline mode)."""
    with db.pool.connection() as conn:
        try:
            with conn.pipeline():
                conn.execute("BEGIN")
                conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant,))
                known = conn.execute("SELECT 1 FROM tenants")
            assert known.fetchone()
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def compare_open(db: Database, tenant: str, queries: np.ndarray, ef: int) -> dict:
    """Whole dense searches opened both ways, alternating per query: medians and their ratio."""
    times: dict[str, list[float]] = {"pipelined": [], "shipped": []}
    config = RetrievalConfig(k=K, ef_search=ef)
    for i, q in enumerate(queries):
        for way in ("pipelined", "shipped") if i % 2 else ("shipped", "pipelined"):
            t0 = time.perf_counter()
            with pipelined(db, tenant) if way == "pipelined" else db.tenant(tenant) as conn:
                assert len(R.dense_search(conn, SYNTHETIC.index_id, q, config)) == K
            if i >= WARM:
                times[way].append((time.perf_counter() - t0) * 1000)
    ratio = np.median(np.array(times["pipelined"]) / np.array(times["shipped"]))
    return {
        "ef_search": ef,
        **{f"{way}_p50_ms": round(float(np.median(v)), 3) for way, v in times.items()},
        "per_query_median_ratio": round(float(ratio), 3),
    }


STEPS = ("open", "search_params", "hnsw_statement", "commit", "total")


def measure(db: Database, tenant: str, queries: np.ndarray, efs: list[int]) -> list[dict]:
    """Per query, each ef in a random order, and per ef the timed search and its EXPLAIN in alternating
    order (the second run of a query finds its pages in the buffers): medians per ef."""
    steps = {ef: {k: [] for k in (*STEPS, "server_plan", "server_exec")} for ef in efs}
    beams: dict[int, R.Beam] = {}
    for i, q in enumerate(queries):
        for ef in map(int, np.random.default_rng(i).permutation(efs)):
            if i % 2:
                beams[ef], ms = timed(db, tenant, q, ef)
                plan, execution = explained(db, tenant, q, ef)
            else:
                plan, execution = explained(db, tenant, q, ef)
                beams[ef], ms = timed(db, tenant, q, ef)
            if i < WARM:
                continue
            for name, value in zip(STEPS, ms, strict=True):
                steps[ef][name].append(value)
            steps[ef]["server_plan"].append(plan)
            steps[ef]["server_exec"].append(execution)
    return [
        {
            "ef_search": ef,
            "beam": beams[ef].ef_search,
            "cast": beams[ef].cast,
            **{name: round(float(np.median(values)), 3) for name, values in steps[ef].items()},
        }
        for ef in efs
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--tenant", help="the measured tenant (default bench-<n>)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--ef", default="80,100")
    parser.add_argument("--compare-open", action="store_true", help="also: a pipelined opening against the shipped one")
    args = parser.parse_args()
    tenant = args.tenant or f"bench-{args.n}"
    load_before = os.getloadavg()
    with Database(load_settings(db_name="sluice_bench")) as db:
        queries = near_queries(sources(db, tenant), args.queries + WARM, np.random.default_rng(11))
        efs = [int(ef) for ef in args.ef.split(",")]
        results = {"steps_ms": measure(db, tenant, queries, efs)}
        if args.compare_open:
            results["open"] = [compare_open(db, tenant, queries, ef) for ef in efs]
    print(json.dumps({"tenant": tenant, "load_average": [load_before, os.getloadavg()], **results}, indent=2))


if __name__ == "__main__":
    main()
