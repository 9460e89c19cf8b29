"""Shared for reliability tests: one real two-process worker and one API server per session of this folder."""

from __future__ import annotations

import base64
import uuid

import pytest
import redis

from serving.auth import create_key
from tests.serving_support import TEST_REDIS, ApiServer, start_worker, stop_worker, wait_job

BEES = "# Bees\n\nHoneybees communicate the location of flowers to their hive mates with a waggle dance.\n"


@pytest.fixture(scope="package")
def rel_settings(migrated, tmp_path_factory):
    redis.Redis.from_url(TEST_REDIS).flushdb()
    config = tmp_path_factory.mktemp("config") / "pipeline.yaml"
    config.write_text("name: reliability\n")
    update = {"broker_url": TEST_REDIS, "config_path": config, "query_timeout_s": 120.0}
    return migrated.model_copy(update={**update, "rate_limit_per_s": 1000.0, "rate_limit_burst": 1000.0})


@pytest.fixture(scope="package")
def two_process_worker(rel_settings, tmp_path_factory):
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = start_worker(rel_settings, log, concurrency=2)
    yield log
    stop_worker(proc)


@pytest.fixture(scope="package")
def rel_api(rel_settings, two_process_worker):
    with ApiServer(rel_settings) as server:
        yield server


@pytest.fixture(scope="package")
def bee_tenant(db, rel_api):
    """A tenant holding one small document, ingested through the API: (tenant id, API key)."""
    return make_bee_tenant(db, rel_api)


def make_bee_tenant(db, rel_api) -> tuple[str, str]:
    from sluice.db import create_tenant

    tenant = f"rel-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    key = create_key(db, tenant).secret
    with rel_api.client(key) as client:
        files = [{"name": "bees.md", "content_base64": base64.b64encode(BEES.encode()).decode()}]
        job = client.post("/v1/jobs", json={"kind": "ingest", "files": files}).json()["job_id"]
        assert wait_job(client, job)["status"] == "succeeded"
    return tenant, key
