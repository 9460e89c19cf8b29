"""Ingest throughput with the BM25 postings triggers against the write path before them (GIN on chunks.tsv).

The whole ingest — list, parse, chunk, embed with the real model, store — of the same covid_qa documents,
through `tasks.ingest.ingest_source`, into a fresh tenant each time (so the embedding cache is empty and
the model runs), on database `sluice_storebench`. Each round takes the next `--block` documents and
ingests them twice, once per write path (`bench.lexical_store.use`: `gin` = the triggers disabled and the
GIN index back, `postings` = the migrated schema), the order alternating between rounds: the two
timings of a round see the same documents and nearly the same machine load. The ratio reported is the
median over rounds of postings / gin (1.0 = no change; the bar is ≤ 1.05).

    SLUICE_DATASETS_DIR=... PYTHONPATH=$PWD .venv/bin/python bench/lexical_ingest.py [--rounds 4] [--block 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg

from bench.lexical_store import use
from bench.paths import write_covid_txt
from sluice.config import PipelineConfig
from sluice.db import Database, admin_conninfo, create_tenant, migrate
from sluice.settings import load_settings
from tasks.embed import get_embedder
from tasks.ingest import ingest_source


def ingest_block(db: Database, config: PipelineConfig, embedder, folder: Path) -> tuple[float, int]:
    """Seconds to ingest `folder` into a fresh tenant, and the chunks stored."""
    tenant = f"ingest-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    t0 = time.perf_counter()
    summary = ingest_source(db, tenant, config, embedder, folder, 50_000_000)
    seconds = time.perf_counter() - t0
    assert summary.failed == 0, summary.errors[:3]
    return seconds, summary.chunks


def blocks(root: Path, rounds: int, size: int) -> list[Path]:
    """`rounds` folders of `size` covid_qa documents each (different documents per round)."""
    paths = write_covid_txt(root / "all", rounds * size)
    folders = []
    for r in range(rounds):
        folder = root / f"block{r}"
        folder.mkdir()
        for path in paths[r * size : (r + 1) * size]:
            (folder / path.name).write_text(path.read_text())
        folders.append(folder)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--block", type=int, default=8, help="documents per round")
    args = parser.parse_args()
    settings = load_settings(db_name="sluice_storebench")
    migrate(settings)
    config = PipelineConfig()
    embedder = get_embedder(config.embedder, settings.embed_batch_size, settings.data_dir)
    embedder.encode(["warm the model up"])
    out: dict = {"rounds": []}
    with tempfile.TemporaryDirectory() as tmp, Database(settings) as db:
        with psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:
            folders = blocks(Path(tmp), args.rounds, args.block)
            ingest_block(db, config, embedder, folders[0])  # untimed: the parser's and the pool's first use
            for r, folder in enumerate(folders):
                row = {}
                for schema in ("gin", "postings") if r % 2 == 0 else ("postings", "gin"):
                    use(admin, schema)
                    row[schema], row["chunks"] = ingest_block(db, config, embedder, folder)
                out["rounds"].append(row)
                print(json.dumps(row), flush=True)
            use(admin, "postings")
    ratios = [row["postings"] / row["gin"] for row in out["rounds"]]
    out["postings_vs_gin_median_ratio"] = float(np.median(ratios))
    out["postings_vs_gin_total_ratio"] = sum(r["postings"] for r in out["rounds"]) / sum(
        r["gin"] for r in out["rounds"]
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
