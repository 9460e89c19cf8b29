"""A burst of queries beyond capacity: admitted ones keep a bounded p99, the rest are refused with
Retry-After, and the service answers normally once the burst is over.

No absolute timings: the bound on the admitted requests' p99 is a multiple of the unloaded p99
measured by this test against the same stack a moment earlier, and it is set below what the burst
would cost if every request were queued (burst size x unloaded median / worker processes).
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
import uuid

import httpx
import pytest

from serving.auth import create_key
from sluice.db import create_tenant
from tests.reliability.raw_http import post_raw
from tests.reliability.stack import drop_keys, metric, private_settings
from tests.serving_support import serving_stack, wait_job

WORKERS = 2
QUEUE_LIMIT = 6
BURST = 200
UNLOADED = 30
HONEY = (
    "# Bees\n\nHoneybees communicate the location of flowers to their hive mates with a waggle dance. "
    "The angle of the dance points the way and its length tells the distance.\n"
)


@pytest.fixture(scope="module")
def burst_stack(migrated, db, tmp_path_factory):
    """A private two-process worker and an API subprocess with a short query queue and the cache off."""
    tmp = tmp_path_factory.mktemp("burst")
    settings = private_settings(migrated, "burst", tmp, queue_limit=QUEUE_LIMIT, answer_cache=False)
    tenant = f"burst-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    key = create_key(db, tenant).secret
    try:
        with serving_stack(settings, tmp, WORKERS, api_process=True) as stack:
            with stack.client(key, timeout=120) as client:
                files = [{"name": "bees.md", "content_base64": base64.b64encode(HONEY.encode()).decode()}]
                job = client.post("/v1/jobs", json={"kind": "ingest", "files": files}).json()["job_id"]
                assert wait_job(client, job)["status"] == "succeeded"
            yield stack.url, key
    finally:
        drop_keys(settings)


def question(n: int) -> dict:
    return {"question": f"How do honeybees tell hive mates where flowers are? (asker {n})"}


async def fire(url: str, key: str, n: int, start: int) -> list[tuple[int, float, str | None]]:
    """Send n queries at once, each on its own connection; (status, seconds, Retry-After) of each."""
    host, port = httpx.URL(url).host, httpx.URL(url).port

    async def one(i: int) -> tuple[int, float, str | None]:
        t0 = time.perf_counter()
        status, headers = await post_raw(host, port, key, question(i))
        return status, time.perf_counter() - t0, headers.get("retry-after")

    return await asyncio.gather(*(one(start + i) for i in range(n)))


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def unloaded(url: str, key: str) -> list[float]:
    """Latency of queries sent one at a time (after two warm-ups)."""
    seconds = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        for n in range(UNLOADED + 2):
            t0 = time.perf_counter()
            r = client.post("/v1/query", json=question(-n - 1))
            assert r.status_code == 200, r.text
            seconds.append(time.perf_counter() - t0)
    return seconds[2:]


def wait_drained(url: str, timeout: float = 120) -> float | None:
    deadline, depth = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        depth = metric(httpx.get(f"{url}/metrics", timeout=30).text, "sluice_queue_depth", 'queue="query"')
        if depth == 0:
            return depth
        time.sleep(0.5)
    return depth


def test_burst_beyond_capacity(burst_stack):
    url, key = burst_stack
    quiet = unloaded(url, key)
    results = asyncio.run(fire(url, key, BURST, 0))

    statuses = {s for s, _, _ in results}
    assert statuses <= {200, 429, 503}, statuses
    admitted = [sec for s, sec, _ in results if s == 200]
    refused = [(s, ra) for s, _, ra in results if s != 200]
    assert refused, "the burst never exceeded capacity: raise BURST or lower QUEUE_LIMIT"
    assert len(admitted) >= QUEUE_LIMIT, len(admitted)
    assert all(ra is not None and int(ra) >= 1 for _, ra in refused), refused[:5]

    # If all were queued, the last would wait behind the whole burst; admission keeps p99 far below.
    all_queued = BURST * statistics.median(quiet) / WORKERS
    bound = min(60 * p99(quiet), all_queued / 2)
    report = f"admitted {len(admitted)}, p99 {p99(admitted):.3f}s; unloaded p99 {p99(quiet):.3f}s; bound {bound:.3f}s"
    assert p99(admitted) <= bound, report

    assert wait_drained(url) == 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        r = client.post("/v1/query", json={"question": "What does the waggle dance tell hive mates?"})
    assert r.status_code == 200 and "waggle" in r.json()["answer"], r.text
