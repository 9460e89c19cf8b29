"""Celery tasks `sluice.query` and `sluice.ingest`, run by `sluice worker`.

Each worker process builds its database pool, loads the embedder and builds the config's `Answerer`
(router + generator, with the LLM gateway's state shared through Redis when
`SLUICE_ROUTING_STATE_URL` is set) once (at process start, through `worker_process_init`), never per
task. Each task asks `serving.config_source.served_config` which config and index serve its tenant, so
a rollout's switch, a promotion or a rollback is used without a restart; a query is embedded with the
embedder of the index it reads.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from billiard.common import TERM_SIGNAL
from celery import Celery, Task, states
from celery.signals import setup_logging, task_postrun, task_prerun, worker_process_init, worker_process_shutdown
from psycopg_pool import PoolTimeout

from serving.answers import answer_id_for, store_answer
from serving.cache import answer_cache_key, cache_put
from serving.celery_app import INGEST_QUEUE, INGEST_TASK, QUERY_QUEUE, QUERY_TASK, SHARD_TASK, create_celery
from serving.config_source import active_config, served_config
from serving.deadletter import record, record_failures
from serving.embedding_cache import CachingEmbedder
from serving.heartbeat import heartbeat_step
from serving.jobs import mark_finished, tenant_of
from serving.outcome import TaskOutcome
from serving.poison import check_payload, guarded_strategy
from serving.search import run_search
from serving.upload_store import discard, fetch, is_upload_ids, upload_store
from sluice import logs, metrics, tracing
from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.errors import DatabaseError, QueryError, SluiceError
from sluice.metrics import REQUEST_ID_HEADER, TRACE_ID_HEADER
from sluice.settings import Settings

if TYPE_CHECKING:
    from tasks.routed import Answerer

log = logging.getLogger(__name__)

# Worth a retry with backoff: the database or its pool was briefly unreachable. Not every
# OperationalError is that: libpq refuses a statement of over 65,535 parameters the same way every
# time (`_counted` answers it as a refused query instead).
TRANSIENT = (psycopg.OperationalError, PoolTimeout, DatabaseError)
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
}
# A query past its soft limit gets SoftTimeLimitExceeded; past the hard one its process is replaced.
QUERY_SOFT_LIMIT_S, QUERY_LIMIT_S = 60, 90
TOO_MANY_PARAMETERS = "number of parameters must be between 0 and 65535"
# Tenants on different configs (during a rollout) each keep their answerer instead of rebuilding it per query.
MAX_ANSWERERS = 4
# Each publish rewrites the whole list of pieces in the result backend: coalesce tokens that
# arrive closer together than this (an LLM can emit hundreds per second).
PUBLISH_INTERVAL_S = 0.02


class WorkerState:
    """Per-process resources: a database pool, a (cached) embedder per embedder config, the config's Answerer."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._db: Database | None = None
        self._embedders: dict[Any, CachingEmbedder] = {}
        self._answerers: dict[str, Answerer] = {}
        self._gateway_state: Any = None
        self.uploads = upload_store(settings)
        self.pid = os.getpid()

    @property
    def db(self) -> Database:
        if self._db is None or self.pid != os.getpid():  # never reuse a pool across fork
            self.pid, self._db = os.getpid(), Database(self.settings)
        return self._db

    def embedder(self, config: PipelineConfig) -> CachingEmbedder:
        from tasks.embed import get_embedder

        if config.embedder not in self._embedders:
            inner = get_embedder(config.embedder, self.settings.embed_batch_size, self.settings.data_dir)
            inner.warm_up()
            inner.encode(["warm up"])  # first encode pays one-off runtime set-up; not a user's query
            self._embedders[config.embedder] = CachingEmbedder(inner)
        return self._embedders[config.embedder]

    def answerer(self, config: PipelineConfig) -> Answerer:
        """The config's router and generator, built once; the least recently used of too many is closed."""
        from tasks.llm.state import make_state
        from tasks.routed import answerer_for

        if config.config_id not in self._answerers:
            while len(self._answerers) >= MAX_ANSWERERS:
                self._answerers.pop(next(iter(self._answerers))).close()
            if self._gateway_state is None:
                self._gateway_state = make_state(self.settings.routing_state_url)
            self._answerers[config.config_id] = answerer_for(
                self.settings, config, self.embedder(config), self._gateway_state
            )
        self._answerers[config.config_id] = self._answerers.pop(config.config_id)  # most recently used last
        return self._answerers[config.config_id]

    def warm_up(self) -> None:
        """Load the active config's embedder and open the pool (called once per worker process)."""
        import torch

        # Parallelism comes from worker processes; several intra-op threads per process on shared
        # cores spin against each other (measured: one question took 200-600 ms instead of ~20 ms).
        torch.set_num_threads(self.settings.worker_torch_threads)
        config = active_config(self.settings, self.db)
        self.embedder(config)
        try:
            self.answerer(config)
        except SluiceError as exc:  # e.g. a classifier file missing: each query reports it, the worker lives
            log.error("cannot build the answerer of config %s: %s", config.config_id, exc)
        self.db.pool  # noqa: B018 - open the pool now rather than on the first task
        if self.settings.worker_warm_parser:
            from tasks.parse_limits import ParseLimits
            from tasks.parse_process import parse_pool

            try:
                parse_pool(ParseLimits.from_settings(self.settings)).warm()
            except SluiceError as exc:  # the parser cannot start: each ingest task reports it, queries go on
                log.error("cannot start the parse process: %s", exc)
        log.warning("worker process warm: pid %s, embedder loaded", os.getpid())

    def close(self) -> None:
        for answerer in self._answerers.values():
            answerer.close()
        self._answerers.clear()
        if self._db is not None:
            self._db.close()
            self._db = None


