"""`sluice status`: queue depth, live workers, p99 latency, error rate, cost, and the share of down ratings per config.

Read from the API alone (two scrapes of /metrics `interval` seconds apart, plus /readyz): /metrics
already merges every API and worker process (multiprocess mode) and reads queue depth from the
broker at scrape time, so the command needs no database or broker credentials, only the API's
address, and shows exactly what Prometheus and the dashboard see. The price: "over the last
interval" means the window this command waits for, not history (use the dashboard for that).
Feedback is the exception: ratings are rare, so its counts are totals since the API processes started.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Annotated

import typer
from rich.table import Table

from cli.common import console, say_error
from sluice.settings import load_settings

app = typer.Typer()
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
    feedback: dict[str, dict[str, float]] = field(default_factory=dict)  # config id -> rating -> count

    def down_share(self, config: str) -> float:
        """Share of `config`'s ratings that are down (NaN without ratings)."""
        counts = self.feedback.get(config, {})
        total = sum(counts.values())
        return counts.get("down", 0.0) / total if total else math.nan


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


def fetch(url: str, interval: float, token: str | None = None) -> Status:
    """Scrape `url`/metrics twice, `interval` s apart (with the scrape token, if any); ask /readyz for live workers."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
        t0 = time.monotonic()
        before = parse(client.get("/metrics").raise_for_status().text)
        time.sleep(interval)
        after = parse(client.get("/metrics").raise_for_status().text)
        seconds = time.monotonic() - t0
        workers = client.get("/readyz").json().get("checks", {}).get("workers", "unknown")
    return summarize(before, after, seconds, workers)


def render(status: Status) -> Table:
    table = Table(title=f"sluice status (last {status.seconds:.1f} s)", show_header=False)
    for queue, depth in sorted(status.queue_depth.items()):
        table.add_row(f"queue {queue}", f"{depth:g} waiting, oldest {status.oldest_age_s.get(queue, 0):.1f} s")
    table.add_row("workers", status.workers)
    table.add_row("requests", f"{status.requests:g} ({status.requests / max(status.seconds, 1e-9):.1f}/s)")
    p99 = "n/a (no requests)" if math.isnan(status.p99_s) else f"{status.p99_s * 1000:.0f} ms"
    table.add_row("p99 latency", p99)
    table.add_row("error rate (5xx)", f"{status.error_rate:.1%}")
    table.add_row("cost", f"${status.cost_usd:.6f}")
    for config, counts in sorted(status.feedback.items()):
        total = sum(counts.values())
        table.add_row(f"feedback {config}", f"{status.down_share(config):.1%} down of {total:g} ratings (since start)")
    return table


@app.command()
def status(
    url: Annotated[
        str | None, typer.Option(help="API base URL (default http://SLUICE_API_HOST:SLUICE_API_PORT).")
    ] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between the two /metrics scrapes.")] = 5.0,
) -> None:
    """Queue depth, live workers, p99 latency, error rate and cost over the last INTERVAL seconds; down ratings."""
    import httpx

    settings = load_settings()
    base = url or f"http://{settings.api_host}:{settings.api_port}"
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    try:
        console.print(render(fetch(base, interval, token)))
    except httpx.HTTPError as exc:
        say_error(_why(base, exc))
        raise typer.Exit(code=2) from exc


def _why(base: str, exc: Exception) -> str:
    """What went wrong reading the API, and the fix."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return f"{base}/metrics refused the scrape ({status}): set SLUICE_METRICS_TOKEN to the server's scrape token"
    return f"cannot read {base}/metrics ({exc}): is `sluice serve` running there? pass --url"
