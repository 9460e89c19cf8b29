"""`sluice status` arithmetic checked by hand, and the Grafana dashboard checked against the metrics module."""

from __future__ import annotations

import json
import math
import re

from prometheus_client import Counter, Histogram

from sluice import metrics
from sluice.settings import PROJECT_ROOT
from sluice.status import parse, quantile, summarize


def _exposition(query_ok: int, scrapes: int, fast: int, total: int, cost: float, more: str = "") -> str:
    """Query and scrape counts, the query latency histogram (within 0.1 s, all), spend, and `more` lines."""
    return f"""
sluice_http_requests_total{{route="/v1/query",method="POST",status="200"}} {query_ok}
sluice_http_requests_total{{route="/metrics",method="GET",status="200"}} {scrapes}
sluice_http_request_seconds_bucket{{route="/v1/query",le="0.1"}} {fast}
sluice_http_request_seconds_bucket{{route="/v1/query",le="1.0"}} {total}
sluice_http_request_seconds_bucket{{route="/v1/query",le="+Inf"}} {total}
sluice_cost_usd_total{{tenant="t",model="m"}} {cost}
{more}"""


BEFORE = _exposition(10, 50, 10, 10, 0.5)
AFTER = _exposition(
    108,
    51,
    60,
    110,
    0.75,
    more='sluice_http_requests_total{route="/v1/query",method="POST",status="503"} 2\n'
    'sluice_queue_depth{queue="query"} 7\nsluice_queue_oldest_age_seconds{queue="query"} 1.5\n',
)


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


def test_feedback_share_per_config_is_a_total_not_an_interval():
    after = AFTER + (
        'sluice_feedback_total{rating="up",config="c1"} 3\n'
        'sluice_feedback_total{rating="down",config="c1"} 1\n'
        'sluice_feedback_total{rating="down",config="c2"} 2\n'
    )
    s = summarize(parse(BEFORE), parse(after), 5.0, "ok: 1")
    assert s.feedback == {"c1": {"up": 3, "down": 1}, "c2": {"down": 2}}
    assert math.isclose(s.down_share("c1"), 0.25) and s.down_share("c2") == 1.0
    assert math.isnan(s.down_share("never-rated"))