def run_query(state: WorkerState, task: Task | None, payload: dict) -> dict:
    """Answer one query for one tenant and fill the answer cache."""
    from tasks.answer import answer_question

    t0 = time.perf_counter()
    check_payload(payload, query=True)  # the API's own model and filter limits, before any work
    if payload.get("search") is not None:  # a search (MCP `search`): chunks, no answer
        return run_search(state, payload)
    tenant, question = payload["tenant"], payload["question"]
    filters, collection = payload.get("filters"), payload.get("collection")
    # Config, index and corpus version in one snapshot (one pipelined round trip), before retrieval: a switch
    # or ingest after it bumps the version past the entry cached below. An unknown tenant reads version 0
    # here and is refused by answer_question's own tenant check.
    served = served_config(state.settings, state.db, tenant, collection)
    config, version = served.config, served.version
    logs.bind(config_id=config.config_id)
    embedder = state.embedder(config)  # the served index's embedder
    publish = StreamPublisher(task) if task is not None and payload.get("stream") else None
    answerer = state.answerer(config)
    result = answer_question(
        state.db,
        tenant,
        config,
        embedder,
        question,
        filters=filters,
        collection=collection,
        answerer=answerer,
        on_piece=publish,
    )
    job_id = task.request.id if task is not None else None
    response = {"answer_id": answer_id_for(job_id), **result.to_json(), "corpus_version": version}
    observe_answer(tenant, result)
    _record(state, job_id, payload, response, served.key_config_id)
    response["timings_ms"]["worker_total"] = round((time.perf_counter() - t0) * 1000, 3)
    log.info("query answered", extra={"tier": result.answer.tier, "ms": response["timings_ms"]["worker_total"]})
    return response


def _record(state: WorkerState, job_id: str | None, payload: dict, response: dict, key_config_id: str) -> None:
    """Store the answer's record and, if caching, the cache entry that names it, in one transaction."""
    tenant = payload["tenant"]
    with state.db.tenant(tenant) as conn:
        store_answer(conn, tenant, job_id, payload, response)
        if state.settings.answer_cache:
            # The API looks entries up under the global champion's config id (it does not resolve tenants).
            key = answer_cache_key(
                payload["question"],
                payload.get("filters"),
                payload.get("collection"),
                key_config_id,
                response["corpus_version"],
            )
            cache_put(conn, tenant, key, response)


