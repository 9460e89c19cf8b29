"""Every Prometheus metric of Sluice, in one module; multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set.

The API, `sluice worker` (and its prefork children) and `sluice serve --workers N` must all see the
same PROMETHEUS_MULTIPROC_DIR (an empty folder, shared, set before the process starts): each process
writes its own files there and `render()` merges them. Queue depth and oldest-message age are not
stored anywhere: they are read from the broker when /metrics is scraped (`QueueCollector`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sluice.settings import Settings

# Whether per-tenant series carry the tenant id (SLUICE_METRICS_TENANT_LABELS); set by `configure`.
_TENANT_LABELS = True

FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Celery message headers set by the API: wall-clock enqueue time, and the request's ids for the logs.
ENQUEUED_AT, REQUEST_ID_HEADER, TRACE_ID_HEADER = "sluice_enqueued_at", "sluice_request_id", "sluice_trace_id"

# ------------------------------------------------------------------ API
REQUESTS = Counter("sluice_http_requests_total", "HTTP requests.", ["route", "method", "status"])
LATENCY = Histogram(
    "sluice_http_request_seconds",
    "HTTP request latency.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ANSWER_CACHE = Counter("sluice_answer_cache_total", "Answer-cache lookups.", ["result"])
REJECTED = Counter("sluice_rejected_total", "Requests refused before any work.", ["reason"])
QUERY_LATENCY = Histogram(
    "sluice_query_seconds",
    "End-to-end latency of answered queries, seen by the API.",
    ["route", "tenant", "tier", "cached"],
    buckets=FAST,
)
TTFT = Histogram(
    "sluice_time_to_first_token_seconds",
    "Request start to the first answer piece sent (streaming), or to the whole answer (non-streaming).",
    ["tenant", "tier", "stream"],
    buckets=FAST,
)
MCP_CALLS = Counter(
    "sluice_mcp_tool_calls_total", "MCP tool calls by tool and outcome (ok, error, refused).", ["tool", "outcome"]
)
MCP_LATENCY = Histogram("sluice_mcp_tool_seconds", "MCP tool call latency, seen by the server.", ["tool"], buckets=FAST)

# ------------------------------------------------------------------ worker
QUEUE_WAIT = Histogram("sluice_queue_wait_seconds", "Enqueue (API) to task start (worker).", ["queue"], buckets=FAST)
STAGE = Histogram(
    "sluice_stage_seconds", "Worker time per query stage (embed, retrieve, generate).", ["stage"], buckets=FAST
)
TASKS = Counter("sluice_tasks_total", "Tasks finished by workers.", ["task", "outcome"])
DEAD_LETTERS = Counter(
    "sluice_dead_letters_total",
    "Tasks given up on (payload no pool process can take, worker lost or failed on every attempt): "
    "acknowledged, recorded in dead_letters, never redelivered.",
    ["task", "reason"],
)
JOBS_EXPIRED = Counter("sluice_jobs_expired_total", "Finished jobs deleted after SLUICE_JOB_RETENTION_S.")
ROUTER = Counter("sluice_router_decisions_total", "Answers per model tier chosen.", ["tier"])
TOKENS = Counter("sluice_tokens_total", "LLM tokens.", ["tenant", "model", "kind"])
COST = Counter("sluice_cost_usd_total", "Generation cost in US dollars.", ["tenant", "model"])
TOKENS_PER_S = Histogram(
    "sluice_generation_tokens_per_second",
    "Generation throughput per answer (completion tokens / generation time).",
    ["model"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000),
)
GEN_TTFT = Histogram(
    "sluice_generation_ttft_seconds", "Time to the model's first token (0 for extractive).", ["model"], buckets=FAST
)
EMBED_CACHE = Counter("sluice_embedding_cache_total", "Query-embedding cache lookups.", ["result"])
INGEST_DOCS = Counter("sluice_ingest_documents_total", "Documents by ingestion outcome.", ["outcome"])
INGEST_CHUNKS = Counter("sluice_ingest_chunks_total", "Chunks written by ingestion.")
INGEST_ERRORS = Counter("sluice_ingest_errors_total", "Per-document ingestion errors.")
EVAL_RUNS = Counter("sluice_eval_runs_total", "Evaluation flow runs.", ["outcome"])
FEEDBACK = Counter("sluice_feedback_total", "Ratings of answers (POST /v1/feedback).", ["rating", "config"])

# ------------------------------------------------------------------ rollout (flow or CLI process)
ROLLOUT_DOCS = Gauge(
    "sluice_rollout_documents",
    "Documents of a tenant's rollout: in the tenant (total), in the target index (done), not buildable (failed).",
    ["tenant", "state"],
    multiprocess_mode="mostrecent",
)


def observe_rollout(tenant: str, done: int, total: int, failed: int) -> None:
    """Publish one tenant's rollout progress (the driver's `on_progress`)."""
    for name, value in (("done", done), ("total", total), ("failed", failed)):
        ROLLOUT_DOCS.labels(tenant, name).set(value)


def configure(settings: Settings) -> None:
    """Apply this process's metric settings (each entry point: the API app, the worker app)."""
    global _TENANT_LABELS
    _TENANT_LABELS = settings.metrics_tenant_labels


def tenant(tenant_id: str) -> str:
    """The value of a `tenant` label: the tenant id, or "all" when tenant labels are off."""
    return tenant_id if _TENANT_LABELS else "all"


class QueueCollector(Collector):
    """Queue depth and oldest-message age, read from the broker at scrape time."""

    def __init__(self, depth: Callable[[str], int], oldest: Callable[[str], float | None], queues: Iterable[str]):
        self.depth, self.oldest, self.queues = depth, oldest, tuple(queues)

    def collect(self):
        depth = GaugeMetricFamily("sluice_queue_depth", "Messages waiting in a broker queue.", labels=["queue"])
        age = GaugeMetricFamily(
            "sluice_queue_oldest_age_seconds", "Age of the oldest waiting message (0 when empty).", labels=["queue"]
        )
        up = GaugeMetricFamily("sluice_broker_up", "1 when the broker answered this scrape.")
        ok = 1
        for q in self.queues:
            try:
                depth.add_metric([q], self.depth(q))
                age.add_metric([q], self.oldest(q) or 0.0)
            except Exception:  # a scrape reports a broker outage instead of failing
                ok = 0
        up.add_metric([], ok)
        return [depth, age, up]


def oldest_age_redis(client, queue: str, now: float | None = None) -> float | None:
    """Age of the oldest message of a kombu Redis queue (LPUSH/BRPOP: the oldest is the last element)."""
    raw = client.lindex(queue, -1)
    if raw is None:
        return None
    enqueued = json.loads(raw).get("headers", {}).get(ENQUEUED_AT)
    return max(0.0, (now or time.time()) - float(enqueued)) if enqueued else None


def render(extra: Iterable[Collector] = ()) -> tuple[bytes, str]:
    """The exposition text: merged across processes when running multiprocess, plus `extra` collectors."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Forward(Collector):
    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        return self.registry.collect()
