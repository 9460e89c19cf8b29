"""Putting work on the queues: capacity checks, the job record, the message, and waiting for its result."""

from __future__ import annotations

import time
import uuid

from celery import states
from psycopg.types.json import Jsonb

from serving.api.errors import ApiError
from serving.api.state import ApiState
from serving.celery_app import INGEST_QUEUE, QUERY_TASK
from serving.outcome import TaskError, TaskOutcome
from sluice import logs, metrics, tracing
from sluice.settings import Settings


def queue_limit(settings: Settings, queue: str) -> int:
    """Waiting messages a queue may hold before new work for it is refused with 503."""
    # Ingest jobs are asynchronous (the client polls) and their files are already stored, so they
    # queue deep; a query holds its connection while it waits, so its queue stays short.
    return settings.ingest_queue_limit if queue == INGEST_QUEUE else settings.queue_limit


def check_capacity(state: ApiState, queue: str) -> None:
    depth, limit = state.depth(queue), queue_limit(state.settings, queue)
    if depth >= limit:
        metrics.REJECTED.labels("backpressure").inc()
        setting = "SLUICE_INGEST_QUEUE_LIMIT" if queue == INGEST_QUEUE else "SLUICE_QUEUE_LIMIT"
        raise ApiError(
            503,
            f"the {queue!r} queue holds {depth} messages (limit {limit}, {setting}); retry later",
            {"Retry-After": "2"},
        )


def _record_job(state: ApiState, tenant: str, job_id: str, kind: str, request: dict) -> None:
    state.db.execute_as(
        tenant,
        "INSERT INTO jobs (job_id, tenant_id, kind, request) VALUES (%s, %s, %s, %s)",
        (job_id, tenant, kind, Jsonb(request)),
    )


def new_job(state: ApiState, tenant: str, task: str, queue: str, record: dict) -> str:
    """Check capacity and record the job (so GET /v1/jobs/{id} knows it); return its id."""
    check_capacity(state, queue)
    job_id = str(uuid.uuid4())
    _record_job(state, tenant, job_id, "query" if task == QUERY_TASK else "ingest", record)
    return job_id


def enqueue(state: ApiState, tenant: str, task: str, queue: str, payload: dict, record: dict) -> str:
    job_id = new_job(state, tenant, task, queue, record)
    send(state, task, queue, job_id, payload)
    return job_id


def send(state: ApiState, task: str, queue: str, job_id: str, payload: dict) -> None:
    ctx = logs.context()
    with tracing.tracer().start_as_current_span("enqueue", attributes={"sluice.queue": queue, "sluice.job_id": job_id}):
        headers = {
            metrics.ENQUEUED_AT: time.time(),
            metrics.REQUEST_ID_HEADER: ctx.get("request_id"),
            metrics.TRACE_ID_HEADER: ctx.get("trace_id"),
        }
        # The worker's spans continue this trace: `traceparent` rides in the message headers.
        state.celery.send_task(task, args=[payload], task_id=job_id, queue=queue, headers=tracing.inject(headers))
    state.depth.added(queue)


def wait_result(state: ApiState, job_id: str, timeout_s: float) -> TaskOutcome | None:
    """The task's outcome, or None on timeout (call inside `state.results.expect(job_id)`)."""
    meta = state.results.wait(job_id, timeout_s)
    if meta is None:
        return None
    if meta["status"] != states.SUCCESS:
        raise ApiError(502, f"job {job_id} failed in the worker: {meta['result']!r}")
    return TaskOutcome.from_wire(meta["result"])


def worker_error(err: TaskError) -> ApiError:
    """The HTTP error for a task the worker refused."""
    # No model tier answered (all replicas and fallbacks failed): the upstream failed, not the request.
    status = {"UnknownTenantError": 404, "GenerationError": 502}.get(err.type, 422)
    return ApiError(status, err.message)