def observe_answer(tenant: str, result) -> None:
    """Per-answer metrics: stage latencies, tier chosen, tokens, cost, generation speed."""
    for stage in ("embed", "retrieve", "generate"):
        if stage in result.timings_ms:
            metrics.STAGE.labels(stage).observe(result.timings_ms[stage] / 1000)
    answer, label = result.answer, metrics.tenant(tenant)
    metrics.ROUTER.labels(answer.tier).inc()
    metrics.TOKENS.labels(label, answer.model, "prompt").inc(answer.usage.prompt_tokens)
    metrics.TOKENS.labels(label, answer.model, "completion").inc(answer.usage.completion_tokens)
    metrics.COST.labels(label, answer.model).inc(answer.cost_usd)
    if answer.tokens_per_s is not None:
        metrics.TOKENS_PER_S.labels(answer.model).observe(answer.tokens_per_s)
    metrics.GEN_TTFT.labels(answer.model).observe(answer.ttft_ms / 1000)


@contextmanager
def traced(task: Task, name: str, queue: str) -> Iterator[None]:
    """The task as a span of the API request's trace, preceded by a `queue` span for its wait.

    Queue wait is the API's enqueue header to now (wall clocks of one host, or NTP-synchronised hosts).
    """
    carrier = {"traceparent": getattr(task.request, "traceparent", None) or ""}
    enqueued = getattr(task.request, metrics.ENQUEUED_AT, None)
    now = time.time()
    with tracing.continued(carrier, name, **{"sluice.queue": queue, "sluice.job_id": task.request.id or ""}):
        if enqueued is not None:
            metrics.QUEUE_WAIT.labels(queue).observe(max(0.0, now - float(enqueued)))
            span = tracing.tracer().start_span("queue", start_time=int(float(enqueued) * 1e9))
            span.end(end_time=max(int(now * 1e9), int(float(enqueued) * 1e9)))
        logs.bind(trace_id=tracing.trace_id())
        yield


class StreamPublisher:
    """Publish the generator's text pieces through the result backend as they arrive (works with both brokers).

    The API's SSE stream reads them as `token` events; pieces still unpublished when the task ends
    reach it with the final result.
    """

    def __init__(self, task: Task):
        self.task = task
        self.pieces: list[str] = []
        self.last = 0.0

    def __call__(self, piece: str) -> None:
        self.pieces.append(piece)
        if time.monotonic() - self.last >= PUBLISH_INTERVAL_S:
            self.task.update_state(state="STREAMING", meta={"tokens": self.pieces})
            self.last = time.monotonic()


@contextmanager
def ingest_target(state: WorkerState, payload: dict) -> Iterator[tuple[Path, Path | None]]:
    """What to ingest, and the folder no file may be read outside of (None: a folder of this worker's own).

    Uploads are fetched by id from the upload store, and a remote source (s3://...) is downloaded, into a
    temporary folder of this worker, removed on exit. A named source is resolved again here, under this
    worker's SLUICE_INGEST_ROOT: the folder may have changed since the API accepted the job, and the API
    host may mount the root at another path.
    """
    from sluice.confine import resolve_source, tenant_folder
    from sluice.objects import download_tree

    settings, tenant = state.settings, payload["tenant"]
    if payload.get("uploads") is not None:
        with tempfile.TemporaryDirectory(prefix="sluice-upload-") as scratch:
            fetch(state.db, state.uploads, tenant, payload["uploads"], Path(scratch))
            yield Path(scratch), None
        return
    target = resolve_source(settings, tenant, payload["source"])
    if isinstance(target, str):  # a URL below the tenant's prefix of SLUICE_INGEST_URL
        with tempfile.TemporaryDirectory(prefix="sluice-source-") as scratch:
            download_tree(settings, target, Path(scratch), settings.max_file_bytes)
            yield Path(scratch), None
        return
    yield target, tenant_folder(settings.ingest_root, tenant)


