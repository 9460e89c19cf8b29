"""POST /v1/feedback: rate one of this tenant's answers (up/down), optionally correct it or name the evidence."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from serving.api.deps import IdemKey, Tenant
from serving.api.errors import ERRORS, ApiError
from serving.api.idempotent import idempotent
from serving.api.responses import json_response
from serving.api.state import ApiState, State
from serving.feedback import FeedbackError, UnknownAnswerError, record_feedback
from serving.schemas import FeedbackAccepted, FeedbackRequest

router = APIRouter()


@router.post("/v1/feedback", status_code=201, response_model=FeedbackAccepted, responses=ERRORS)
def feedback(req: FeedbackRequest, state: State, tenant: Tenant, key: IdemKey = None) -> Response:
    """Rate an answer; another tenant's answer id is a 404 exactly like an unknown one."""
    status, body, replayed = idempotent(
        state, tenant, key, "/v1/feedback", req.model_dump(), lambda: submit_feedback(state, tenant, req)
    )
    return json_response(status, body, replayed)


def submit_feedback(state: ApiState, tenant: str, req: FeedbackRequest) -> tuple[int, dict]:
    """Record the feedback: 201 with its id, 404 for an answer this key cannot see, 422 for bad evidence."""
    evidence = req.evidence.model_dump() if req.evidence else None
    try:
        return 201, record_feedback(state.db, tenant, req.answer_id, req.rating, req.correction, evidence)
    except UnknownAnswerError as exc:
        raise ApiError(404, str(exc)) from exc
    except FeedbackError as exc:
        raise ApiError(422, str(exc)) from exc
