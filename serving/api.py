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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg.types.json import Jsonb

from serving import idempotency as idem
from serving import metrics
from serving.auth import AuthError, bearer_token, hash_key
from serving.backpressure import QueueDepth, oldest_age
from serving.cache import answer_cache_key, cache_get, corpus_version
from serving.celery_app import INGEST_QUEUE, INGEST_TASK, QUERY_QUEUE, QUERY_TASK, create_celery
from serving.config_source import active_config
from serving.ratelimit import retry_after, take_token
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
    """What every request needs: settings, the app-role pool, the Celery client, queue depth."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = Database(settings)
        self.celery = create_celery(settings)
        self.depth = QueueDepth(self.celery)
        # Queries this process holds open while a worker answers. Checked and taken atomically: the broker
        # depth alone let a whole thread pool's worth of simultaneous requests in before any was queued.
        self.waiting = Slots(settings.queue_limit)


def _state(request: Request) -> ApiState:
    return request.app.state.sluice


State = Annotated[ApiState, Depends(_state)]


def tenant_of(state: State, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str:
    """Resolve the bearer key to its tenant, then spend one token of that tenant's rate limit."""
    try:
        token_hash = hash_key(bearer_token(f"{creds.scheme} {creds.credentials}" if creds else None))
    except AuthError as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from exc
    s = state.settings
    with state.db.shared() as conn:
        tenant = conn.execute("SELECT resolve_api_key(%s)", (token_hash,)).fetchone()[0]
        if tenant is None:
            raise ApiError(
                401,
                "unknown or revoked API key: create one with `sluice key create --tenant T`",
                {"WWW-Authenticate": "Bearer"},
            )
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant,))
        wait = take_token(conn, tenant, s.rate_limit_per_s, s.rate_limit_burst)
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
    with state.db.tenant(tenant, check=False) as conn:
        conn.execute(
            "INSERT INTO jobs (job_id, tenant_id, kind, request) VALUES (%s, %s, %s, %s)",
            (job_id, tenant, kind, Jsonb(request)),
        )


def _enqueue(state: ApiState, tenant: str, task: str, queue: str, payload: dict, record: dict) -> str:
    _check_capacity(state, queue)
    job_id = str(uuid.uuid4())
    _record_job(state, tenant, job_id, "query" if task == QUERY_TASK else "ingest", record)
    ctx = logs.context()
    with tracing.tracer().start_as_current_span("enqueue", attributes={"sluice.queue": queue, "sluice.job_id": job_id}):
        headers = {
            metrics.ENQUEUED_AT: time.time(),
            metrics.REQUEST_ID_HEADER: ctx.get("request_id"),
            metrics.TRACE_ID_HEADER: ctx.get("trace_id"),
        }
        # The worker's spans continue this trace: `traceparent` rides in the message headers.
        state.celery.send_task(task, args=[payload], task_id=job_id, queue=queue, headers=tracing.inject(headers))
    state.depth.forget()
    return job_id


def _wait(state: ApiState, job_id: str, timeout_s: float) -> dict | None:
    """Poll the result backend (thread-safe, unlike a shared result consumer) until done or timeout."""
    result, start, delay = state.celery.AsyncResult(job_id), time.monotonic(), 0.001
    while (elapsed := time.monotonic() - start) < timeout_s:
        status = result.state
        if status == states.SUCCESS:
            return result.result
        if status in states.PROPAGATE_STATES:
            raise ApiError(502, f"job {job_id} failed in the worker: {result.result!r}")
        time.sleep(delay)
        # Tight polling (one small read each) while a typical answer is due, then back off.
        delay = min(delay * 1.5, 0.004 if elapsed < 2 else 0.05)
    return None


def _worker_error(body: dict) -> ApiError:
    err = body["error"]
    status = 404 if err["type"] == "UnknownTenantError" else 422
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
    with state.db.tenant(tenant) as conn:
        key = answer_cache_key(req.question, req.filters, req.collection, config.config_id, corpus_version(conn))
        hit = cache_get(conn, key)
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
    job_id = _enqueue(state, tenant, QUERY_TASK, QUERY_QUEUE, _payload(tenant, req, False), req.model_dump())
    body = _wait(state, job_id, state.settings.query_timeout_s)
    if body is None:
        return 202, {"job_id": job_id, "kind": "query", "status": "running"}
    if "error" in body:
        raise _worker_error(body)
    _observe_query(tenant, body, t0, cached=False, stream=False)
    return 200, {**body, "cached": False, "task_id": job_id, "timings_ms": {**body["timings_ms"], "api_total": _ms(t0)}}