def run_ingest(state: WorkerState, payload: dict) -> dict:
    """Ingest a named source (confined to the tenant's folder) or a job's uploads into the served index."""
    from tasks.ingest import ingest_source
    from tasks.ingest_served import ingest_served
    from tasks.parse_limits import ParseLimits

    check_payload(payload, query=False)
    settings = state.settings
    limits = ParseLimits.from_settings(settings)
    tenant = payload["tenant"]
    with ingest_target(state, payload) as (source, folder):

        def once(config: PipelineConfig, embedder) -> Any:
            logs.bind(config_id=config.config_id)
            cap = settings.max_file_bytes
            options = {"parse_limits": limits, "confine_to": folder, "metadata": payload.get("metadata")}
            return ingest_source(state.db, tenant, config, embedder, source, cap, **options)

        served = ingest_served(settings, state.db, tenant, "default", once)
    summary = served.summary
    log.info("ingest finished", extra={"documents": summary.ingested, "chunks": summary.chunks})
    fields = ("run_id", "ingested", "updated", "unchanged", "deleted", "failed", "chunks", "embedded", "truncated")
    out = {f: getattr(summary, f) for f in fields}
    for outcome in ("ingested", "updated", "unchanged", "deleted", "failed"):
        metrics.INGEST_DOCS.labels(outcome).inc(out[outcome])
    metrics.INGEST_CHUNKS.inc(summary.chunks)
    metrics.INGEST_ERRORS.inc(len(summary.errors))
    return {**out, "index_id": served.index_id, "errors": [str(e) for e in summary.errors]}


def discard_uploads(state: WorkerState, task: Task | None, args: Any, task_state: str | None) -> None:
    """After an ingest job finished with a result (ingested, or refused as bad input): delete its uploads.

    A job that failed (FAILURE: a dead letter) keeps them until SLUICE_UPLOAD_RETENTION_H, so that
    `sluice jobs retry` can replay it; a retry keeps them too. A failed delete is left to that sweep.
    """
    payload = args[0] if isinstance(args, (list, tuple)) and args else None
    if task is None or task.name != INGEST_TASK or task_state != states.SUCCESS or not isinstance(payload, dict):
        return
    tenant, ids = tenant_of(payload), payload.get("uploads")
    if tenant is None or not is_upload_ids(ids):
        return
    try:
        discard(state.db, state.uploads, tenant, ids)
    except Exception as exc:  # noqa: BLE001 - the job is done; the sweep deletes what is left
        log.warning("uploads of job %s not deleted (the sweep will): %s", task.request.id, exc)


# Idempotent (reads, plus a cache write keyed by content): safe to redeliver if a worker dies:
# re-sent at once (retry_on_worker_lost), counted against max_retries; requeued as before only if
# that re-send fails. No STARTED state (task_track_started is for ingest): a query runs for tens of
# milliseconds, and the extra read and write of the result key (plus a wake-up of the waiting API)
# cost ~1 ms of each.
QUERY_OPTIONS = {
    "name": QUERY_TASK,
    "track_started": False,
    "acks_late": True,
    "retry_on_worker_lost": True,
    "reject_on_worker_lost": True,
    "default_retry_delay": 0,
    "soft_time_limit": QUERY_SOFT_LIMIT_S,
    "time_limit": QUERY_LIMIT_S,
}
# Idempotent too (each document is stored in one transaction; unchanged ones are skipped by
# content hash), so a lost worker's ingest is retried on another process, but counted against
# max_retries: a document that kills every worker it meets (OOM in a parser) fails the job, not loops.
INGEST_OPTIONS = {
    "name": INGEST_TASK,
    "acks_late": True,
    "retry_on_worker_lost": True,
    "default_retry_delay": 1,  # the delay of a retry after a lost worker
    "soft_time_limit": 1800,
    "time_limit": 1900,
}

# A shard of a distributed run (serving/shards.py): idempotent by its ledger (a redelivered shard skips the
# documents already settled, and fences out the attempt it replaces), so acks_late as for ingest.
SHARD_OPTIONS = {**INGEST_OPTIONS, "name": SHARD_TASK}


def common_options(settings: Settings) -> dict:
    """Both tasks' options: retries with backoff, and the guard that turns a poison message into a dead letter."""
    # The main process measures each message before a pool process is handed it, and a task that fails
    # on its last attempt (SLUICE_TASK_MAX_RETRIES) is a dead letter, not a loop.
    return {
        **RETRY,
        "bind": True,
        "max_retries": settings.task_max_retries,
        # staticmethod: Celery reads it as a class attribute and calls it with (task, app, consumer).
        "Strategy": staticmethod(guarded_strategy(lambda letter: record(settings, letter))),
    }


