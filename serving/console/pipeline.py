"""The Pipeline page: served config and index per collection, champion history, rollouts, live numbers."""

from __future__ import annotations

import json
import math

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.api.health import readiness
from serving.api.state import ApiState, State
from serving.backpressure import oldest_age
from serving.celery_app import INGEST_QUEUE, QUERY_QUEUE
from serving.config_source import served_config
from serving.console import data
from serving.console.pages import Current, render
from sluice import metrics
from sluice.status import Status, parse, summarize

router = APIRouter(prefix="/console", include_in_schema=False)

_HISTORY = """
SELECT event_id, config_id, action, mlflow_run_id, evaluated_on, reason, metrics, created_at, tenant_scope
FROM champion_history WHERE tenant_scope IS NULL OR tenant_scope = %s ORDER BY event_id DESC LIMIT 20
"""
_ROLLOUTS = """
SELECT rollout_id, target_config, target_index, status, docs_total, docs_done, docs_failed, error, updated_at
FROM rollout_tenants ORDER BY updated_at DESC LIMIT 10
"""


@router.get("/pipeline")
def pipeline_page(request: Request, session: Current, state: State) -> Response:
    """What serves each collection, why (champion history), rollouts, and the service's numbers now."""
    if not session.signed_in:
        return render(request, session, "pipeline.html")
    tenant = session.tenant
    names = [c for c, _ in data.collections(state, tenant)] or ["default"]
    context = {
        "served": [_served(state, tenant, c) for c in names],
        "history": _rows(state, tenant, _HISTORY, (tenant,)),
        "rollouts": _rows(state, tenant, _ROLLOUTS, ()),
        "mlflow": (state.settings.mlflow_ui_url or "").rstrip("/"),
        "dumps": lambda v: json.dumps(v, sort_keys=True),
    }
    context |= _numbers(state, tenant)
    return render(request, session, "pipeline.html", active="pipeline", **context)


def _served(state: ApiState, tenant: str, collection: str) -> dict:
    served = served_config(state.settings, state.db, tenant, collection)
    c = served.config
    stages = {"chunker": c.chunker, "embedder": c.embedder, "retrieval": c.retrieval, "generator": c.generator}
    return {
        "collection": collection, "config_id": c.config_id, "index_id": served.index_id, "name": c.name,
        "pending": served.pending, "target": served.target.config_id,
        "stages": {k: v.model_dump(mode="json") for k, v in stages.items()},
    }  # fmt: skip


def _rows(state: ApiState, tenant: str, sql: str, params: tuple) -> list[tuple]:
    return state.db.execute_as(tenant, sql, params)


def _numbers(state: ApiState, tenant: str) -> dict:
    """The `sluice status` numbers since the metrics began (one scrape, rendered in process), and workers."""
    queues = metrics.QueueCollector(state.depth, lambda q: oldest_age(state.celery, q), (QUERY_QUEUE, INGEST_QUEUE))
    body, _ = metrics.render([queues])
    after = parse(body.decode())
    status = summarize({}, after, 0.0, readiness(state).get("workers", "unknown"))
    label = metrics.tenant(tenant)
    own_cost = sum(v for (n, lab), v in after.items() if n == "sluice_cost_usd_total" and ("tenant", label) in lab)
    return {"numbers": status, "own_cost": own_cost, "fmt": _fmt}


def _fmt(status: Status) -> dict[str, str]:
    nan = math.isnan
    return {
        "p99": "n/a (no requests yet)" if nan(status.p99_s) else f"{status.p99_s * 1000:.0f} ms",
        "errors": f"{status.error_rate:.1%}",
        "cache": "n/a (no lookups yet)" if nan(status.cache_hit_rate) else f"{status.cache_hit_rate:.1%}",
        "cost": f"${status.cost_usd:.6f}",
    }
