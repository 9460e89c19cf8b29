"""The Documents page: collections, documents (paged, searchable), upload through the ingest job, ingest errors."""

from __future__ import annotations

import json

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from serving.api import admit
from serving.api.errors import ApiError
from serving.api.jobs import job_status, submit_job
from serving.api.state import State
from serving.console import data
from serving.console.pages import Current, check_header, render
from serving.schemas import IngestJob

router = APIRouter(prefix="/console", include_in_schema=False)

# What to do about an ingest error, by the stage that recorded it (tasks/ingest.py, tasks/parse.py).
FIXES = {
    "read": "Check the file is still there and readable, then upload or ingest it again.",
    "parse": "Check the file opens and holds text (scanned PDFs need OCR); convert or split it, then upload it again.",
    "chunk": "The text gave no chunks: check it is not empty, or use another chunker in the pipeline config.",
    "embed": "A worker failed to embed it: check the worker's log and model, then ingest it again.",
}


@router.get("/documents")
def documents_page(
    request: Request,
    session: Current,
    state: State,
    collection: str | None = Query(None, max_length=200),
    q: str | None = Query(None, max_length=200),
    page: int = Query(1, ge=1, le=100_000),
) -> Response:
    """The tenant's collections, one page of its documents and its newest ingest errors."""
    if not session.signed_in:
        return render(request, session, "documents.html")
    tenant, collection, q = session.tenant, collection or None, (q or "").strip() or None
    rows, total = data.documents(state, tenant, collection, q, page)
    errors = [{**e, "fix": FIXES.get(e["stage"], "Check the reason, fix the file, ingest it again.")} for e in
              data.ingest_errors(state, tenant)]  # fmt: skip
    pages = max(1, -(-total // data.PAGE_SIZE))
    context = {"collections": data.collections(state, tenant), "rows": rows, "total": total, "page": page}
    context |= {"pages": pages, "collection": collection, "q": q or "", "errors": errors, "dumps": _dumps}
    return render(request, session, "documents.html", active="documents", **context)


def _dumps(metadata: dict) -> str:
    return json.dumps(metadata, ensure_ascii=False, sort_keys=True)[:300]


@router.post("/upload", status_code=202)
async def upload(request: Request, session: Current, state: State) -> JSONResponse:
    """Queue the uploaded files (JSON, base64, as POST /v1/jobs takes them) as one ingest job."""
    check_header(request, session)
    try:
        body = json.loads(await request.body() or b"{}")
        job = IngestJob(kind="ingest", files=body.get("files") if isinstance(body, dict) else None)
    except (ValueError, ValidationError) as exc:
        raise ApiError(422, f"the upload was refused: {str(exc).splitlines()[0]}") from None
    await admit.spend(state, session.key_hash)
    status, accepted = await run_in_threadpool(submit_job, state, session.tenant, job)
    return JSONResponse(accepted, status_code=status)


@router.get("/jobs/{job_id}")
def job(request: Request, session: Current, state: State, job_id: str) -> JSONResponse:
    """One of the tenant's jobs, as GET /v1/jobs/{id} answers it."""
    if not session.signed_in:
        raise ApiError(401, "sign in to the console first: /console/signin")
    found = job_status(state, session.tenant, job_id)
    return JSONResponse(found.model_dump(mode="json"))
