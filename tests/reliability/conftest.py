"""Shared for reliability tests: per test module, a private Redis, a real two-process worker and an API server.

Module scope, not package scope: each module's worker is stopped at the module's end, and its broker is
a redis-server of its own, so no module's worker ever takes (or answers pings for) another's tasks.
"""

from __future__ import annotations

import base64
import uuid

import pytest

from serving.auth import create_key
from tests.serving_support import wait_job

BEES = "# Bees\n\nHoneybees communicate the location of flowers to their hive mates with a waggle dance.\n"


@pytest.fixture(scope="module")
def rel_settings(stack_settings):
    return stack_settings("reliability", query_timeout_s=120.0)


@pytest.fixture(scope="module")
def rel_api(rel_settings, start_stack):
    """An API in front of a running `sluice worker --concurrency 2`."""
    return start_stack(rel_settings, concurrency=2)


@pytest.fixture(scope="module")
def two_process_worker(rel_api):
    """The log file of the running `sluice worker --concurrency 2`."""
    return rel_api.worker_log


@pytest.fixture(scope="module")
def bee_tenant(db, rel_api):
    """A tenant holding one small document, ingested through the API: (tenant id, API key)."""
    return make_bee_tenant(db, rel_api)


def make_tenant(db) -> tuple[str, str]:
    """A fresh empty tenant and an API key for it: (tenant id, secret)."""
    from sluice.db import create_tenant

    tenant = f"rel-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    return tenant, create_key(db, tenant).secret


def make_bee_tenant(db, rel_api) -> tuple[str, str]:
    tenant, key = make_tenant(db)
    with rel_api.client(key) as client:
        files = [{"name": "bees.md", "content_base64": base64.b64encode(BEES.encode()).decode()}]
        job = client.post("/v1/jobs", json={"kind": "ingest", "files": files}).json()["job_id"]
        assert wait_job(client, job)["status"] == "succeeded"
    return tenant, key
