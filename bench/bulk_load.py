"""Loading chunks with their vectors given: the bulk path against the row path it replaces, interleaved.

    PYTHONPATH=$PWD .venv/bin/python bench/bulk_load.py [--rows 20000] [--repeats 2] [--batch 5000] [--paths row,bulk]

Each repeat loads the same synthetic corpus (bench/synthetic.py: one chunk per document, clustered
384-d unit vectors) twice, each time into a new tenant and a new index id, in database `sluice_bench_bulk`:
- row: the index's HNSW graph exists first (`register_index`), then batches of `--batch` rows, each
  its own transaction, go through `store_records` and so into the live graph (the path before
  migration 0014);
- bulk: `tasks.bulk.bulk_load_records`: every row in one transaction, then one parallel graph build,
  then the index is activated;
- bulk-small-memory: the same with the build memory estimated as before session 8 (5.2 bytes per
  dimension per row, below what pgvector keeps: the end of a large graph is built on disk);
- bulk-toasted-vectors: the bulk path with `chunks.embedding` stored as before migration 0019 (pgvector's
  EXTERNAL: a row past ~2 kB keeps its vector in the TOAST table), set for that run alone.
Reports rows/s (wall time, build included), the seconds of the rows phase (staged inserts, postings
included) and of the build phase, the graph's size on disk, the loader's peak RSS, and the
peak memory of the PostgreSQL processes (largest single VmRSS and the sum of private RssAnon, sampled
every 0.2 s). Prints one JSON object and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.synthetic import DIM, clustered_vectors, make_records  # noqa: E402
from sluice.config import EmbedderConfig, PipelineConfig  # noqa: E402
from sluice.db import Database, admin_conninfo, create_tenant, migrate  # noqa: E402
from sluice.settings import load_settings  # noqa: E402
from tasks.bulk import bulk_load_records  # noqa: E402
from tasks.embed import EmbedderIdentity  # noqa: E402
from tasks.records import store_records  # noqa: E402
from tasks.store import register_index  # noqa: E402


class PostgresMemory(threading.Thread):
    """Samples the memory of every `postgres` process until stopped: peak single VmRSS, peak sum of RssAnon."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak_rss = self.peak_anon = 0

    def sample(self) -> None:
        rss = anon = 0
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            except OSError:
                continue
            if fields.get("Name", "").strip() == "postgres":
                rss = max(rss, int(fields.get("VmRSS", "0 kB").split()[0]))
                anon += int(fields.get("RssAnon", "0 kB").split()[0])
        self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(0.2)


def space() -> tuple[PipelineConfig, EmbedderIdentity]:
    model = f"synthetic-bulk-bench-{uuid.uuid4().hex[:8]}"
    config = PipelineConfig(embedder=EmbedderConfig(model=model, dim=DIM, precision="float32"))
    return config, EmbedderIdentity(model, "0" * 64, DIM, True)


def row_path(db: Database, tenant: str, config, identity, records, vectors, batch: int, phases: dict) -> None:
    with db.tenant(tenant) as conn:
        register_index(conn, config, identity)
    for start in range(0, len(records), batch):
        with db.tenant(tenant) as conn:
            store_records(conn, config.index_id, records[start : start + batch], vectors[start : start + batch])


def bulk_path(db: Database, tenant: str, config, identity, records, vectors, batch: int, phases: dict) -> None:
    def rows_done(done: int, total: int) -> None:
        if done == total:
            phases["rows_done"] = time.perf_counter()

    bulk_load_records(db, tenant, config, identity, records, vectors, "default", batch, on_batch=rows_done)


def bulk_small_memory(db: Database, tenant: str, config, identity, records, vectors, batch: int, phases: dict) -> None:
    old_estimate = lambda rows, dim: int(rows * dim * 4 * 1.3)  # noqa: E731
    with mock.patch("tasks.bulk.graph_bytes", old_estimate):
        bulk_path(db, tenant, config, identity, records, vectors, batch, phases)


