"""Ingest throughput with the BM25 postings triggers against the write path before them (GIN on chunks.tsv).

The whole ingest — list, parse, chunk, embed with the real model, store — of the same covid_qa documents,
through `tasks.ingest.run_ingest`, into a fresh tenant each time (so the embedding cache is empty and
the model runs), on database `sluice_storebench`. Each round takes the next `--block` documents and
ingests them four times: per write path (`bench.lexical_store.use`: `gin` = the triggers disabled and the
GIN index back, `postings` = the migrated schema) and per driver (`serial` = the whole batch embedded,
then stored, as before; `overlap` = stored group by group while the model embeds the next group,
`store_group_chunks` 64, the default), the order rotated between rounds: the timings of a round see the
same documents and nearly the same machine load. Ratios reported, medians over rounds (1.0 = no change):
- postings-overlap / gin-serial: what ships against the path before issue #17 (the bar is ≤ 1.05);
- postings-serial / gin-serial: the postings' own cost with the old driver;
- postings-overlap / gin-overlap: the postings' own cost with the new driver.

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
from tasks.ingest import Run, run_ingest

GROUPS = {"serial": 10**9, "overlap": 64}  # chunks per model call within a batch (10**9: the whole batch)
CASES = [(schema, driver) for schema in ("gin", "postings") for driver in GROUPS]


def ingest_block(db: Database, config: PipelineConfig, embedder, folder: Path, group: int = 64) -> tuple[float, int]:
    """Seconds to ingest `folder` into a fresh tenant, and the chunks stored."""
    tenant = f"ingest-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    t0 = time.perf_counter()
    summary = run_ingest(Run(db, tenant, config, embedder, 50_000_000, store_group_chunks=group), folder)
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
                for schema, driver in CASES[r % 4 :] + CASES[: r % 4]:
                    use(admin, schema)
                    row[f"{schema}-{driver}"], row["chunks"] = ingest_block(
                        db, config, embedder, folder, GROUPS[driver]
                    )
                out["rounds"].append(row)
                print(json.dumps(row), flush=True)
            use(admin, "postings")
    for a, b in (
        ("postings-overlap", "gin-serial"),
        ("postings-serial", "gin-serial"),
        ("postings-overlap", "gin-overlap"),
    ):
        ratios = [row[a] / row[b] for row in out["rounds"]]
        out[f"{a} / {b}"] = {
            "median": round(float(np.median(ratios)), 3),
            "total": round(sum(r[a] for r in out["rounds"]) / sum(r[b] for r in out["rounds"]), 3),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
