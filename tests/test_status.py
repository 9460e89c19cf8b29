"""`sluice status` arithmetic checked by hand, and the Grafana dashboard checked against the metrics module."""

from __future__ import annotations

import json
import math
import re

from prometheus_client import Counter, Histogram

from sluice import metrics
from sluice.settings import PROJECT_ROOT
from sluice.status import parse, quantile, summarize

BEFORE = """
sluice_http_requests_total{route="/v1/query",method="POST",status="200"} 10
sluice_http_requests_total{route="/metrics",method="GET",status="200"} 50
sluice_http_request_seconds_bucket{route="/v1/query",le="0.1"} 10
sluice_http_request_seconds_bucket{route="/v1/query",le="1.0"} 10
sluice_http_request_seconds_bucket{route="/v1/query",le="+Inf"} 10
sluice_cost_usd_total{tenant="t",model="m"} 0.5
"""
AFTER = """
sluice_http_requests_total{route="/v1/query",method="POST",status="200"} 108
sluice_http_requests_total{route="/v1/query",method="POST",status="503"} 2
sluice_http_requests_total{route="/metrics",method="GET",status="200"} 51
sluice_http_request_seconds_bucket{route="/v1/query",le="0.1"} 60
sluice_http_request_seconds_bucket{route="/v1/query",le="1.0"} 110
sluice_http_request_seconds_bucket{route="/v1/query",le="+Inf"} 110
sluice_cost_usd_total{tenant="t",model="m"} 0.75
sluice_queue_depth{queue="query"} 7
sluice_queue_oldest_age_seconds{queue="query"} 1.5
"""


def test_quantile_interpolates_like_prometheus():
    # 100 observations: 50 ≤ 0.1 s, 50 in (0.1, 1]: p99 is 98% of the way through the second bucket.
    assert math.isclose(quantile(0.99, {0.1: 50, 1.0: 100, math.inf: 100}), 0.1 + 0.9 * 49 / 50)
    assert math.isclose(quantile(0.5, {0.1: 50, 1.0: 100, math.inf: 100}), 0.1)
    assert math.isnan(quantile(0.99, {0.1: 0, math.inf: 0}))
    assert quantile(0.99, {0.1: 0, math.inf: 5}) == 0.1  # all above the last finite bound


def test_summary_counts_only_the_interval_and_skips_scrapes():
    s = summarize(parse(BEFORE), parse(AFTER), 5.0, "ok: 2")
    assert s.requests == 100  # /metrics scrapes excluded
    assert math.isclose(s.error_rate, 0.02)
    assert math.isclose(s.p99_s, 0.1 + 0.9 * 49 / 50)
    assert math.isclose(s.cost_usd, 0.25)
    assert s.queue_depth == {"query": 7} and s.oldest_age_s == {"query": 1.5} and s.workers == "ok: 2"


def test_dashboard_uses_only_metrics_that_exist():
    dash = json.loads((PROJECT_ROOT / "docs" / "grafana" / "sluice.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(sluice_[a-z_]+)", e)}
    known = {"sluice_queue_depth", "sluice_queue_oldest_age_seconds", "sluice_broker_up"}
    for obj in vars(metrics).values():
        if isinstance(obj, Histogram):
            known.add(f"{obj._name}_bucket")
        elif isinstance(obj, Counter):
            known.add(f"{obj._name}_total")
    assert used <= known, used - known
    # Every metric of the module is on the dashboard.
    assert known - used == set(), known - used
    assert sum("histogram_quantile(0.99" in e for e in exprs) >= 4
