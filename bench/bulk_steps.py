"""The steps of one bulk load timed one by one, with the lexical postings trigger on or bypassed.

    PYTHONPATH=$PWD .venv/bin/python bench/bulk_steps.py [--rows 10000] [--order trigger,set-based,set-based,trigger]

Each run loads the synthetic corpus (bench/synthetic.py) into a new tenant and index id of database
`sluice_bench_bulk`, in one transaction as the app role (the statements of `tasks.records.store_records`),
then builds the graph (`tasks.bulk.build_vector_index`). `set-based` disables the statement trigger
`chunks_lexical_insert` as the admin role for the run (a measurement only: the product keeps the trigger,
docs/benchmarks.md "Bulk load", session 8) and writes the postings in one sorted INSERT ... SELECT from the
new chunks instead. Prints each run's seconds per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.synthetic import DIM, clustered_vectors, make_records  # noqa: E402
from sluice.config import EmbedderConfig, PipelineConfig  # noqa: E402
from sluice.db import Database, admin_conninfo, create_tenant, migrate  # noqa: E402
from sluice.settings import Settings, load_settings  # noqa: E402
from tasks import records as R  # noqa: E402
from tasks.bulk import build_vector_index  # noqa: E402
from tasks.embed import EmbedderIdentity  # noqa: E402
from tasks.store import register_index  # noqa: E402

POSTINGS = (
    "INSERT INTO lexical_postings (tenant_id, index_id, term, chunk_id, tf, dl) "
    "SELECT c.tenant_id, c.index_id, l.term, c.chunk_id, l.tf, l.dl FROM chunks c, lexical_terms(c.tsv) l "
    "WHERE c.index_id = %s ORDER BY 1, 2, 3, 4"
)
COPY = "COPY record_stage (source_id, text, metadata, chunk_metadata, collection, dim, embedding) FROM STDIN"


@contextmanager
def trigger_bypassed(settings: Settings, bypass: bool):
    """Disable the postings insert trigger for the block (admin role), when `bypass`."""
    statement = "ALTER TABLE chunks {} TRIGGER chunks_lexical_insert"
    if bypass:
        with psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
            admin.execute(statement.format("DISABLE"))
    try:
        yield
    finally:
        if bypass:
            with psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
                admin.execute(statement.format("ENABLE"))


def stage(conn: psycopg.Connection, records, vectors) -> None:
    conn.execute(R._STAGE)
    with conn.cursor().copy(COPY + " (FORMAT BINARY)") as copy:
        copy.set_types(["text", "text", "jsonb", "jsonb", "text", "int4", "vector"])
        for rec, vec in zip(records, vectors, strict=True):
            meta, chunk_meta = Jsonb(rec.metadata), Jsonb(rec.chunk_metadata)
            copy.write_row((rec.source_id, rec.text, meta, chunk_meta, rec.collection, len(vec), vec))


def load(db: Database, settings: Settings, mode: str, records, vectors) -> dict[str, float]:
    """One load along `mode` (trigger | set-based); seconds per step."""
    tenant, model = f"steps-{uuid.uuid4().hex[:8]}", f"steps-{uuid.uuid4().hex[:8]}"
    config = PipelineConfig(embedder=EmbedderConfig(model=model, dim=DIM, precision="float32"))
    create_tenant(db, tenant)
    steps: dict[str, float] = {}
    with trigger_bypassed(settings, mode == "set-based"), db.tenant(tenant) as conn:
        register_index(conn, config, EmbedderIdentity(model, "0" * 64, DIM, True), vector_index=False)
        params = {"index_id": config.index_id}
        work = [("copy", lambda: stage(conn, records, vectors)), ("documents", lambda: conn.execute(R._DOCS))]
        work += [
            ("chunks", lambda: conn.execute(R._CHUNKS, params)),
            ("indexed", lambda: conn.execute(R._INDEXED, params)),
        ]
        if mode == "set-based":
            work.append(("postings", lambda: conn.execute(POSTINGS, (config.index_id,))))
        for name, step in work:
            start = time.perf_counter()
            step()
            steps[name] = round(time.perf_counter() - start, 2)
    with db.tenant(tenant) as conn:
        start = time.perf_counter()
        build_vector_index(conn, config.index_id, len(records), DIM)
        steps["build"] = round(time.perf_counter() - start, 2)
    return steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--order", default="trigger,set-based,set-based,trigger")
    args = ap.parse_args()
    if set(args.order.split(",")) - {"trigger", "set-based"}:
        ap.error("--order takes trigger and set-based, comma-separated")
    settings = load_settings(db_name="sluice_bench_bulk")
    migrate(settings)
    rng = np.random.default_rng(11)
    records, vectors = make_records(args.rows, rng, prefix="steps"), clustered_vectors(args.rows, rng)
    with Database(settings) as db:
        for mode in args.order.split(","):
            steps = load(db, settings, mode, records, vectors)
            rows_s = sum(v for k, v in steps.items() if k != "build")
            print(json.dumps({"mode": mode, "steps_s": steps, "rows_phase_s": round(rows_s, 2)}), flush=True)


if __name__ == "__main__":
    main()
