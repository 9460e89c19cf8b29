"""The exact scan behind a filtered search: what it reads per matching chunk, before and after, interleaved.

Runs on the data `bench/retrieval.py` loaded (database `sluice_bench`, doc.pct and doc.permille promoted).
Two comparisons, each with both sides in one loop, in alternating order per query:

- query: `tasks.retrieve._DENSE_EXACT` as shipped (the inner query reads each match's id and vector; the
  text, metadata and document columns are read for the k kept) against the template before it (every
  column of every match read, then sorted), for the measured tenant `bench-<n>` under RLS; the two must
  return the same rows, asserted per query.
- storage: the same distance query over two copies of every chunk of `--storage-tenant` (default one of
  the 50,000-chunk other tenants), one with `embedding` stored as before migration 0019 (pgvector's
  EXTERNAL: out of line once a row passes ~2 kB) and one as after it (MAIN: in the row), for the chunks
  of the documents with `pct` < 20 (a fifth of them, 10,000 of 50,000: as many as 1% of 1M, spread over
  the heap the same way); one plan for both (a nested loop from the promoted column's btree, as the
  product's); shared buffers read and ms per query. The copies are dropped at the end.

    PYTHONPATH=$PWD .venv/bin/python bench/exact_scan.py --n 1000000 [--queries 40] \
        [--storage-tenant bench-other0-50000]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from bench.dense_sweep import sources
from bench.synthetic import SYNTHETIC, near_queries
from sluice.db import Database, admin_conninfo
from sluice.settings import load_settings
from tasks import retrieve as R

K = 10
WARM = 3
SPECS = {"1pct": {"doc.pct": 7}, "0.1pct": {"doc.permille": 7}}
# The template before this change: the inner query projects every output column of every matching chunk.
BEFORE = (
    "SELECT s.chunk_id, s.document_id, s.source_id, s.char_start, s.char_end, s.text, s.metadata, 1 - s.dist, "  # noqa: S608
    f"s.user_metadata FROM (SELECT {R._COLUMNS}, c.embedding <=> %(q)s::vector({{dim}}) AS dist, d.user_metadata "
    f"{R._FROM} {R._WHERE} AND c.dim = {{dim}} OFFSET 0) s ORDER BY s.dist, s.chunk_id LIMIT %(k)s"
)
COPIES = {"external": "bench_exact_external", "main": "bench_exact_main"}
# The distance query over a copy: the documents a promoted condition selects, their chunks, the k nearest.
_OVER_COPY = (
    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT c.chunk_id, c.embedding <=> %(q)s::vector(384) AS dist "
    "FROM documents d JOIN {table} c ON c.document_id = d.document_id "
    "WHERE d.tenant_id = %(tenant)s AND d.meta_pct < 20 ORDER BY dist LIMIT 10"
)


def compare_queries(db: Database, tenant: str, queries: np.ndarray) -> dict:
    """Both templates per query, alternating which runs first; p50 each and the per-query median ratio."""
    out = {}
    for name, spec in SPECS.items():
        times: dict[str, list[float]] = {"before": [], "after": []}
        for i, q in enumerate(queries):
            rows = {}
            for side in ("before", "after") if i % 2 else ("after", "before"):
                t0 = time.perf_counter()
                with db.tenant(tenant) as conn:
                    compiled = R.compile_for(conn, spec)
                    template = BEFORE if side == "before" else R._DENSE_EXACT
                    params = {"q": q, "index_id": SYNTHETIC.index_id, "k": K}
                    rows[side] = [
                        (r[0], r[5], round(r[7], 6))
                        for r in R._run(conn, template, params, compiled, dim=sql.Literal(384))
                    ]
                if i >= WARM:
                    times[side].append((time.perf_counter() - t0) * 1000)
            assert rows["before"] == rows["after"], (name, i)
        ratio = np.array(times["after"]) / np.array(times["before"])
        out[name] = {
            **{f"{side}_p50_ms": round(float(np.median(v)), 2) for side, v in times.items()},
            "after_vs_before_median_ratio": round(float(np.median(ratio)), 3),
        }
    return out


def compare_storage(admin: psycopg.Connection, tenant: str, queries: np.ndarray) -> dict:
    """The same distance query over a copy with the vector out of line and one with it in the row."""
    for storage, table in COPIES.items():
        name = sql.Identifier(table)
        admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
        admin.execute(sql.SQL("CREATE TABLE {} (LIKE chunks)").format(name))
        admin.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN embedding SET STORAGE {}").format(name, sql.SQL(storage)))
        admin.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM chunks WHERE tenant_id = %s ORDER BY chunk_id").format(name),
            (tenant,),
        )
        admin.execute(sql.SQL("CREATE INDEX ON {} (document_id)").format(name))
        admin.execute(sql.SQL("VACUUM ANALYZE {}").format(name))
    # The product's plan for a selective promoted filter; on a copy this small the planner may prefer a hash join.
    admin.execute("SET enable_hashjoin = off")
    admin.execute("SET enable_mergejoin = off")
    admin.execute("SET max_parallel_workers_per_gather = 0")
    out: dict[str, dict[str, list[float]]] = {s: {"ms": [], "buffers": []} for s in COPIES}
    try:
        for i, q in enumerate(queries):
            for storage in list(COPIES) if i % 2 else list(reversed(COPIES)):
                query = sql.SQL(_OVER_COPY).format(table=sql.Identifier(COPIES[storage]))
                t0 = time.perf_counter()
                plan = admin.execute(query, {"q": q, "tenant": tenant}).fetchone()[0][0]
                if i >= WARM:
                    out[storage]["ms"].append((time.perf_counter() - t0) * 1000)
                    buffers = plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0)
                    out[storage]["buffers"].append(buffers)
        sizes = {
            s: admin.execute(
                "SELECT pg_relation_size(oid), pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = %s::regclass",
                (t,),
            ).fetchone()
            for s, t in COPIES.items()
        }
    finally:
        for table in COPIES.values():
            admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    ms = {s: np.array(v["ms"]) for s, v in out.items()}
    return {
        "tenant_copied": tenant,
        **{
            storage: {
                "p50_ms": round(float(np.median(ms[storage])), 2),
                "buffers_median": int(np.median(out[storage]["buffers"])),
                "heap_mb": round(sizes[storage][0] / 2**20, 1),
                "toast_mb": round(sizes[storage][1] / 2**20, 1),
            }
            for storage in COPIES
        },
        "main_vs_external_median_ratio": round(float(np.median(ms["main"] / ms["external"])), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="the measured tenant is bench-<n>")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--storage-tenant", default="bench-other0-50000", help="the tenant whose chunks are copied")
    args = parser.parse_args()
    tenant = f"bench-{args.n}"
    settings = load_settings(db_name="sluice_bench", filter_columns={"pct": "integer", "permille": "integer"})
    load_before = os.getloadavg()
    with Database(settings) as db:
        queries = near_queries(sources(db, tenant), args.queries + WARM, np.random.default_rng(1))
        out = {"query": compare_queries(db, tenant, queries)}
    with psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
        register_vector(admin)
        out["storage"] = compare_storage(admin, args.storage_tenant, queries)
    out["load_average"] = {"start": load_before, "end": os.getloadavg()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
