"""The seed's scenario: 500 documents uploaded concurrently through the API are all processed.

None is refused for capacity (an accepted upload is queued, never dropped), and the ingest queue
depth seen in /metrics rises while the uploads arrive and drains back to zero as workers catch up.
The query queue's limit is set low here on purpose: ingest has its own, deeper limit
(SLUICE_INGEST_QUEUE_LIMIT), and this test shows the ingest queue growing well past the query one.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import uuid

import httpx
import pytest

from serving.auth import create_key
from sluice.db import create_tenant
from tests.reliability.stack import drop_keys, metric, private_settings
from tests.serving_support import Background, serving_stack

DOCS = 500
QUERY_QUEUE_LIMIT = 50
WORDS = (
    "river delta sediment harbour ferry lighthouse glacier meadow orchard quarry canal bridge tide marsh "
    "beacon granary windmill aqueduct reservoir terrace vineyard foundry tannery bakery mill loom kiln forge"
).split()


def document(n: int) -> bytes:
    """A small Markdown note whose words and length vary with n (so every upload is a new document)."""
    rng = random.Random(n)
    sentences = [
        f"The {rng.choice(WORDS)} near the {rng.choice(WORDS)} was surveyed in {1800 + n} by crew {n}."
        for _ in range(rng.randint(2, 8))
    ]
    return f"# Survey note {n}\n\n{' '.join(sentences)}\n".encode()


@pytest.fixture(scope="module")
def upload_stack(migrated, db, tmp_path_factory):
    """A private worker (two processes) and API: the uploads' queues belong to this module only."""
    tmp = tmp_path_factory.mktemp("uploads")
    settings = private_settings(migrated, "uploads", tmp, queue_limit=QUERY_QUEUE_LIMIT)
    tenant = f"up-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    key = create_key(db, tenant).secret
    try:
        with serving_stack(settings, tmp, concurrency=2, api_process=True) as stack:
            yield stack.url, key, tenant
    finally:
        drop_keys(settings)


class DepthProbe(Background):
    """Scrapes /metrics in a thread and keeps the ingest queue depth samples."""

    def __init__(self, url: str):
        self.url, self.samples = url, []
        super().__init__()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                depth = metric(client.get("/metrics").text, "sluice_queue_depth", 'queue="ingest"')
                self.samples.append((time.monotonic(), depth))
                self._stop.wait(0.25)


async def upload_all(url: str, key: str) -> tuple[list[httpx.Response], int]:
    """POST every document as its own ingest job, all at once; (final responses, attempts retried).

    Each upload carries an Idempotency-Key, as a careful client's would: a connection lost mid-request
    (a reset under load) or a 409 (the first attempt is still being recorded) is retried with the same
    key, so a retried upload is accepted once and never twice.
    """
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=100)
    retried = 0
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as client:

        async def one(n: int) -> httpx.Response:
            nonlocal retried
            content = base64.b64encode(document(n)).decode()
            body = {"kind": "ingest", "files": [{"name": f"note-{n:03d}.md", "content_base64": content}]}
            idem = {"Idempotency-Key": f"upload-{n}-{uuid.uuid4().hex}"}
            for attempt in range(5):
                try:
                    r = await client.post("/v1/jobs", json=body, headers=idem)
                except httpx.TransportError:
                    if attempt == 4:
                        raise
                else:
                    if r.status_code != 409 or attempt == 4:
                        return r
                retried += 1
                await asyncio.sleep(0.5 * (attempt + 1))
            raise AssertionError("unreachable")

        responses = await asyncio.gather(*(one(n) for n in range(DOCS)))
    return responses, retried


def wait_documents(db, tenant: str, want: int, timeout: float) -> int:
    deadline, have = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        with db.tenant(tenant) as conn:
            have = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        if have >= want:
            break
        time.sleep(1)
    return have


def test_500_concurrent_uploads_are_all_processed(upload_stack, db):
    url, key, tenant = upload_stack
    with DepthProbe(url) as probe:
        responses, retried = asyncio.run(upload_all(url, key))
        refused = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 202]
        assert not refused, f"{len(refused)} uploads refused, e.g. {refused[:3]}"
        stored = wait_documents(db, tenant, DOCS, timeout=900)
        time.sleep(1.0)  # one more scrape after the last job
    assert stored == DOCS
    # The server keeps idle connections longer than the client (SLUICE_KEEP_ALIVE_S), so resets are rare.
    assert retried <= DOCS // 50, f"{retried} of {DOCS} uploads had to be retried"

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        results = [client.get(f"/v1/jobs/{r.json()['job_id']}").json() for r in responses]
    assert all(r["status"] == "succeeded" for r in results), [r for r in results if r["status"] != "succeeded"][:3]
    assert sum(r["result"]["ingested"] for r in results) == DOCS
    assert all(r["result"]["failed"] == 0 for r in results)
    with db.tenant(tenant) as conn:
        sources = {row[0] for row in conn.execute("SELECT source_id FROM documents")}
    assert sources == {f"note-{n:03d}.md" for n in range(DOCS)}

    depths = [d for _, d in probe.samples if d is not None]
    assert len(depths) == len(probe.samples) >= 5, probe.samples[:10]
    peak = max(depths)
    # Rose past the query queue's limit (which would have refused these uploads) and drained to zero.
    assert peak > QUERY_QUEUE_LIMIT, depths
    assert depths.index(peak) < len(depths) - 1 and depths[-1] == 0, depths[-10:]
