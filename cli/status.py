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
from typing import Annotated

import typer
from rich.table import Table

from cli.common import console, say_error
from sluice.settings import load_settings
from sluice.status import Status, parse, summarize

app = typer.Typer()


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
    hit = "n/a (no lookups)" if math.isnan(status.cache_hit_rate) else f"{status.cache_hit_rate:.1%}"
    table.add_row("cache hit rate", hit)  # of the answer cache
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