def _observe_query(tenant: str, body: dict, t0: float, *, cached: bool, stream: bool, first: float = 0.0) -> None:
    """Latency of an answered query; time to first token is the whole latency unless streamed."""
    elapsed, tier = time.perf_counter() - t0, body.get("model_tier", "unknown")
    metrics.QUERY_LATENCY.labels("/v1/query", tenant, tier, str(cached).lower()).observe(elapsed)
    metrics.TTFT.labels(tenant, tier, str(stream).lower()).observe((first - t0) if first else elapsed)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


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
    result, sent, first = state.celery.AsyncResult(job_id), 0, 0.0
    deadline = time.monotonic() + state.settings.query_timeout_s
    while time.monotonic() < deadline:
        status, info = result.state, result.info
        if status == "STREAMING" and isinstance(info, dict):
            for piece in info.get("tokens", [])[sent:]:
                first = first or time.perf_counter()
                yield sse("token", {"text": piece})
                sent += 1
        elif status == states.SUCCESS:
            body = result.result
            if "error" in body:
                yield sse("error", {"detail": body["error"]["message"]})
                return
            for piece in answer_pieces(body["answer"])[sent:]:
                first = first or time.perf_counter()
                yield sse("token", {"text": piece})
            _observe_query(tenant, body, t0, cached=False, stream=True, first=first)
            yield sse("done", {**body, "cached": False, "task_id": job_id})
            return
        elif status in states.PROPAGATE_STATES:
            yield sse("error", {"detail": f"job {job_id} failed in the worker"})
            return
        time.sleep(0.004)
    yield sse("error", {"detail": f"job {job_id} still running: poll GET /v1/jobs/{job_id}"})


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
    """Check the database, the broker and (where the broker can broadcast) the workers."""
    checks: dict[str, str] = {}
    try:
        with state.db.shared() as conn:
            conn.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports every failure instead of raising
        checks["database"] = f"error: {exc}"
    try:
        with state.celery.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            fanout = "fanout" in conn.transport.implements.exchange_type
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"], fanout = f"error: {exc}", False
    if fanout:
        replies = state.celery.control.ping(timeout=0.5)
        checks["workers"] = f"ok: {len(replies)}" if replies else "error: no worker answered a ping"
    elif checks["broker"] == "ok":
        checks["workers"] = "unchecked: this broker cannot broadcast pings (use Redis for worker checks)"
    return checks


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
        ready = all(v.startswith(("ok", "unchecked")) for v in checks.values())
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
        yield
        state.db.close()

    app = FastAPI(
        title="Sluice",
        version="0.1.0",
        lifespan=lifespan,
        description="Answers from each tenant's documents, with citations.",
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

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        # Refuse before reading: otherwise an oversized body is buffered whole and only then rejected.
        size, limit = request.headers.get("content-length", ""), max_body_bytes(settings)
        if size.isdigit() and int(size) > limit:
            detail = (
                f"request body of {size} bytes exceeds the limit of {limit} bytes (SLUICE_MAX_UPLOAD_BYTES "
                "of files, base64-encoded): split the uploads over several jobs"
            )
            return JSONResponse({"detail": detail}, status_code=413)
        return await call_next(request)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        t0 = time.perf_counter()
        request_id = _request_id(request.headers.get("x-request-id"))
        with tracing.continued(request.headers, f"{request.method} {request.url.path}") as span:
            token = logs.start(request_id=request_id, trace_id=tracing.trace_id())
            try:
                return await _handle(request, call_next, t0, request_id, span)
            finally:
                logs.end(token)

    async def _handle(request: Request, call_next, t0: float, request_id: str, span) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - t0
        metrics.REQUESTS.labels(path, request.method, str(response.status_code)).inc()
        metrics.LATENCY.labels(path).observe(elapsed)
        span.update_name(f"{request.method} {path}")
        span.set_attributes({"http.route": path, "http.response.status_code": response.status_code})
        response.headers["X-Request-Id"] = request_id
        if trace_id := tracing.trace_id():
            response.headers["X-Trace-Id"] = trace_id
            tracing.inject(response.headers)  # `traceparent`, for callers that continue the trace
        if path not in QUIET_ROUTES:
            extra = {"route": path, "method": request.method, "status": response.status_code, "ms": elapsed * 1e3}
            log.info("request", extra=extra)
        return response

    _routes(app)
    return app
