"""A search through the query queue: a worker retrieves the chunks (the API never loads the embedder)."""

from __future__ import annotations

from serving.api.enqueue import new_job, send, wait_result, worker_error
from serving.api.errors import ApiError
from serving.api.query import payload
from serving.api.state import ApiState
from serving.celery_app import QUERY_QUEUE, QUERY_TASK
from serving.schemas import SearchOptions, SearchRequest


def run_search(state: ApiState, tenant: str, req: SearchRequest) -> dict:
    """The chunks a worker retrieved for `req`, waiting up to SLUICE_QUERY_TIMEOUT_S (then 504)."""
    job_id = new_job(state, tenant, QUERY_TASK, QUERY_QUEUE, req.model_dump())
    options = SearchOptions(k=req.k, mode=req.mode).model_dump()
    with state.results.expect(job_id):  # listen before sending: the result cannot slip past
        send(state, QUERY_TASK, QUERY_QUEUE, job_id, {**payload(tenant, req, False), "search": options})
        outcome = wait_result(state, job_id, state.settings.query_timeout_s)
    if outcome is None:
        raise ApiError(504, f"search {job_id} took longer than SLUICE_QUERY_TIMEOUT_S: retry, or narrow its filters")
    if outcome.error is not None:
        raise worker_error(outcome.error)
    return {**outcome.value, "task_id": job_id}
