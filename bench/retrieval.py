"""Retrieval benchmark: p50/p99 latency and recall@10 against exact search, at 100k chunks.

Loads (once; reused on later runs) 100k synthetic chunks with clustered 384-d unit vectors and
realistic metadata into tenant `bench` of database `sluice_bench`, then, warm and interleaved per
query (the cases in a fresh random order per query, so no case always runs on pages another case
just read), times dense, hybrid (rrf and convex), lexical (BM25) and filtered (1%, 0.1%) retrieval and
the exact scan (baseline); `lexical_ts_rank` is the lexical search Sluice had before BM25 (ts_rank_cd over
an OR tsquery, which RLS answers by scanning the tenant's rows), the baseline of the lexical rows.
`--others N` loads N more tenants of `--other-n` chunks each into the same index first, so the measured
tenant is one among several. Recall@10 is measured against the exact scan, untimed. `--langchain` adds
the peer rows, timed in the same loop on the same rows and queries: langchain-postgres PGVector
(dense, filtered) and PGVectorStore's hybrid search (its tsvector column, RRF) for the hybrid rows.

    PYTHONPATH=$PWD .venv/bin/python bench/retrieval.py [--n 100000] [--queries 200] [--others 2] \
        [--other-n 20000] [--langchain-load] [--langchain]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
from psycopg import sql

from bench.bm25_reference import TS_RANK
from bench.paths import peer_python
from bench.synthetic import SYNTHETIC, VOCAB, load_synthetic, near_queries
from sluice.config import RetrievalConfig
from sluice.db import Database, admin_conninfo, create_tenant, migrate
from sluice.settings import load_settings
from tasks import retrieve as R

TENANT = "bench"  # suffixed with the chunk count, so runs at different sizes do not mix
K = 10
CASES = {
    "dense": ("dense", None),
    "hybrid": ("hybrid", None),
    "hybrid_convex": ("hybrid_convex", None),
    "lexical": ("lexical", None),
    "filtered_1pct": ("dense", {"doc.pct": 7}),
    "filtered_0.1pct": ("dense", {"doc.permille": 7}),
}


def _ensure_tenant(db: Database, tenant: str, n: int, seed: int) -> None:
    """Load n chunks into `tenant` unless it already holds them."""
    create_tenant(db, tenant)
    with db.tenant(tenant) as conn:
        have = conn.execute("SELECT count(*) FROM chunks WHERE index_id = %s", (SYNTHETIC.index_id,)).fetchone()[0]
    if have == 0:
        t0 = time.perf_counter()
        load_synthetic(db, tenant, n, seed=seed, clustered=True)
        print(f"loaded {n} chunks into {tenant} in {time.perf_counter() - t0:.0f} s", flush=True)
    elif have != n:
        raise SystemExit(f"tenant {tenant} holds {have} chunks, not {n}: drop database sluice_bench first")


def ensure_data(db: Database, n: int, others: int = 0, other_n: int = 0, tenant: str | None = None) -> np.ndarray:
    """Load the other tenants and the measured one (n chunks) unless loaded; return the query-source vectors."""
    global TENANT
    for i in range(others):
        _ensure_tenant(db, f"bench-other{i}-{other_n}", other_n, seed=100 + i)
    TENANT = tenant or f"bench-{n}"
    _ensure_tenant(db, TENANT, n, seed=42)
    # Queries start from stored vectors in chunk order (the langchain side reads the same ones).
    with db.tenant(TENANT) as conn:
        rows = conn.execute(
            "SELECT embedding FROM chunks WHERE index_id = %s ORDER BY chunk_id LIMIT 5000", (SYNTHETIC.index_id,)
        ).fetchall()
    return np.vstack([np.asarray(getattr(r[0], "to_numpy", lambda v=r[0]: v)(), dtype=np.float32) for r in rows])


def _timed(db: Database, mode: str, spec: dict | None, text: str, q: np.ndarray) -> tuple[float, list]:
    config = RetrievalConfig(mode="hybrid", k=K, fusion="convex") if mode == "hybrid_convex" else None
    t0 = time.perf_counter()
    with db.tenant(TENANT) as conn:
        hits = R.retrieve(conn, SYNTHETIC.index_id, text, q, config or RetrievalConfig(mode=mode, k=K), spec)
    return (time.perf_counter() - t0) * 1000, hits


def _exact(db: Database, q: np.ndarray, spec: dict | None) -> tuple[float, list]:
    t0 = time.perf_counter()
    with db.tenant(TENANT) as conn:
        hits = R.exact_search(conn, SYNTHETIC.index_id, q, K, spec)
    return (time.perf_counter() - t0) * 1000, hits


def _lexical_ts_rank(db: Database, text: str) -> float:
    """The pre-BM25 lexical query, as the app role under RLS: the baseline of the lexical rows."""
    t0 = time.perf_counter()
    with db.tenant(TENANT) as conn:
        conn.execute(TS_RANK, {"text": text, "index_id": SYNTHETIC.index_id, "k": K}).fetchall()
    return (time.perf_counter() - t0) * 1000


class LangChain:
    """bench/retrieval_langchain.py in the peer venv, answering one timed search per request."""

    CASES = ("dense", "hybrid", "filtered_1pct", "filtered_0.1pct")

    def __init__(self, admin: str, tenant: str, n_queries: int):
        script = Path(__file__).with_name("retrieval_langchain.py")
        args = [str(peer_python()), str(script), "--serve", admin, tenant, str(n_queries)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def search(self, case: str, index: int, text: str) -> tuple[float, set[int]]:
        self.proc.stdin.write(f"{case} {index} {text}\n")
        self.proc.stdin.flush()
        ms, _, ids = self.proc.stdout.readline().split(" ")
        return float(ms), {int(i) for i in ids.strip().split(",") if i}

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _default_plan_count(db: Database, q: np.ndarray, spec: dict) -> int:
    """Rows the stock plan (ef_search 40, no iterative scan) returns for a filtered LIMIT k."""
    with db.tenant(TENANT) as conn:
        params = {"q": q, "index_id": SYNTHETIC.index_id, "k": K, "fetch": K}
        return len(R._run(conn, R._DENSE_ANN, params, spec, dim=sql.Literal(q.shape[0])))


def run(n: int, n_queries: int, langchain: bool, others: int = 0, other_n: int = 0, tenant: str | None = None) -> dict:
    # doc.pct and doc.permille promoted (sluice/filter_columns.py): the filtered rows measure the shipped path;
    # bench/retrieval_filtered.py measures it against the jsonb path.
    settings = load_settings(db_name="sluice_bench", filter_columns={"pct": "integer", "permille": "integer"})
    migrate(settings)
    with Database(settings) as db:
        base = ensure_data(db, n, others, other_n, tenant)
        rng = np.random.default_rng(7)
        queries = near_queries(base, n_queries, rng)
        texts = [" ".join(VOCAB[int(i)] for i in rng.integers(0, len(VOCAB), size=3)) for _ in range(n_queries)]
        for q, text in zip(queries[:20], texts[:20], strict=True):  # warm caches and the pool
            for mode, spec in CASES.values():
                _timed(db, mode, spec, text, q)
        lc = LangChain(admin_conninfo(settings), TENANT, n_queries) if langchain else None
        lc_names = [f"langchain_{c}" for c in LangChain.CASES] if lc else []
        for i in range(20 if lc else 0):
            for case in LangChain.CASES:
                lc.search(case, i, texts[i])
        times: dict[str, list[float]] = {
            name: [] for name in [*CASES, "exact", "exact_filtered_1pct", "lexical_ts_rank", *lc_names]
        }
        recall: dict[str, list[float]] = {
            name: [] for name in [*CASES, *lc_names] if "lexical" not in name and "hybrid" not in name
        }
        counts: dict[str, list[int]] = {name: [] for name in [*CASES, *lc_names]}
        for i, (q, text) in enumerate(zip(queries, texts, strict=True)):
            exact = _measure_sluice(db, q, text, times, recall, counts, np.random.default_rng(i))
            times["lexical_ts_rank"].append(_lexical_ts_rank(db, text))
            if lc:
                _measure_langchain(lc, i, text, exact, times, recall, counts)
            times["exact"].append(exact[None][0])
            times["exact_filtered_1pct"].append(exact[json.dumps(CASES["filtered_1pct"][1])][0])
        if lc:
            lc.close()
        default = {
            name: [_default_plan_count(db, q, spec) for q in queries[:50]] for name, (_, spec) in CASES.items() if spec
        }
    return _summary(n, n_queries, times, recall, counts, default)


def _measure_sluice(db: Database, q: np.ndarray, text: str, times: dict, recall: dict, counts: dict, rng) -> dict:
    """Every case for one query, interleaved (every case sees the same load); the exact answers by filter.

    The cases run in a random order per query: in a fixed order the first case to read a query's HNSW
    neighbourhood or BM25 postings paid for the cases after it (hybrid rrf ran first and measured 2x convex).
    """
    exact = {None: _exact(db, q, None)}
    for name in map(str, rng.permutation(list(CASES))):
        mode, spec = CASES[name]
        ms, hits = _timed(db, mode, spec, text, q)
        times[name].append(ms)
        counts[name].append(len(hits))
        if name in recall:
            key = json.dumps(spec)
            if key not in exact:
                exact[key] = _exact(db, q, spec)
            truth = {h.chunk_id for h in exact[key][1]}
            recall[name].append(len(truth & {h.chunk_id for h in hits}) / max(1, len(truth)))
    return exact


def _measure_langchain(lc: LangChain, i: int, text: str, exact: dict, times: dict, recall: dict, counts: dict) -> None:
    """The peer's cases for query `i`; the dense ones scored against the exact answers Sluice's cases computed."""
    for case in LangChain.CASES:
        ms, ids = lc.search(case, i, text)
        times[f"langchain_{case}"].append(ms)
        counts[f"langchain_{case}"].append(len(ids))
        if f"langchain_{case}" in recall:
            truth = {h.chunk_id for h in exact[json.dumps(CASES[case][1])][1]}
            recall[f"langchain_{case}"].append(len(truth & ids) / max(1, len(truth)))


def _summary(n, n_queries, times, recall, counts, default) -> dict:
    out = {"chunks": n, "queries": n_queries, "k": K, "cases": {}}
    for name, values in times.items():
        row = {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}
        if name in recall:
            row["recall@10_mean"] = float(np.mean(recall[name]))
            row["recall@10_min"] = float(np.min(recall[name]))
        if name in counts:
            row["min_rows_returned"] = int(np.min(counts[name]))
        if name in default:
            row["default_plan_rows_max"] = int(np.max(default[name]))
        out["cases"][name] = row
    dense, exact = np.array(times["dense"]), np.array(times["exact"])
    out["dense_vs_exact_median_ratio"] = float(np.median(dense / exact))
    out["lexical_vs_ts_rank_median_ratio"] = float(np.median(np.array(times["lexical"]) / times["lexical_ts_rank"]))
    for case in LangChain.CASES:
        if f"langchain_{case}" in times:  # per-query ratio, same query, measured back to back
            ratio = np.array(times[case]) / np.array(times[f"langchain_{case}"])
            out[f"{case}_vs_langchain_median_ratio"] = float(np.median(ratio))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--others", type=int, default=0, help="other tenants loaded into the same index first")
    parser.add_argument("--other-n", type=int, default=20_000, help="chunks per other tenant")
    parser.add_argument("--tenant", help="measure this loaded tenant of --n chunks (e.g. bench-other0-20000)")
    parser.add_argument("--langchain", action="store_true", help="also time PGVector (peer venv)")
    parser.add_argument("--langchain-load", action="store_true", help="copy the data into PGVector first")
    args = parser.parse_args()
    if args.langchain_load:
        admin = admin_conninfo(load_settings(db_name="sluice_bench"))
        script = Path(__file__).with_name("retrieval_langchain.py")
        tenant = args.tenant or f"bench-{args.n}"
        subprocess.run([str(peer_python()), str(script), "--load", admin, tenant], check=True)
    result = run(args.n, args.queries, args.langchain, args.others, args.other_n, args.tenant)
    print(json.dumps(result, indent=2))
    print("\n| case | p50 ms | p99 ms | recall@10 mean (min) | min rows | default plan rows (max) |")
    print("|---|---|---|---|---|---|")
    for name, row in result["cases"].items():
        rec = f"{row['recall@10_mean']:.3f} ({row['recall@10_min']:.2f})" if "recall@10_mean" in row else "-"
        print(
            f"| {name} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {rec} | {row.get('min_rows_returned', '-')} "
            f"| {row.get('default_plan_rows_max', '-')} |"
        )


if __name__ == "__main__":
    main()
