"""Thumbs up/down and a correction from the Ask page, recorded by the code of POST /v1/feedback.

The console holds no API key to call /v1/feedback over HTTP, so it validates the same request model
and calls the same function with the session's tenant.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from serving.api.errors import ApiError
from serving.api.feedback import submit_feedback
from serving.api.state import State
from serving.console.pages import Current, check_header
from serving.schemas import FeedbackRequest

MAX_BYTES = 64 * 1024
router = APIRouter(prefix="/console", include_in_schema=False)


@router.post("/feedback")
async def feedback(request: Request, session: Current, state: State) -> JSONResponse:
    """Record a rating (up or down) and an optional correction of one of the session tenant's answers."""
    check_header(request, session)
    body = await request.body()
    if len(body) > MAX_BYTES:
        raise ApiError(413, f"feedback holds at most {MAX_BYTES} bytes")
    try:
        req = FeedbackRequest.model_validate_json(body)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise ApiError(422, f"invalid feedback: {fields}") from None
    status, out = await run_in_threadpool(submit_feedback, state, session.tenant, req)
    return JSONResponse(out, status_code=status)
