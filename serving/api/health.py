"""Health: liveness, readiness (database, broker, worker heartbeats) and the Prometheus endpoint."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from serving.api.scrape import Scrape
from serving.api.state import ApiState, State
from serving.backpressure import oldest_age
from serving.celery_app import INGEST_QUEUE, QUERY_QUEUE
from serving.heartbeat import live_workers
from serving.schemas import Problem
from sluice import metrics

router = APIRouter()


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


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is not ready"}})
def readyz(state: State) -> JSONResponse:
    """Database, broker and workers answer."""
    checks = readiness(state)
    ready = all(v.startswith("ok") for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", responses={401: {"model": Problem}, 403: {"model": Problem}})
def prometheus(state: State, _: Scrape) -> Response:
    """Prometheus exposition (all API and worker processes), with queue depth read from the broker now.

    Needs the scrape token (SLUICE_METRICS_TOKEN), or, when none is set, a client on this host.
    """
    queues = metrics.QueueCollector(state.depth, lambda q: oldest_age(state.celery, q), (QUERY_QUEUE, INGEST_QUEUE))
    body, ctype = metrics.render([queues])
    return Response(body, media_type=ctype)
