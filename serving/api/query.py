"""POST /v1/query: answer from the cache, or enqueue and wait; as JSON or as Server-Sent Events."""

from __future__ import annotations

import time
from collections.abc import Iterator

from celery import states
from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse

from serving.api.deps import IdemKey, Tenant
from serving.api.enqueue import enqueue, new_job, send, wait_result, worker_error
from serving.api.errors import ERRORS
from serving.api.idempotent import idempotent
from serving.api.responses import json_response
from serving.api.state import ApiState, State
from serving.cache import cache_lookup, question_key, versioned_key
from serving.celery_app import QUERY_QUEUE, QUERY_TASK
from serving.config_source import active_config
from serving.outcome import TaskOutcome
from serving.schemas import JobAccepted, QueryRequest, QueryResponse
from serving.stream import answer_pieces, sse
from sluice import logs, metrics

router = APIRouter()
Event = tuple[str, dict]  # an SSE event name and its data; `sse()` writes it only at the edge


@router.post("/v1/query", response_model=QueryResponse, responses={**ERRORS, 202: {"model": JobAccepted}})
def query(req: QueryRequest, state: State, tenant: Tenant, key: IdemKey = None) -> Response:
    """Answer a question (waits for a worker); `stream: true` answers as Server-Sent Events."""
    if req.stream:
        return _stream_response(state, tenant, req, key)
    status, body, replayed = idempotent(
        state, tenant, key, "/v1/query", req.model_dump(), lambda: run_query(state, tenant, req)
    )
    return json_response(status, body, replayed)


def _cached(state: ApiState, tenant: str, req: QueryRequest) -> tuple[str, dict | None]:
    if not state.settings.answer_cache:
        return "", None
    config = active_config(state.settings, state.db)
    logs.bind(config_id=config.config_id)
    base = question_key(req.question, req.filters, req.collection, config.config_id)
    version, hit = cache_lookup(state.db, tenant, base)
    key = versioned_key(base, version)
    metrics.ANSWER_CACHE.labels("hit" if hit else "miss").inc()
    return key, hit


def payload(tenant: str, req: QueryRequest, stream: bool) -> dict:
    """The message a query task receives."""
    return {
        "tenant": tenant,
        "question": req.question,
        "filters": req.filters,
        "collection": req.collection,
        "stream": stream,
    }


def run_query(state: ApiState, tenant: str, req: QueryRequest) -> tuple[int, dict]:
    """Answer from the cache, or enqueue and wait; 202 with a job id if the worker takes too long."""
    t0 = time.perf_counter()
    _, hit = _cached(state, tenant, req)
    if hit is not None:
        _observe_query(tenant, hit, t0, cached=True, stream=False)
        return 200, {**hit, "cached": True, "task_id": None, "timings_ms": {**hit["timings_ms"], "api_total": _ms(t0)}}
    job_id = new_job(state, tenant, QUERY_TASK, QUERY_QUEUE, req.model_dump())
    t1 = time.perf_counter()
    with state.results.expect(job_id):  # listen before sending: the answer cannot slip past
        send(state, QUERY_TASK, QUERY_QUEUE, job_id, payload(tenant, req, False))
        t2 = time.perf_counter()
        outcome = wait_result(state, job_id, state.settings.query_timeout_s)
    if outcome is None:
        return 202, {"job_id": job_id, "kind": "query", "status": "running"}
    if outcome.error is not None:
        raise worker_error(outcome.error)
    body = outcome.value
    _observe_query(tenant, body, t0, cached=False, stream=False)
    timings = {**body["timings_ms"], "api_prepare": _ms(t0, t1), "api_send": _ms(t1, t2), "api_total": _ms(t0)}
    return 200, {**body, "cached": False, "task_id": job_id, "timings_ms": timings}


def _observe_query(tenant: str, body: dict, t0: float, *, cached: bool, stream: bool, first: float = 0.0) -> None:
    """Latency of an answered query; time to first token is the whole latency unless streamed."""
    elapsed, tier, label = time.perf_counter() - t0, body.get("model_tier", "unknown"), metrics.tenant(tenant)
    metrics.QUERY_LATENCY.labels("/v1/query", label, tier, str(cached).lower()).observe(elapsed)
    metrics.TTFT.labels(label, tier, str(stream).lower()).observe((first - t0) if first else elapsed)


