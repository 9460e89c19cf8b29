"""The HTTP API. It enqueues work by task name and never imports worker code or the embedder."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from celery import states
from fastapi import Body, Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg.types.json import Jsonb
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import idempotency as idem
from serving import metrics
from serving.auth import AuthError, bearer_token, hash_key
from serving.backpressure import QueueDepth, oldest_age
from serving.cache import cache_lookup, question_key, versioned_key
from serving.celery_app import INGEST_QUEUE, INGEST_TASK, QUERY_QUEUE, QUERY_TASK, create_celery
from serving.config_source import active_config
from serving.heartbeat import live_workers
from serving.ratelimit import auth_pool, authorize, retry_after
from serving.results import ResultWaiter
from serving.schemas import IngestJob, JobAccepted, JobRequest, JobStatus, Problem, QueryRequest, QueryResponse
from serving.stream import answer_pieces, sse
from sluice import logs, tracing
from sluice.db import Database
from sluice.errors import SluiceError
from sluice.settings import Settings

log = logging.getLogger("sluice.api")

ERRORS = {
    401: {"model": Problem},
    404: {"model": Problem},
    409: {"model": Problem},
    429: {"model": Problem},
    502: {"model": Problem},
    503: {"model": Problem},
}
BEARER = HTTPBearer(auto_error=False, description="A tenant API key from `sluice key create`.")
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255, min_length=1)]


class CanonicalJSON(JSONResponse):
    """Sorted keys, so a replayed response (stored as jsonb) is byte-identical to the first."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class ApiError(Exception):
    """An HTTP error with a message that says what to do."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class Slots:
    """A counter of taken slots; take() is atomic."""

    def __init__(self, size: int):
        self.size, self.taken, self._lock = size, 0, threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.taken >= self.size:
                return False
            self.taken += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.taken -= 1


class ApiState:
    """What every request needs: settings, the app-role pool, the Celery client, queue depth, result waits."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = Database(settings)
        self.celery = create_celery(settings)
        self.depth = QueueDepth(self.celery)
        self.results = ResultWaiter(self.celery)
        self.auth = auth_pool(settings)  # opened by the app's lifespan, inside the event loop
        # Queries this process holds open while a worker answers. Checked and taken atomically: the broker
        # depth alone let a whole thread pool's worth of simultaneous requests in before any was queued.
        self.waiting = Slots(settings.queue_limit)

    def warm_up(self) -> None:
        """Open the pool, the broker connection and the result listener before the first request."""
        self.db.pool  # noqa: B018 - opens and fills the pool (pool_min_size connections)
        with self.celery.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
        for queue in (QUERY_QUEUE, INGEST_QUEUE):
            self.depth(queue)
        with self.results.expect(str(uuid.uuid4())):
            pass

    def close(self) -> None:
        self.results.close()
        self.db.close()


async def _state(request: Request) -> ApiState:
    # async: a plain attribute read needs no trip through the thread pool.
    return request.app.state.sluice


State = Annotated[ApiState, Depends(_state)]


