"""Prefect flow `ingest`: the ingest driver of `tasks.ingest` (`run_ingest`) with its steps as Prefect tasks.

list → prepare (parse + chunk, one task run per window of documents, `concurrency` at a time) → embed a
batch of chunks across documents in one model call → store each document in its own transaction → sync.
Only transient database errors are retried, with exponential backoff; a bad document is
recorded in `ingest_errors` and never retried. The run ends Completed, or Completed named
"Partial" when some documents failed (Failed when all did), with the summary as its message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.states import Completed, Failed, State
from prefect.tasks import exponential_backoff

from serving.shards import ingest_distributed
from sluice.config import load_config
from sluice.db import Database
from sluice.errors import ConfigError, DocumentError
from sluice.settings import load_settings
from tasks.embed import get_embedder
from tasks.graph import Graph
from tasks.ingest import (
    IngestSummary,
    Prepared,
    Run,
    SourceFile,
    Steps,
    begin,
    build_graph,
    flush,
    prepare_window,
    run_ingest,
    sync_deletions,
)
from tasks.ingest_served import ingest_served
from tasks.shards import RunState
from tasks.store import validate_collection

# Connection-level failures are worth retrying; everything else is a bug or a bad document.
TRANSIENT = (psycopg.OperationalError, psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
RETRIES = 4
# Documents per prepare task run, per concurrent worker thread.
WINDOW_PER_WORKER = 8


def retry_transient(task, task_run, state) -> bool:
    """Retry only when the task failed with a transient database error."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:
        return False
    return False


_retrying = {
    "retries": RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),  # 1, 2, 4, 8 s
    "retry_condition_fn": retry_transient,
    "cache_policy": NONE,  # inputs hold a pool and a model: nothing to hash, nothing to cache
}


@task(name="list-source", **_retrying)
def list_task(run: Run, source: str) -> list[SourceFile]:
    return begin(run, source)


@task(name="prepare-window", task_run_name="prepare {window[0].source_id} (+{extra})", **_retrying)
def prepare_task(run: Run, window: list[SourceFile], extra: int) -> list[Prepared | DocumentError | None]:
    """Parse and chunk a window of documents, `run.concurrency` at a time: one Prefect task run per window.

    A task run per document cost 1–2 s of orchestration each (measured, docs/benchmarks.md "Ingestion"),
    more than parsing and chunking; per-document outcomes are still recorded (ingest_errors, summary).
    A retried window re-prepares its documents, which is idempotent.
    """
    return prepare_window(run, window)


@task(name="embed-and-store", **_retrying)
def store_task(run: Run, batch: list[Prepared]) -> IngestSummary:
    # A private summary per attempt, merged by the flow: a retried batch is never counted twice.
    part = run.part()
    flush(part, batch)
    return part.summary


@task(name="sync-deletions", **_retrying)
def sync_task(run: Run, files: list[SourceFile]) -> int:
    return sync_deletions(run, files)


@task(name="build-graph", **_retrying)
def graph_task(run: Run) -> Graph:
    return build_graph(run)


def _prepare(run: Run, window: list[SourceFile]) -> list[Prepared | DocumentError | None]:
    return prepare_task(run, window, len(window) - 1)


def _store(run: Run, batch: list[Prepared]) -> None:
    run.summary.merge(store_task(run, batch))


# The driver's own steps (tasks/ingest.py), each run as a Prefect task.
FLOW_STEPS = Steps(listing=list_task, prepare=_prepare, store=_store, sync=sync_task, graph=graph_task)


@flow(name="ingest")
def ingest(
    source: str,
    tenant: str,
    config_path: str | None = None,
    sync: bool = False,
    concurrency: int | None = None,
    collection: str = "default",
    metadata: dict[str, Any] | None = None,
    shard_size: int | None = None,
) -> State:
    """Ingest every file of `source` into `tenant`'s served index (or, given `config_path`, that config's index).

    Without `config_path` (the deployments' default) the index is the one `sluice.served` names, the same
    one serving reads, and a switch during the run is followed (tasks/ingest_served.py). With it, the run
    builds an experiment's index, which is served only after a rollout or `sluice index activate`.
    `metadata` goes to every document of the run, under each document's own (manifest, sidecar, front matter).
    With `shard_size`, the run is distributed: shards of that many documents go to the ingest workers
    of the Celery `ingest` queue, on any number of hosts (serving/shards.py), each running the same driver.
    """
    settings = load_settings()
    width = concurrency or settings.ingest_concurrency
    if shard_size is not None:
        if config_path is not None:
            raise ConfigError("a distributed run (shard_size) builds the served index: drop config_path")
        if metadata is not None:
            raise ConfigError("a distributed run reads metadata from manifests and sidecars: drop metadata")
        state = distributed_task(settings, tenant, source, shard_size, sync, validate_collection(collection))
        return final_state(state.summary, ", ".join(state.index_ids) or "(none)")
    with Database(settings) as db:
        options = {"collection": validate_collection(collection), "metadata": metadata}
        run_once = _once(settings, db, tenant, source, sync, width, options)
        if config_path is None:
            served = ingest_served(settings, db, tenant, collection, run_once)
            return final_state(served.summary, served.index_id)
        pipeline = load_config(Path(config_path))
        summary = run_once(pipeline, get_embedder(pipeline.embedder, settings.embed_batch_size, settings.data_dir))
        get_run_logger().warning(
            "index %s of %s is an experiment: not served until rolled out", pipeline.index_id, config_path
        )
    return final_state(summary, pipeline.index_id)


@task(name="distributed-ingest", cache_policy=NONE)  # no retries: a second run would only find its documents stored
def distributed_task(settings, tenant: str, source: str, shard_size: int, sync: bool, collection: str) -> RunState:
    """Fan the source out in shards over the Celery ingest queue and wait for every shard (serving/shards.py)."""
    with Database(settings) as db:
        return ingest_distributed(settings, db, tenant, source, shard_size, sync=sync, collection=collection)


def _once(settings, db: Database, tenant: str, source: str, sync: bool, width: int, options: dict):
    """One pass over the source into one config's index: the ingest driver with its steps as Prefect tasks."""

    def once(pipeline, embedder) -> IngestSummary:
        size = width * WINDOW_PER_WORKER
        run = Run.configured(settings, db, tenant, pipeline, embedder, window=size, concurrency=width, **options)
        return run_ingest(run, source, sync=sync, steps=FLOW_STEPS)

    return once


def final_state(summary: IngestSummary, index_id: str) -> State:
    """Completed, Completed named "Partial", or Failed, with the counts as the message."""
    counts = ", ".join(f"{k} {getattr(summary, k)}" for k in ("ingested", "updated", "unchanged", "deleted", "failed"))
    message = f"index {index_id}: {counts}"
    get_run_logger().info("ingest summary: %s", message)
    if summary.truncated:
        get_run_logger().warning("%d chunk(s) exceed the embedder's window (set max_tokens: auto)", summary.truncated)
    if note := summary.graph_note(index_id):
        get_run_logger().warning(note)
    for err in summary.errors:
        get_run_logger().warning("failed: %s", err)
    data = {"index_id": index_id, **summary.as_dict()}
    if not summary.failed:
        return Completed(message=message, data=data)
    if summary.failed == summary.total:
        return Failed(message=f"every document failed; {message}", data=data)
    return Completed(name="Partial", message=f"{summary.failed} document(s) failed; {message}", data=data)
