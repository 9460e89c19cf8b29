"""Celery tasks `sluice.query` and `sluice.ingest`, run by `sluice worker`.

Each worker process builds its database pool and loads the embedder once (at process start,
through `worker_process_init`), never per task. The pipeline config is re-checked per task through
`serving.config_source.active_config`, so a new config is used without a restart.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery, Task
from celery.signals import worker_process_init, worker_process_shutdown
from psycopg_pool import PoolTimeout

from serving.cache import answer_cache_key, cache_put, corpus_version
from serving.celery_app import INGEST_TASK, QUERY_TASK, create_celery
from serving.config_source import active_config
from serving.embedding_cache import CachingEmbedder
from serving.stream import answer_pieces
from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.errors import DatabaseError, QueryError, SluiceError
from sluice.settings import Settings

log = logging.getLogger(__name__)

# Worth a retry with backoff: the database or its pool was briefly unreachable.
TRANSIENT = (psycopg.OperationalError, PoolTimeout, DatabaseError)
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 4,
}


class WorkerState:
    """Per-process resources: one database pool and one (cached) embedder per embedder config."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._db: Database | None = None
        self._embedders: dict[Any, CachingEmbedder] = {}
        self.pid = os.getpid()

    @property
    def db(self) -> Database:
        if self._db is None or self.pid != os.getpid():  # never reuse a pool across fork
            self.pid, self._db = os.getpid(), Database(self.settings)
        return self._db

    def embedder(self, config: PipelineConfig) -> CachingEmbedder:
        from tasks.embed import get_embedder

        if config.embedder not in self._embedders:
            inner = get_embedder(config.embedder, self.settings.embed_batch_size)
            inner.warm_up()
            inner.encode(["warm up"])  # first encode pays one-off runtime set-up; not a user's query
            self._embedders[config.embedder] = CachingEmbedder(inner)
        return self._embedders[config.embedder]

    def warm_up(self) -> None:
        """Load the active config's embedder and open the pool (called once per worker process)."""
        import torch

        # Parallelism comes from worker processes; several intra-op threads per process on shared
        # cores spin against each other (measured: one question took 200-600 ms instead of ~20 ms).
        torch.set_num_threads(self.settings.worker_torch_threads)
        self.embedder(active_config(self.settings, self.db))
        self.db.pool  # noqa: B018 - open the pool now rather than on the first task
        log.warning("worker process warm: pid %s, embedder loaded", os.getpid())

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _error(exc: SluiceError) -> dict:
    return {"error": {"type": type(exc).__name__, "message": str(exc)}}


def result_json(result, tier: str, version: int) -> dict:
    """The wire form of a `QueryResult`."""
    return {
        "answer": result.answer.text,
        "citations": [
            {"document": c.source_id, "document_id": c.document_id, "span": [c.start, c.end], "score": c.score}
            for c in result.answer.citations
        ],
        "config_id": result.config_id,
        "index_id": result.index_id,
        "model_tier": tier,
        "corpus_version": version,
        "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
    }


def run_query(state: WorkerState, task: Task | None, payload: dict) -> dict:
    """Answer one query for one tenant and fill the answer cache."""
    from tasks.answer import answer_question

    t0 = time.perf_counter()
    tenant, question = payload["tenant"], payload["question"]
    config = active_config(state.settings, state.db)
    embedder = state.embedder(config)
    with state.db.tenant(tenant) as conn:
        version = corpus_version(conn)  # read before retrieval: a concurrent ingest bumps past this entry
    extra = {k: payload[k] for k in ("filters", "collection") if payload.get(k) is not None}
    unsupported = set(extra) - set(inspect.signature(answer_question).parameters)
    if unsupported:
        raise QueryError(f"{', '.join(sorted(unsupported))} not supported by this server's retrieval: omit them")
    result = answer_question(state.db, tenant, config, embedder, question, **extra)
    response = result_json(result, config.routing.tier, version)
    if task is not None and payload.get("stream"):
        _stream(task, response["answer"])
    if state.settings.answer_cache:
        key = answer_cache_key(question, payload.get("filters"), payload.get("collection"), config.config_id, version)
        with state.db.tenant(tenant) as conn:
            cache_put(conn, tenant, key, response)
    response["timings_ms"]["worker_total"] = round((time.perf_counter() - t0) * 1000, 3)
    return response


def _stream(task: Task, answer: str) -> None:
    # The extractive generator yields whole cited sentences; each piece is published through the
    # result backend (so streaming works with both brokers); an LLM generator would publish tokens here.
    pieces = answer_pieces(answer)
    for n in range(1, len(pieces) + 1):
        task.update_state(state="STREAMING", meta={"tokens": pieces[:n]})


def run_ingest(state: WorkerState, payload: dict) -> dict:
    """Ingest a validated source (a folder under the allowed root, or an upload folder)."""
    from tasks.ingest import ingest_source

    config = active_config(state.settings, state.db)
    embedder = state.embedder(config)
    summary = ingest_source(
        state.db, payload["tenant"], config, embedder.inner, payload["source"], state.settings.max_file_bytes
    )
    if payload.get("cleanup"):
        _remove_tree(Path(payload["source"]))
    fields = ("run_id", "ingested", "updated", "unchanged", "deleted", "failed", "chunks", "embedded")
    out = {f: getattr(summary, f) for f in fields}
    return {**out, "index_id": config.index_id, "errors": [str(e) for e in summary.errors]}


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


def register_tasks(app: Celery, state: WorkerState) -> None:
    """Register the two tasks on `app`, bound to this process's `state`."""

    # Idempotent (reads, plus a cache write keyed by content): safe to redeliver if a worker dies.
    @app.task(
        name=QUERY_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        soft_time_limit=60,
        time_limit=90,
        **RETRY,
    )
    def query(self: Task, payload: dict) -> dict:
        try:
            return run_query(state, self, payload)
        except SluiceError as exc:
            if isinstance(exc, DatabaseError):
                raise
            return _error(exc)

    # Idempotent too (unchanged documents are skipped by content hash), so acks_late; but not
    # reject_on_worker_lost: a document that kills its worker (OOM in a parser) must not loop forever.
    @app.task(
        name=INGEST_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=False,
        soft_time_limit=1800,
        time_limit=1900,
        **RETRY,
    )
    def ingest(self: Task, payload: dict) -> dict:
        try:
            return run_ingest(state, payload)
        except SluiceError as exc:
            if isinstance(exc, DatabaseError):
                raise
            return _error(exc)


def create_worker_app(settings: Settings) -> Celery:
    """The Celery app with tasks registered and per-process start-up and shut-down hooks."""
    app = create_celery(settings)
    state = WorkerState(settings)
    register_tasks(app, state)
    worker_process_init.connect(lambda **_: state.warm_up(), weak=False)
    worker_process_shutdown.connect(lambda **_: state.close(), weak=False)
    return app