async def tenant_of(state: State, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str:
    """Resolve the bearer key to its tenant and spend one token of its rate limit (one database round trip)."""
    try:
        token_hash = hash_key(bearer_token(f"{creds.scheme} {creds.credentials}" if creds else None))
    except AuthError as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from exc
    s = state.settings
    auth = await authorize(state.auth, token_hash, s.rate_limit_per_s, s.rate_limit_burst)
    if auth.tenant is None:
        raise ApiError(
            401,
            "unknown or revoked API key: create one with `sluice key create --tenant T`",
            {"WWW-Authenticate": "Bearer"},
        )
    tenant, wait = auth.tenant, auth.wait_s
    logs.bind(tenant=tenant)
    if wait:
        metrics.REJECTED.labels("rate_limit").inc()
        raise ApiError(
            429,
            f"rate limit of {s.rate_limit_per_s:g} requests/s exceeded for this key",
            {"Retry-After": retry_after(wait)},
        )
    return tenant


Tenant = Annotated[str, Depends(tenant_of)]


def queue_limit(settings: Settings, queue: str) -> int:
    """Waiting messages a queue may hold before new work for it is refused with 503."""
    # Ingest jobs are asynchronous (the client polls) and their files are already on disk, so they
    # queue deep; a query holds its connection while it waits, so its queue stays short.
    return settings.ingest_queue_limit if queue == INGEST_QUEUE else settings.queue_limit


def _check_capacity(state: ApiState, queue: str) -> None:
    depth, limit = state.depth(queue), queue_limit(state.settings, queue)
    if depth >= limit:
        metrics.REJECTED.labels("backpressure").inc()
        setting = "SLUICE_INGEST_QUEUE_LIMIT" if queue == INGEST_QUEUE else "SLUICE_QUEUE_LIMIT"
        raise ApiError(
            503,
            f"the {queue!r} queue holds {depth} messages (limit {limit}, {setting}); retry later",
            {"Retry-After": "2"},
        )


def _busy(state: ApiState) -> ApiError:
    metrics.REJECTED.labels("backpressure").inc()
    return ApiError(
        503,
        f"{state.settings.queue_limit} queries are already waiting in this API process (SLUICE_QUEUE_LIMIT); "
        "retry later",
        {"Retry-After": "1"},
    )


async def shed_load(request: Request) -> AsyncIterator[None]:
    """Hold one of this process's SLUICE_QUEUE_LIMIT query slots for the whole request, or refuse (503) at once.

    Async and first among the dependencies: a refusal costs no thread and no database work. Taken any
    later (after the key lookup and the rate-limit update, one row per tenant), a flood's refused
    requests held the threads and connections the admitted queries needed, and those waited behind it.
    """
    state: ApiState = request.app.state.sluice
    if not state.waiting.take():
        raise _busy(state)
    try:
        yield
    finally:
        state.waiting.give_back()


Shed = Annotated[None, Depends(shed_load)]


def _record_job(state: ApiState, tenant: str, job_id: str, kind: str, request: dict) -> None:
    state.db.execute_as(
        tenant,
        "INSERT INTO jobs (job_id, tenant_id, kind, request) VALUES (%s, %s, %s, %s)",
        (job_id, tenant, kind, Jsonb(request)),
    )


def _new_job(state: ApiState, tenant: str, task: str, queue: str, record: dict) -> str:
    """Check capacity and record the job (so GET /v1/jobs/{id} knows it); return its id."""
    _check_capacity(state, queue)
    job_id = str(uuid.uuid4())
    _record_job(state, tenant, job_id, "query" if task == QUERY_TASK else "ingest", record)
    return job_id


def _enqueue(state: ApiState, tenant: str, task: str, queue: str, payload: dict, record: dict) -> str:
    job_id = _new_job(state, tenant, task, queue, record)
    _send(state, task, queue, job_id, payload)
    return job_id


def _send(state: ApiState, task: str, queue: str, job_id: str, payload: dict) -> None:
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


def _wait(state: ApiState, job_id: str, timeout_s: float) -> dict | None:
    """The task's result, or None on timeout (call inside `state.results.expect(job_id)`)."""
    meta = state.results.wait(job_id, timeout_s)
    if meta is None:
        return None
    if meta["status"] != states.SUCCESS:
        raise ApiError(502, f"job {job_id} failed in the worker: {meta['result']!r}")
    return meta["result"]


def _worker_error(body: dict) -> ApiError:
    err = body["error"]
    # No model tier answered (all replicas and fallbacks failed): the upstream failed, not the request.
    status = {"UnknownTenantError": 404, "GenerationError": 502}.get(err["type"], 422)
    return ApiError(status, err["message"])


# ------------------------------------------------------------------ idempotent POST
def idempotent(
    state: ApiState, tenant: str, key: str | None, path: str, body: dict, work: Callable[[], tuple[int, dict]]
) -> tuple[int, dict, bool]:
    """Run `work` once per (tenant, key, body); later and concurrent requests replay its response."""
    if key is None:
        return (*work(), False)
    req_hash = idem.request_hash(path, body)
    for _ in range(3):
        if idem.claim(state.db, tenant, key, req_hash, state.settings.idempotency_ttl_s):
            try:
                status, payload = work()
            except ApiError as exc:
                if exc.status >= 500 or exc.status == 429:
                    idem.release(state.db, tenant, key)  # not accepted: the client may retry
                else:
                    idem.complete(state.db, tenant, key, idem.Stored(exc.status, {"detail": exc.detail}))
                raise
            except BaseException:
                idem.release(state.db, tenant, key)
                raise
            idem.complete(state.db, tenant, key, idem.Stored(status, payload))
            return status, payload, False
        try:
            stored = idem.wait_for(state.db, tenant, key, req_hash, state.settings.query_timeout_s + 5)
        except idem.KeyReused as exc:
            raise ApiError(
                422, f"Idempotency-Key {key!r} was used with a different request body: use a new key for a new request"
            ) from exc
        except idem.StillRunning as exc:
            raise ApiError(
                409, f"a request with Idempotency-Key {key!r} is still running: retry later", {"Retry-After": "1"}
            ) from exc
        if stored is not None:
            return stored.status_code, stored.body, True
    raise ApiError(409, f"Idempotency-Key {key!r} is contended: retry later", {"Retry-After": "1"})


# ------------------------------------------------------------------ query
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


def _payload(tenant: str, req: QueryRequest, stream: bool) -> dict:
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
    job_id = _new_job(state, tenant, QUERY_TASK, QUERY_QUEUE, req.model_dump())
    t1 = time.perf_counter()
    with state.results.expect(job_id):  # listen before sending: the answer cannot slip past
        _send(state, QUERY_TASK, QUERY_QUEUE, job_id, _payload(tenant, req, False))
        t2 = time.perf_counter()
        body = _wait(state, job_id, state.settings.query_timeout_s)
    if body is None:
        return 202, {"job_id": job_id, "kind": "query", "status": "running"}
    if "error" in body:
        raise _worker_error(body)
    _observe_query(tenant, body, t0, cached=False, stream=False)
    timings = {**body["timings_ms"], "api_prepare": _ms(t0, t1), "api_send": _ms(t1, t2), "api_total": _ms(t0)}
    return 200, {**body, "cached": False, "task_id": job_id, "timings_ms": timings}


def _observe_query(tenant: str, body: dict, t0: float, *, cached: bool, stream: bool, first: float = 0.0) -> None:
    """Latency of an answered query; time to first token is the whole latency unless streamed."""
    elapsed, tier = time.perf_counter() - t0, body.get("model_tier", "unknown")
    metrics.QUERY_LATENCY.labels("/v1/query", tenant, tier, str(cached).lower()).observe(elapsed)
    metrics.TTFT.labels(tenant, tier, str(stream).lower()).observe((first - t0) if first else elapsed)


def _ms(t0: float, t1: float | None = None) -> float:
    return round(((t1 or time.perf_counter()) - t0) * 1000, 3)


def stream_query(state: ApiState, tenant: str, req: QueryRequest) -> Iterator[str]:
    """SSE: `token` events as the worker publishes answer pieces, then `done` with the full response.

    The cache lookup and the enqueue (which may refuse with 503) run before the first byte is sent,
    so a refusal is still an ordinary HTTP error rather than a broken stream.
    """
    t0 = time.perf_counter()
    _, hit = _cached(state, tenant, req)
    if hit is not None:
        _observe_query(tenant, hit, t0, cached=True, stream=True)
        return replay_sse({**hit, "cached": True, "task_id": None})
    job_id = _enqueue(state, tenant, QUERY_TASK, QUERY_QUEUE, _payload(tenant, req, True), req.model_dump())
    return _follow(state, job_id, tenant, t0)


def _follow(state: ApiState, job_id: str, tenant: str, t0: float) -> Iterator[str]:
    yield sse("accepted", {"job_id": job_id})
    sent, first = [], 0.0
    deadline = time.monotonic() + state.settings.query_timeout_s
    # Each state the worker publishes wakes this stream (Redis pub/sub); no read per 4 ms per open stream.
    with state.results.expect(job_id):
        for meta in state.results.updates(job_id, deadline):
            status, info = meta["status"], meta.get("result")
            if status == "STREAMING" and isinstance(info, dict):
                for piece in info.get("tokens", [])[len(sent) :]:
                    first = first or time.perf_counter()
                    yield sse("token", {"text": piece})
                    sent.append(piece)
            elif status == states.SUCCESS:
                body = info
                if "error" in body:
                    yield sse("error", {"detail": body["error"]["message"]})
                    return
                for piece in _unsent(body["answer"], "".join(sent)):
                    first = first or time.perf_counter()
                    yield sse("token", {"text": piece})
                _observe_query(tenant, body, t0, cached=False, stream=True, first=first)
                yield sse("done", {**body, "cached": False, "task_id": job_id})
                return
            elif status in states.PROPAGATE_STATES:
                yield sse("error", {"detail": f"job {job_id} failed in the worker"})
                return
    yield sse("error", {"detail": f"job {job_id} still running: poll GET /v1/jobs/{job_id}"})


def _unsent(answer: str, sent: str) -> list[str]:
    """The pieces of `answer` after the text already streamed (the worker publishes at most every few ms)."""
    # A retried task may have streamed a different beginning; the `done` event carries the whole answer then.
    return answer_pieces(answer[len(sent) :]) if answer.startswith(sent) else []


def replay_sse(body: dict) -> Iterator[str]:
    """A finished response as an event stream."""
    if "answer" in body:
        for piece in answer_pieces(body["answer"]):
            yield sse("token", {"text": piece})
        yield sse("done", body)
    else:
        yield sse("error", body)


# ------------------------------------------------------------------ jobs
def resolve_source(settings: Settings, name: str) -> Path:
    """A named source inside the allowed ingest root; traversal and escapes are refused."""
    if settings.ingest_root is None:
        raise ApiError(422, "named sources are disabled: set SLUICE_INGEST_ROOT on the server, or upload `files`")
    root, rel = settings.ingest_root.resolve(), Path(name)
    if rel.is_absolute() or ".." in rel.parts or "\x00" in name:
        raise ApiError(422, f"source {name!r} must be a relative path inside the ingest root, without '..'")
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise ApiError(422, f"source {name!r} resolves outside the ingest root")
    if not path.exists():
        raise ApiError(422, f"source {name!r} does not exist under the ingest root")
    return path


def save_uploads(settings: Settings, tenant: str, job: IngestJob) -> Path:
    """Write uploaded files into a fresh folder the worker ingests (and then removes)."""
    decoded: list[tuple[str, bytes]] = []
    for f in job.files or []:
        if Path(f.name).name != f.name or f.name.startswith(".") or "\x00" in f.name:
            raise ApiError(422, f"file name {f.name!r} must be a plain base name such as report.pdf")
        try:
            decoded.append((f.name, base64.b64decode(f.content_base64, validate=True)))
        except (binascii.Error, ValueError) as exc:
            raise ApiError(422, f"file {f.name!r}: content_base64 is not valid base64") from exc
    if sum(len(d) for _, d in decoded) > settings.max_upload_bytes:
        raise ApiError(413, f"uploads exceed {settings.max_upload_bytes} bytes: split them over several jobs")
    folder = settings.data_dir / "uploads" / tenant / uuid.uuid4().hex
    folder.mkdir(parents=True)
    for name, data in decoded:
        (folder / name).write_bytes(data)
    return folder


def submit_job(state: ApiState, tenant: str, job: Any) -> tuple[int, dict]:
    """Enqueue a query or an ingestion; 202 with the job id."""
    if job.kind == "query":
        req = QueryRequest(**job.model_dump(exclude={"kind"}))
        job_id = _enqueue(state, tenant, QUERY_TASK, QUERY_QUEUE, _payload(tenant, req, False), job.model_dump())
        return 202, {"job_id": job_id, "kind": "query", "status": "queued"}
    if job.source is not None:
        source, cleanup = resolve_source(state.settings, job.source), False
    else:
        _check_capacity(state, INGEST_QUEUE)
        source, cleanup = save_uploads(state.settings, tenant, job), True
    record = {"kind": "ingest", "source": job.source, "files": [f.name for f in job.files or []]}
    payload = {"tenant": tenant, "source": str(source), "cleanup": cleanup}
    job_id = _enqueue(state, tenant, INGEST_TASK, INGEST_QUEUE, payload, record)
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
        body = result.result
        if isinstance(body, dict) and "error" in body:
            return JobStatus(job_id=job_id, kind=row[0], status="failed", error=body["error"]["message"])
        return JobStatus(job_id=job_id, kind=row[0], status="succeeded", result=body)
    if status in states.PROPAGATE_STATES:
        return JobStatus(job_id=job_id, kind=row[0], status="failed", error=repr(result.result))
    return JobStatus(job_id=job_id, kind=row[0], status="queued" if status == states.PENDING else "running")


# ------------------------------------------------------------------ health
def readiness(state: ApiState) -> dict[str, str]:
    """Check the database, the broker and the workers (by their heartbeats, which work with any broker)."""
    checks: dict[str, str] = {}
    try:
        with state.db.statement() as conn:
            conn.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports every failure instead of raising
        checks["database"] = f"error: {exc}"
    try:
        with state.celery.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {exc}"
    checks["workers"] = _workers_check(state) if checks["database"] == "ok" else "error: database unreachable"
    return checks


def _workers_check(state: ApiState) -> str:
    interval = state.settings.worker_heartbeat_s
    nodes, processes = live_workers(state.db, state.celery.conf.broker_url, interval)
    if not nodes:
        return f"error: no worker heartbeat on this broker in the last {interval * 3:g}s: start `sluice worker`"
    return f"ok: {nodes} worker(s), {processes} process(es)"


# ------------------------------------------------------------------ app
def _json(status: int, body: dict, replayed: bool) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    if status == 202 and "job_id" in body:
        headers["Location"] = f"/v1/jobs/{body['job_id']}"
    return CanonicalJSON(body, status_code=status, headers=headers)


def _routes(app: FastAPI) -> None:
    @app.post("/v1/query", response_model=QueryResponse, responses={**ERRORS, 202: {"model": JobAccepted}})
    def query(req: QueryRequest, _: Shed, state: State, tenant: Tenant, key: IdemKey = None) -> Response:
        """Answer a question (waits for a worker); `stream: true` answers as Server-Sent Events."""
        if req.stream:
            return _stream_response(state, tenant, req, key)
        status, body, replayed = idempotent(
            state, tenant, key, "/v1/query", req.model_dump(), lambda: run_query(state, tenant, req)
        )
        return _json(status, body, replayed)

    @app.post("/v1/jobs", status_code=202, response_model=JobAccepted, responses=ERRORS)
    def submit(job: Annotated[JobRequest, Body()], state: State, tenant: Tenant, key: IdemKey = None) -> Response:
        """Queue a query or an ingestion (a named source under the ingest root, or uploaded files)."""
        status, body, replayed = idempotent(
            state, tenant, key, "/v1/jobs", job.model_dump(), lambda: submit_job(state, tenant, job)
        )
        return _json(status, body, replayed)

    @app.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
    def get_job(job_id: str, state: State, tenant: Tenant) -> JobStatus:
        """Status and result of one of this tenant's jobs."""
        return job_status(state, tenant, job_id)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "a dependency is not ready"}})
    def readyz(state: State) -> JSONResponse:
        """Database, broker and workers answer."""
        checks = readiness(state)
        ready = all(v.startswith("ok") for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus(state: State) -> Response:
        """Prometheus exposition (all API and worker processes), with queue depth read from the broker now."""
        queues = metrics.QueueCollector(state.depth, lambda q: oldest_age(state.celery, q), (QUERY_QUEUE, INGEST_QUEUE))
        body, ctype = metrics.render([queues])
        return Response(body, media_type=ctype)


def _stream_response(state: ApiState, tenant: str, req: QueryRequest, key: str | None) -> Response:
    if key is None:
        return StreamingResponse(stream_query(state, tenant, req), media_type="text/event-stream")
    # With a key, the stream runs to completion once; repeats replay the final answer as events.
    status, body, _ = idempotent(
        state, tenant, key, "/v1/query", req.model_dump(), lambda: _collect_stream(state, tenant, req)
    )
    return StreamingResponse(replay_sse(body), media_type="text/event-stream", status_code=status)


def _collect_stream(state: ApiState, tenant: str, req: QueryRequest) -> tuple[int, dict]:
    done: dict = {"detail": "no answer"}
    for event in stream_query(state, tenant, req):
        if event.startswith(("event: done", "event: error")):
            done = json.loads(event.split("data: ", 1)[1])
    return 200, done


def max_body_bytes(settings: Settings) -> int:
    """Largest request body read: the upload limit once base64-encoded (4/3), plus 1 MiB for the JSON around it."""
    return settings.max_upload_bytes * 4 // 3 + 1024 * 1024


QUIET_ROUTES = {"/healthz", "/metrics"}  # scraped every few seconds: not worth a log line each
_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _request_id(given: str | None) -> str:
    """The caller's X-Request-Id if it is short and plain (it goes into logs and headers), else a new one."""
    if given and len(given) <= 128 and set(given) <= _REQUEST_ID_OK:
        return given
    return uuid.uuid4().hex


def create_app(settings: Settings) -> FastAPI:
    """Build the API for these settings (nothing connects until the first request)."""
    tracing.setup_tracing(settings, "sluice-api")
    state = ApiState(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        import anyio.to_thread

        # Sync handlers run on anyio's thread pool (40 by default). Up to queue_limit of them sleep while a
        # worker answers; 40 more keep refusals, auth and health checks fast while they do.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.queue_limit + 40
        await state.auth.open(wait=False)
        try:
            await run_in_threadpool(state.warm_up)  # the first request should not pay for connections
        except Exception as exc:  # not fatal: /readyz reports what is down, requests retry the connection
            log.warning("API warm-up incomplete: %s", exc)
        yield
        await state.auth.close()
        state.close()

    app = FastAPI(
        title="Sluice",
        version="0.1.0",
        lifespan=lifespan,
        description="Answers from each tenant's documents, with citations.",
        # FastAPI's own OpenTelemetry spans switch on whenever a tracer provider is installed (ours always
        # is): a second server span per request, outside the caller's trace (`Observe` continues that),
        # plus a span per dependency, at ~1 ms of CPU a request. `Observe` makes the one server span.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.sluice = state

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        # FastAPI's default echoes each bad `input`, which may be unencodable (NaN, a lone surrogate
        # such as "\ud800"): that turned a 422 into a 500. Location and message say enough; ASCII-escaped.
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        body = json.dumps({"detail": detail}, ensure_ascii=True, default=str)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(SluiceError)
    async def _server_error(_: Request, exc: SluiceError) -> JSONResponse:
        # Reaches here only for server-side problems (config, database): not the caller's fault.
        return JSONResponse({"detail": f"server not ready: {exc}"}, status_code=503, headers={"Retry-After": "5"})

    app.add_middleware(LimitBody, limit=max_body_bytes(settings))
    app.add_middleware(Observe)  # added last = outermost: refusals are observed too
    _routes(app)
    return app


class LimitBody:
    """Refuse a request whose declared body exceeds the limit with 413, before reading any of it.

    Plain ASGI like `Observe`: otherwise an oversized body is buffered whole and only then rejected.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = dict(scope.get("headers") or ()).get(b"content-length", b"") if scope["type"] == "http" else b""
        if size.isdigit() and int(size) > self.limit:
            detail = (
                f"request body of {int(size)} bytes exceeds the limit of {self.limit} bytes (SLUICE_MAX_UPLOAD_BYTES "
                "of files, base64-encoded): split the uploads over several jobs"
            )
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Observe:
    """Request id, trace span, metrics, access log and id headers for every HTTP request.

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs the app
    in a second task and pipes the body through memory streams, a cost paid on every request.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, method, status = time.perf_counter(), scope["method"], 500
        request_id = _request_id(Headers(scope=scope).get("x-request-id"))
        with tracing.continued(Headers(scope=scope), f"{method} {scope['path']}") as span:
            token = logs.start(request_id=request_id, trace_id=tracing.trace_id())

            async def send_with_ids(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = MutableHeaders(scope=message)
                    headers["X-Request-Id"] = request_id
                    if trace_id := tracing.trace_id():
                        headers["X-Trace-Id"] = trace_id
                        tracing.inject(headers)  # `traceparent`, for callers that continue the trace
                await send(message)

            try:
                await self.app(scope, receive, send_with_ids)
            finally:
                _observed(scope, span, method, status, time.perf_counter() - t0)
                logs.end(token)


def _observed(scope: Scope, span, method: str, status: int, elapsed: float) -> None:
    path = getattr(scope.get("route"), "path", "unmatched")
    metrics.REQUESTS.labels(path, method, str(status)).inc()
    metrics.LATENCY.labels(path).observe(elapsed)
    span.update_name(f"{method} {path}")
    span.set_attributes({"http.route": path, "http.response.status_code": status})
    if path not in QUIET_ROUTES:
        log.info("request", extra={"route": path, "method": method, "status": status, "ms": elapsed * 1e3})