@contextmanager
def embedding_storage(storage: str):
    """`chunks.embedding`'s storage set to `storage` (it applies to rows written meanwhile), MAIN again after."""
    admin = admin_conninfo(load_settings(db_name=BENCH_DB))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE {}").format(sql.SQL(storage)))
        try:
            yield
        finally:
            conn.execute("ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE MAIN")


def bulk_toasted_vectors(db: Database, tenant: str, config, identity, records, vectors, batch: int, phases: dict):
    with embedding_storage("EXTERNAL"):
        bulk_path(db, tenant, config, identity, records, vectors, batch, phases)


PATHS = {
    "row": row_path,
    "bulk": bulk_path,
    "bulk-small-memory": bulk_small_memory,
    "bulk-toasted-vectors": bulk_toasted_vectors,
}
BENCH_DB = "sluice_bench_bulk"


def measure(db: Database, path, records, vectors, batch: int) -> dict:
    """Load once along `path` into a new tenant and index; rows/s, graph size, Postgres peak memory."""
    tenant, (config, identity) = f"bulk-{uuid.uuid4().hex[:10]}", space()
    create_tenant(db, tenant)
    memory = PostgresMemory()
    memory.start()
    phases: dict[str, float] = {}
    start = time.perf_counter()
    path(db, tenant, config, identity, records, vectors, batch, phases)
    end = time.perf_counter()
    seconds, rows_done = end - start, phases.get("rows_done", end)
    memory.stop.set()
    memory.join()
    with db.statement() as conn:
        size = conn.execute("SELECT pg_relation_size(to_regclass(%s))", (f"chunks_hnsw_{config.index_id}",))
        graph_bytes = size.fetchone()[0]
    return {
        "seconds": round(seconds, 1),
        "rows_per_s": round(len(records) / seconds, 1),
        "rows_phase_s": round(rows_done - start, 1),
        "build_phase_s": round(end - rows_done, 1),
        "graph_mb": round(graph_bytes / 2**20, 1),
        "postgres_peak_backend_rss_mb": round(memory.peak_rss / 1024),
        "postgres_peak_private_mb": round(memory.peak_anon / 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--paths", default="row,bulk", help="comma-separated, of: " + ", ".join(PATHS))
    args = ap.parse_args()
    unknown = set(args.paths.split(",")) - PATHS.keys()
    if unknown:
        ap.error(f"unknown --paths {sorted(unknown)}: choose from {', '.join(PATHS)}")
    settings = load_settings(db_name=BENCH_DB)
    migrate(settings)
    rng = np.random.default_rng(11)
    records, vectors = make_records(args.rows, rng, prefix="bulk"), clustered_vectors(args.rows, rng)
    paths = {name: PATHS[name] for name in args.paths.split(",")}
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    with Database(settings) as db:
        for r in range(args.repeats):
            for name in list(paths)[r % 2 :] + list(paths)[: r % 2]:
                runs[name].append(measure(db, paths[name], records, vectors, args.batch))
                print(name, runs[name][-1], file=sys.stderr, flush=True)
    median = {name: statistics.median(m["rows_per_s"] for m in ms) for name, ms in runs.items()}
    out = {
        "rows": args.rows,
        "runs": runs,
        "median_rows_per_s": median,
        "ratios_to_first_path": {name: round(median[name] / median[list(paths)[0]], 2) for name in paths},
        "loader_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(out, indent=2))
    print(
        "\n| path | rows/s (each run) | median rows/s | rows / build phase s (each run) | graph MB "
        "| PG peak backend RSS MB | PG peak private MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, ms in runs.items():
        each = ", ".join(str(m["rows_per_s"]) for m in ms)
        phases = ", ".join(f"{m['rows_phase_s']} / {m['build_phase_s']}" for m in ms)
        last = ms[-1]
        print(
            f"| {name} | {each} | {median[name]:.0f} | {phases} | {last['graph_mb']} "
            f"| {last['postgres_peak_backend_rss_mb']} | {last['postgres_peak_private_mb']} |"
        )


if __name__ == "__main__":
    main()
