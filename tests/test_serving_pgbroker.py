"""The zero-config path: embedded Postgres as Celery broker and result backend (no Redis at all)."""

from __future__ import annotations

import base64
import uuid

import pytest

from serving.auth import create_key
from serving.celery_app import broker_url, result_backend
from tests.serving_support import stop_worker, wait_job

DOC = "# Otters\n\nSea otters hold hands while they sleep so that they do not drift apart.\n"


@pytest.fixture(scope="module")
def pg_settings(migrated):
    settings = migrated.model_copy(
        update={"broker_url": None, "result_backend": None, "broker_db_name": "sluice_broker_test"}
    )
    assert broker_url(settings).startswith("sluicepg+postgresql+psycopg://")
    assert result_backend(settings).startswith("db+postgresql+psycopg://")
    return settings


@pytest.fixture(scope="module")
def pg_api(pg_settings, start_stack):
    return start_stack(pg_settings)


def test_upload_ingest_then_sync_and_streamed_query(pg_api, db, new_tenant):
    key = create_key(db, new_tenant("pg")).secret
    files = [{"name": "otters.md", "content_base64": base64.b64encode(DOC.encode()).decode()}]
    with pg_api.client(key) as client:
        job = client.post("/v1/jobs", json={"kind": "ingest", "files": files}, headers={"Idempotency-Key": "up-1"})
        assert job.status_code == 202, job.text
        assert wait_job(client, job.json()["job_id"])["status"] == "succeeded"
        question = f"How do sea otters avoid drifting apart? {uuid.uuid4().hex[:6]}"
        r = client.post("/v1/query", json={"question": question})
        assert r.status_code == 200, r.text
        assert r.json()["citations"][0]["document"] == "otters.md" and "hold hands" in r.json()["answer"]
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["checks"]["broker"] == "ok"


def test_readyz_sees_workers_by_heartbeat_without_broadcast(pg_api):
    """Celery pings need a broadcast exchange this broker lacks: heartbeat rows work (runs last: stops the worker)."""
    with pg_api.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["workers"] == "ok: 1 worker(s), 1 process(es)"
        stop_worker(pg_api.worker)  # a clean shutdown removes its heartbeat at once
        gone = client.get("/readyz")
    assert gone.status_code == 503
    assert gone.json()["checks"]["workers"].startswith("error: no worker heartbeat on this broker")
