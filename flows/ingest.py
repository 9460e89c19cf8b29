"""Prefect flow `ingest`: a thin shell that runs `tasks.ingest` with retries on transient errors."""

from __future__ import annotations

from pathlib import Path

import psycopg
from prefect import flow, get_run_logger, task

from sluice.config import load_config
from sluice.db import Database
from sluice.settings import load_settings
from tasks.embed import get_embedder
from tasks.ingest import IngestSummary, ingest_source

# Only connection-level failures are worth retrying; bad documents are recorded, not retried.
TRANSIENT = (psycopg.OperationalError, psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:
        return False
    return False


@task(retries=4, retry_delay_seconds=[1, 2, 4, 8], retry_condition_fn=_retry_transient)
def ingest_task(source: str, tenant: str, config_path: str | None) -> dict:
    settings = load_settings()
    pipeline = load_config(Path(config_path) if config_path else settings.config_path)
    embedder = get_embedder(pipeline.embedder, settings.embed_batch_size)
    with Database(settings) as db:
        summary: IngestSummary = ingest_source(db, tenant, pipeline, embedder, source, settings.max_file_bytes)
    return {
        "run_id": summary.run_id,
        "index_id": pipeline.index_id,
        "ingested": summary.ingested,
        "updated": summary.updated,
        "unchanged": summary.unchanged,
        "failed": summary.failed,
        "chunks": summary.chunks,
        "errors": [str(e) for e in summary.errors],
    }


@flow(name="ingest")
def ingest(source: str, tenant: str, config_path: str | None = None) -> dict:
    """Ingest every file of `source` into `tenant`'s index for the given pipeline config."""
    result = ingest_task(source, tenant, config_path)
    get_run_logger().info("ingest summary: %s", {k: v for k, v in result.items() if k != "errors"})
    return result
