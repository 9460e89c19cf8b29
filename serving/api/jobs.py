"""POST /v1/jobs and GET /v1/jobs/{id}: queued queries and ingestions (a named source or uploaded files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from celery import states
from fastapi import APIRouter, Body
from fastapi.responses import Response

from serving.api.deps import IdemKey, Tenant
from serving.api.enqueue import check_capacity, enqueue
from serving.api.errors import ERRORS, ApiError
from serving.api.idempotent import idempotent
from serving.api.query import payload as query_payload
from serving.api.responses import json_response
from serving.api.state import ApiState, State
from serving.api.uploads import drop_uploads, save_uploads
from serving.celery_app import INGEST_QUEUE, INGEST_TASK, QUERY_QUEUE, QUERY_TASK
from serving.outcome import TaskOutcome
from serving.schemas import JobAccepted, JobRequest, JobStatus, QueryRequest
from sluice.confine import resolve_source as resolve_source_of
from sluice.errors import SourceError, SourceUnavailableError
from sluice.objects import exists
from sluice.settings import Settings

router = APIRouter()


@router.post("/v1/jobs", status_code=202, response_model=JobAccepted, responses=ERRORS)
def submit(job: Annotated[JobRequest, Body()], state: State, tenant: Tenant, key: IdemKey = None) -> Response:
    """Queue a query or an ingestion (a named source under the ingest root, or uploaded files)."""
    status, body, replayed = idempotent(
        state, tenant, key, "/v1/jobs", job.model_dump(), lambda: submit_job(state, tenant, job)
    )
    return json_response(status, body, replayed)


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
def get_job(job_id: str, state: State, tenant: Tenant) -> JobStatus:
    """Status and result of one of this tenant's jobs."""
    return job_status(state, tenant, job_id)


def resolve_source(settings: Settings, tenant: str, name: str) -> Path | str:
    """A named source inside the tenant's folder `<SLUICE_INGEST_ROOT>/<tenant>` (a name or a file:/// URL),
    or a URL below `<SLUICE_INGEST_URL>/<tenant>` that exists; anything else is a 422 (a 503 when the
    object store does not answer).

    Another tenant's folder or prefix is outside it: refused exactly like a source that does not exist.
    """
    try:
        target = resolve_source_of(settings, tenant, name)
        if isinstance(target, str) and not exists(settings, target):
            raise SourceError(f"source {name!r} names no object: check the bucket and prefix")
        return target
    except SourceError as exc:
        raise ApiError(422, str(exc)) from exc
    except SourceUnavailableError as exc:
        raise ApiError(503, str(exc), {"Retry-After": "30"}) from exc


def submit_job(state: ApiState, tenant: str, job: Any) -> tuple[int, dict]:
    """Enqueue a query or an ingestion; 202 with the job id."""
    if job.kind == "query":
        req = QueryRequest(**job.model_dump(exclude={"kind"}))
        job_id = enqueue(state, tenant, QUERY_TASK, QUERY_QUEUE, query_payload(tenant, req, False), job.model_dump())
        return 202, {"job_id": job_id, "kind": "query", "status": "queued"}
    if job.source is not None:  # checked now for a 422; the worker resolves the name again, under its own root
        resolve_source(state.settings, tenant, job.source)
        payload, uploads = {"tenant": tenant, "source": job.source, "metadata": job.metadata}, []
    else:
        check_capacity(state, INGEST_QUEUE)
        uploads = save_uploads(state.settings, state.db, state.uploads, tenant, job)
        # ids in the upload store, never a path on this host
        payload = {"tenant": tenant, "uploads": uploads, "metadata": job.metadata}
    record = {"kind": "ingest", "source": job.source, "files": [f.name for f in job.files or []]}
    try:
        job_id = enqueue(state, tenant, INGEST_TASK, INGEST_QUEUE, payload, record)
    except BaseException:
        if uploads:
            drop_uploads(state.db, state.uploads, tenant, uploads)  # no job names them: nothing would remove them
        raise
    return 202, {"job_id": job_id, "kind": "ingest", "status": "queued"}


def job_status(state: ApiState, tenant: str, job_id: str) -> JobStatus:
    """A job of this tenant; another tenant's job id is indistinguishable from a missing one."""
    with state.db.tenant(tenant, check=False) as conn:
        row = conn.execute("SELECT kind FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
    if row is None:
        raise ApiError(404, f"no job {job_id!r} for this API key")
    result = state.celery.AsyncResult(job_id)
    status = result.state
    if status == states.SUCCESS:
        outcome = TaskOutcome.from_wire(result.result)
        if outcome.error is not None:
            return JobStatus(job_id=job_id, kind=row[0], status="failed", error=outcome.error.message)
        return JobStatus(job_id=job_id, kind=row[0], status="succeeded", result=outcome.value)
    if status in states.PROPAGATE_STATES:
        return JobStatus(job_id=job_id, kind=row[0], status="failed", error=repr(result.result))
    return JobStatus(job_id=job_id, kind=row[0], status="queued" if status == states.PENDING else "running")