def register_tasks(app: Celery, state: WorkerState) -> None:
    """Register the tasks (query, ingest, ingest shard) on `app`, bound to this process's `state`."""
    common = common_options(state.settings)

    @app.task(**QUERY_OPTIONS, **common)
    def query(self: Task, payload: dict) -> dict:
        with traced(self, QUERY_TASK, QUERY_QUEUE):
            return _counted(QUERY_TASK, lambda: run_query(state, self, payload))

    @app.task(**INGEST_OPTIONS, **common)
    def ingest(self: Task, payload: dict) -> dict:
        with traced(self, INGEST_TASK, INGEST_QUEUE):
            return _counted(INGEST_TASK, lambda: run_ingest(state, payload))

    @app.task(**SHARD_OPTIONS, **common)
    def ingest_shard(self: Task, payload: dict) -> dict:
        from serving.shards import run_shard

        with traced(self, SHARD_TASK, INGEST_QUEUE):
            return _counted(SHARD_TASK, lambda: run_shard(state.settings, state.db, payload))


def _counted(task: str, work) -> dict:
    """Run a task body: its value, or our error, as a `TaskOutcome` on the wire; every outcome is counted."""
    try:
        out = work()
    except SluiceError as exc:
        if isinstance(exc, DatabaseError):
            metrics.TASKS.labels(task, "retry").inc()
            raise
        metrics.TASKS.labels(task, "error").inc()
        return TaskOutcome.failed(exc).to_wire()
    except psycopg.OperationalError as exc:
        if TOO_MANY_PARAMETERS not in str(exc):
            metrics.TASKS.labels(task, "failed").inc()
            raise
        metrics.TASKS.labels(task, "error").inc()
        refused = QueryError("the query needs more than 65,535 SQL parameters: narrow its filters")
        return TaskOutcome.failed(refused).to_wire()
    except Exception:
        metrics.TASKS.labels(task, "failed").inc()
        raise
    metrics.TASKS.labels(task, "ok").inc()
    return TaskOutcome.ok(out).to_wire()


def _process_init(settings: Settings, state: WorkerState) -> None:
    tracing.setup_tracing(settings, "sluice-worker")  # after fork: exporter threads do not survive one
    state.warm_up()


def _process_shutdown(state: WorkerState) -> None:
    """Leave this pool process: ignore the pool's stop signal from now on, then close its resources."""
    # Next billiard posts this process's DEATH note under the pool's shared result-queue lock, with the
    # stop signal blocked in this thread only, and the parent answers DEATH with that signal. Our
    # other threads (psycopg pool, exporters) do not block it, so it could kill this process mid-write
    # with the lock held: the parent's shutdown then waits on the lock forever (the blocking pool of
    # the embedded-Postgres broker). Ignored, the process ends by billiard's os._exit a second later.
    signal.signal(TERM_SIGNAL, signal.SIG_IGN)
    state.close()


def _bind_task_context(task: Task, args: tuple = (), **_: Any) -> None:
    """Each task logs with the request id and trace id the API put in its message headers."""
    payload = args[0] if args and isinstance(args[0], dict) else {}
    logs.start(
        request_id=getattr(task.request, REQUEST_ID_HEADER, None),
        trace_id=getattr(task.request, TRACE_ID_HEADER, None),
        tenant=payload.get("tenant"),
    )


def create_worker_app(settings: Settings) -> Celery:
    """The Celery app with tasks registered and per-process start-up and shut-down hooks."""
    app = create_celery(settings)
    metrics.configure(settings)
    state = WorkerState(settings)
    register_tasks(app, state)
    record_failures(settings)
    app.steps["consumer"].add(heartbeat_step(settings))
    worker_process_init.connect(lambda **_: _process_init(settings, state), weak=False)
    # Connecting setup_logging makes Celery leave logging to us: JSON lines from every process.
    setup_logging.connect(lambda loglevel=None, **_: logs.configure_logging(settings, loglevel), weak=False)
    task_prerun.connect(_bind_task_context, weak=False)
    task_postrun.connect(lambda **_: logs.start(), weak=False)
    # After the result is stored (the caller has its answer): one pipelined round trip per finished task.
    task_postrun.connect(
        lambda **kw: mark_finished(state.db, kw.get("task_id"), kw.get("args"), kw.get("state")), weak=False
    )
    task_postrun.connect(
        lambda **kw: discard_uploads(state, kw.get("task"), kw.get("args"), kw.get("state")), weak=False
    )
    worker_process_shutdown.connect(lambda **_: _process_shutdown(state), weak=False)
    return app