def _ms(t0: float, t1: float | None = None) -> float:
    return round(((t1 or time.perf_counter()) - t0) * 1000, 3)


def stream_query(state: ApiState, tenant: str, req: QueryRequest) -> Iterator[Event]:
    """Events: `token` as the worker publishes answer pieces, then `done` with the full response.

    The cache lookup and the enqueue (which may refuse with 503) run before the first byte is sent,
    so a refusal is still an ordinary HTTP error rather than a broken stream.
    """
    t0 = time.perf_counter()
    _, hit = _cached(state, tenant, req)
    if hit is not None:
        _observe_query(tenant, hit, t0, cached=True, stream=True)
        return replay_events({**hit, "cached": True, "task_id": None})
    job_id = enqueue(state, tenant, QUERY_TASK, QUERY_QUEUE, payload(tenant, req, True), req.model_dump())
    return _follow(state, job_id, tenant, t0)


def _follow(state: ApiState, job_id: str, tenant: str, t0: float) -> Iterator[Event]:
    yield "accepted", {"job_id": job_id}
    sent, first = [], 0.0
    deadline = time.monotonic() + state.settings.query_timeout_s
    # Each state the worker publishes wakes this stream (Redis pub/sub); no read per 4 ms per open stream.
    with state.results.expect(job_id):
        for meta in state.results.updates(job_id, deadline):
            status, info = meta["status"], meta.get("result")
            if status == "STREAMING" and isinstance(info, dict):
                for piece in info.get("tokens", [])[len(sent) :]:
                    first = first or time.perf_counter()
                    yield "token", {"text": piece}
                    sent.append(piece)
            elif status == states.SUCCESS:
                yield from _finish(TaskOutcome.from_wire(info), sent, tenant, t0, first, job_id)
                return
            elif status in states.PROPAGATE_STATES:
                yield "error", {"detail": f"job {job_id} failed in the worker"}
                return
    yield "error", {"detail": f"job {job_id} still running: poll GET /v1/jobs/{job_id}"}


def _finish(
    outcome: TaskOutcome, sent: list[str], tenant: str, t0: float, first: float, job_id: str
) -> Iterator[Event]:
    """The rest of a finished answer's pieces, then `done` (or the worker's `error`)."""
    if outcome.error is not None:
        yield "error", {"detail": outcome.error.message}
        return
    body = outcome.value
    for piece in _unsent(body["answer"], "".join(sent)):
        first = first or time.perf_counter()
        yield "token", {"text": piece}
    _observe_query(tenant, body, t0, cached=False, stream=True, first=first)
    yield "done", {**body, "cached": False, "task_id": job_id}


def _unsent(answer: str, sent: str) -> list[str]:
    """The pieces of `answer` after the text already streamed (the worker publishes at most every few ms)."""
    # A retried task may have streamed a different beginning; the `done` event carries the whole answer then.
    return answer_pieces(answer[len(sent) :]) if answer.startswith(sent) else []


def replay_events(body: dict) -> Iterator[Event]:
    """A finished response as events."""
    if "answer" in body:
        for piece in answer_pieces(body["answer"]):
            yield "token", {"text": piece}
        yield "done", body
    else:
        yield "error", body


def _sse(events: Iterator[Event]) -> Iterator[str]:
    return (sse(name, data) for name, data in events)


def _stream_response(state: ApiState, tenant: str, req: QueryRequest, key: str | None) -> Response:
    if key is None:
        return StreamingResponse(_sse(stream_query(state, tenant, req)), media_type="text/event-stream")
    # With a key, the stream runs to completion once; repeats replay the final answer as events.
    status, body, _ = idempotent(
        state, tenant, key, "/v1/query", req.model_dump(), lambda: _collect_stream(state, tenant, req)
    )
    return StreamingResponse(_sse(replay_events(body)), media_type="text/event-stream", status_code=status)


def _collect_stream(state: ApiState, tenant: str, req: QueryRequest) -> tuple[int, dict]:
    done: dict = {"detail": "no answer"}
    for name, data in stream_query(state, tenant, req):
        if name in ("done", "error"):
            done = data
    return 200, done
