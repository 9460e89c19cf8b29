"""Queue depth, p99 latency, error rate, cost and cache hit rate from two Prometheus scrapes.

`sluice status` (cli/status.py) scrapes /metrics over HTTP; the web console (serving/console) renders the
same exposition in process. Both summarise it here, so they show the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

QUIET = ("/metrics", "/healthz", "/readyz")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Prometheus exposition text → {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(samples: Samples, name: str, keep=lambda labels: True) -> float:
    return sum(v for (n, lab), v in samples.items() if n == name and keep(dict(lab)))


def quantile(q: float, buckets: dict[float, float]) -> float:
    """histogram_quantile over cumulative bucket counts {le: count} (linear within a bucket, as Prometheus)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if total <= 0:
        return math.nan
    rank, prev_bound, prev_count = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_bound, prev_count = bound, count
    return prev_bound


@dataclass
class Status:
    seconds: float
    queue_depth: dict[str, float]
    oldest_age_s: dict[str, float]
    workers: str
    requests: float
    p99_s: float
    error_rate: float
    cost_usd: float
    cache_hits: float = 0.0
    cache_lookups: float = 0.0
    feedback: dict[str, dict[str, float]] = field(default_factory=dict)  # config id -> rating -> count

    def down_share(self, config: str) -> float:
        """Share of `config`'s ratings that are down (NaN without ratings)."""
        counts = self.feedback.get(config, {})
        total = sum(counts.values())
        return counts.get("down", 0.0) / total if total else math.nan

    @property
    def cache_hit_rate(self) -> float:
        """Share of answer-cache lookups that hit (NaN without lookups)."""
        return self.cache_hits / self.cache_lookups if self.cache_lookups else math.nan


def summarize(before: Samples, after: Samples, seconds: float, workers: str) -> Status:
    """What changed between two scrapes: requests, p99 latency, share of 5xx, cost; gauges from the last."""

    def counted(labels: dict) -> bool:
        return labels.get("route") not in QUIET

    def delta(name: str, keep=counted) -> float:
        return _sum(after, name, keep) - _sum(before, name, keep)

    les = {float(dict(lab)["le"]) for (n, lab) in after if n == "sluice_http_request_seconds_bucket"}
    buckets = {
        le: delta("sluice_http_request_seconds_bucket", lambda lab, le=le: counted(lab) and float(lab["le"]) == le)
        for le in les
    }
    requests = delta("sluice_http_requests_total")
    errors = delta("sluice_http_requests_total", lambda lab: counted(lab) and lab.get("status", "").startswith("5"))
    gauge = lambda name: {dict(lab)["queue"]: v for (n, lab), v in after.items() if n == name}  # noqa: E731
    return Status(
        seconds=seconds,
        queue_depth=gauge("sluice_queue_depth"),
        oldest_age_s=gauge("sluice_queue_oldest_age_seconds"),
        workers=workers,
        requests=requests,
        p99_s=quantile(0.99, buckets),
        error_rate=errors / requests if requests else 0.0,
        cost_usd=delta("sluice_cost_usd_total", lambda lab: True),
        cache_hits=delta("sluice_answer_cache_total", lambda lab: lab.get("result") == "hit"),
        cache_lookups=delta("sluice_answer_cache_total", lambda lab: True),
        feedback=feedback_counts(after),
    )


def feedback_counts(samples: Samples) -> dict[str, dict[str, float]]:
    """Ratings so far per config and rating, from `sluice_feedback_total` (totals, not the interval)."""
    out: dict[str, dict[str, float]] = {}
    for (name, labels), value in samples.items():
        if name == "sluice_feedback_total":
            lab = dict(labels)
            out.setdefault(lab["config"], {})[lab["rating"]] = value
    return out
