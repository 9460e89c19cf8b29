"""Filtered dense search on promoted keys: the chunk-carried key's covering btree against the path before it.

Runs on the data `bench/retrieval.py` loaded (database `sluice_bench`, doc.pct and doc.permille promoted and
carried onto chunks). Per query, both sides in alternating order, the measured tenant `bench-<n>` under RLS:

- after (shipped): `tasks.retrieve.dense_search`, whose exact scan over a promoted filter's matches reads
  `chunks_meta_<key>` (tenant, index, key) INCLUDE (dim, chunk_id, embedding) in one index-only scan;
- before: the same exact-scan template over the same rows the way it ran before chunks carried the key:
  the condition on the document's column (`d.meta_<key>`, its btree `documents_meta_<key>`), each match's
  chunk through `chunks (tenant_id, document_id, ...)` and its heap page.

Both must return the same chunks in the same order (asserted per query). Reported: p50/p99 ms per side,
the per-query median ratio after / before, the buffers each plan touched for one query, the load average.

    PYTHONPATH=$PWD .venv/bin/python bench/filtered_cover.py --n 1000000 [--queries 100]
"""

from __future__ import annotations

import argparse
import json
import os
import time

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
SPECS = {"1pct": ("pct", 7), "0.1pct": ("permille", 7)}


def _before_clause(key: str, value: int) -> sql.Composable:
    """The promoted condition as it compiled before chunks carried the key: on the document's column."""
    return sql.SQL("(d.{c} IS NOT NULL AND d.{c} = {v}::bigint)").format(
        c=sql.Identifier(f"meta_{key}"), v=sql.Literal(value)
    )


def _before(conn, q: np.ndarray, key: str, value: int) -> list[int]:
    """The exact scan as it ran before: the document's promoted column, joined to each match's chunk."""
    query = sql.SQL(R._DENSE_EXACT).format(
        filter=_before_clause(key, value),
        index_id=R.index_literal(SYNTHETIC.index_id),
        dim=sql.Literal(384),
        source=sql.SQL(R._FROM),
    )
    return [r[0] for r in conn.execute(query, {"q": q, "index_id": SYNTHETIC.index_id, "k": K}).fetchall()]


def _buffers(db: Database, tenant: str, q: np.ndarray, key: str, value: int) -> dict[str, int]:
    """Shared buffers (hit + read) each side's plan touched for one query."""
    out = {}
    with db.tenant(tenant) as conn:
        compiled = R.compile_for(conn, {f"doc.{key}": value})
        for side, (clause, source) in {
            "after": (compiled.clause, R.source(compiled)),
            "before": (_before_clause(key, value), sql.SQL(R._FROM)),
        }.items():
            query = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + R._DENSE_EXACT).format(
                filter=clause, index_id=R.index_literal(SYNTHETIC.index_id), dim=sql.Literal(384), source=source
            )
            plan = conn.execute(query, {"q": q, "index_id": SYNTHETIC.index_id, "k": K, **compiled.params}).fetchone()
            top = plan[0][0]["Plan"]
            out[side] = int(top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0))
    return out


def run(n: int, n_queries: int) -> dict:
    settings = load_settings(db_name="sluice_bench")
    tenant, config = f"bench-{n}", RetrievalConfig(k=K)
    out: dict = {"load_average_start": os.getloadavg()}
    with Database(settings) as db:
        queries = near_queries(sources(db, tenant), n_queries + WARM, np.random.default_rng(11))
        for name, (key, value) in SPECS.items():
            times: dict[str, list[float]] = {"after": [], "before": []}
            for i, q in enumerate(queries):
                rows = {}
                for side in ("after", "before") if i % 2 else ("before", "after"):
                    t0 = time.perf_counter()
                    with db.tenant(tenant) as conn:
                        if side == "after":
                            hits = R.dense_search(conn, SYNTHETIC.index_id, q, config, {f"doc.{key}": value})
                            rows[side] = [h.chunk_id for h in hits]
                        else:
                            rows[side] = _before(conn, q, key, value)
                    if i >= WARM:
                        times[side].append((time.perf_counter() - t0) * 1000)
                assert rows["after"] == rows["before"] and len(rows["after"]) == K, (name, i)
            ratio = np.array(times["after"]) / np.array(times["before"])
            out[name] = {
                **{f"{side}_p50_ms": round(float(np.median(v)), 2) for side, v in times.items()},
                **{f"{side}_p99_ms": round(float(np.percentile(v, 99)), 2) for side, v in times.items()},
                "after_vs_before_median_ratio": round(float(np.median(ratio)), 3),
                "buffers": _buffers(db, tenant, queries[0], key, value),
            }
    out["load_average_end"] = os.getloadavg()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(run(args.n, args.queries), indent=2))


if __name__ == "__main__":
    main()
