"""Capacity is shared fairly: unauthenticated requests never take it, and no tenant takes all of it.

A private worker and `sluice serve` with a short query queue (SLUICE_QUEUE_LIMIT) and a per-tenant cap
(SLUICE_TENANT_CONCURRENCY). Before, each query took one of the process's slots before its key was
checked, so a flood with bogus keys turned other tenants' queries into 503s; and a tenant had no cap
but the process's own.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import uuid
from collections import Counter

import httpx
import pytest

from serving.auth import create_key
from sluice.db import create_tenant
from tests.reliability.raw_http import connect, head, post_raw
from tests.reliability.stack import drop_keys, private_settings
from tests.serving_support import serving_stack, wait_job

QUEUE_LIMIT, TENANT_CAP, FLOOD = 4, 2, 64
BEES = "# Bees\n\nHoneybees tell hive mates where flowers are with a waggle dance.\n"


@pytest.fixture(scope="module")
def fair(migrated, db, tmp_path_factory):
    """(API URL, key of a tenant holding one document, key of another tenant)."""
    tmp = tmp_path_factory.mktemp("fair")
    update = {"queue_limit": QUEUE_LIMIT, "tenant_concurrency": TENANT_CAP, "answer_cache": False}
    settings = private_settings(migrated, "fair", tmp, **update)
    keys = []
    for _ in range(2):
        tenant = f"fair-{uuid.uuid4().hex[:8]}"
        create_tenant(db, tenant)
        keys.append(create_key(db, tenant).secret)
    try:
        with serving_stack(settings, tmp, api_process=True) as stack:
            with stack.client(keys[0], timeout=120) as client:
                files = [{"name": "bees.md", "content_base64": base64.b64encode(BEES.encode()).decode()}]
                job = client.post("/v1/jobs", json={"kind": "ingest", "files": files}).json()["job_id"]
                assert wait_job(client, job)["status"] == "succeeded"
            yield stack.url, keys[0], keys[1]
    finally:
        drop_keys(settings)


async def flood(url: str, stop: asyncio.Event) -> Counter:
    """POST /v1/query with a new well-formed bogus key each time, FLOOD at once, until `stop`; statuses."""
    u, seen = httpx.URL(url), Counter()

    async def one_connection() -> None:
        while not stop.is_set():
            bogus = f"sk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
            seen[(await post_raw(u.host, u.port, bogus, {"question": "What do bees dance?"}))[0]] += 1

    await asyncio.gather(*(one_connection() for _ in range(FLOOD)))
    return seen


async def served_during_flood(url: str, key: str, n: int) -> tuple[list[int], Counter]:
    """Statuses of n queries sent one after another by a real tenant during a flood; the flood's statuses."""
    u, stop = httpx.URL(url), asyncio.Event()
    flooding = asyncio.create_task(flood(url, stop))
    await asyncio.sleep(0.5)
    statuses = []
    for i in range(n):
        question = {"question": f"How do honeybees tell hive mates where flowers are? ({i})"}
        statuses.append((await post_raw(u.host, u.port, key, question))[0])
    stop.set()
    return statuses, await flooding


def test_bogus_key_flood_leaves_tenants_their_capacity(fair):
    url, key, _ = fair
    statuses, flooded = asyncio.run(served_during_flood(url, key, 10))
    assert statuses == [200] * 10, f"the real tenant got {Counter(statuses)} during the flood"
    assert set(flooded) == {401} and flooded[401] >= 100, flooded


def test_tenant_concurrency_cap(fair):
    url, key, other = fair
    held = [connect(url) for _ in range(TENANT_CAP)]
    try:
        for sock in held:  # admitted, then waiting for the rest of their bodies
            sock.sendall(head("POST", "/v1/jobs", key, length=1000) + b"{")
        time.sleep(1.0)
        with httpx.Client(base_url=url, timeout=30) as client:
            capped = client.get("/v1/jobs/none", headers={"Authorization": f"Bearer {key}"})
            assert capped.status_code == 429 and int(capped.headers["retry-after"]) >= 1, capped.text
            assert "SLUICE_TENANT_CONCURRENCY" in capped.json()["detail"], capped.text
            assert client.get("/v1/jobs/none", headers={"Authorization": f"Bearer {other}"}).status_code == 404
    finally:
        for sock in held:
            sock.close()  # the server sees the disconnects and gives the slots back
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        deadline = time.monotonic() + 10
        while (r := client.get("/v1/jobs/none")).status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert r.status_code == 404, r.text
