"""Prometheus metrics of the API; multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

REQUESTS = Counter("sluice_http_requests_total", "HTTP requests.", ["route", "method", "status"])
LATENCY = Histogram(
    "sluice_http_request_seconds",
    "HTTP request latency.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ANSWER_CACHE = Counter("sluice_answer_cache_total", "Answer-cache lookups.", ["result"])
REJECTED = Counter("sluice_rejected_total", "Requests refused before any work.", ["reason"])


def render() -> tuple[bytes, str]:
    """The exposition text: merged across processes when running multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
