"""Jobs table hygiene: a running worker deletes finished jobs after SLUICE_JOB_RETENTION_S (every tenant's,
from its housekeeping timer), never before, and never a job that has not finished."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.reliability.conftest import make_tenant
from tests.serving_support import wait_job

RETENTION_S = 5


@pytest.fixture(scope="module")
def short_retention(rel_settings, start_stack):
    """An API and a worker that keep finished jobs for RETENTION_S seconds."""
    return start_stack(rel_settings.model_copy(update={"job_retention_s": RETENTION_S}))


def _finished(db, tenant: str, job_id: str):
    """(finished_at, now) of the job's row, or None once it is gone."""
    with db.tenant(tenant) as conn:
        return conn.execute("SELECT finished_at, now() FROM jobs WHERE job_id = %s", (job_id,)).fetchone()


def _finished_at(db, tenant: str, job_id: str, timeout: float = 10):
    """When the worker marked the job finished (right after storing its result)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = _finished(db, tenant, job_id)
        assert row is not None, f"job {job_id} gone before it was seen finished"
        if row[0] is not None:
            return row[0]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not marked finished in {timeout}s")


def _expired_after(db, tenant: str, job_id: str, finished_at, timeout: float = 60) -> float:
    """Seconds from the job finishing to the first time its row was seen gone."""
    deadline = time.monotonic() + timeout
    while _finished(db, tenant, job_id) is not None:
        assert time.monotonic() < deadline, f"job {job_id} not expired in {timeout}s"
        time.sleep(0.2)
    with db.tenant(tenant) as conn:
        return (conn.execute("SELECT now()").fetchone()[0] - finished_at).total_seconds()


def test_finished_jobs_expire_after_the_retention_and_unfinished_ones_stay(short_retention, db):
    stale = str(uuid.uuid4())
    jobs = []
    for _ in range(2):  # two tenants: the sweep is not scoped to one
        tenant, key = make_tenant(db)
        with short_retention.client(key) as client:
            job = client.post("/v1/jobs", json={"kind": "query", "question": "Anything stored?"}).json()["job_id"]
            assert wait_job(client, job)["status"] in ("succeeded", "failed")  # no index yet: an error result
        jobs.append((tenant, key, job, _finished_at(db, tenant, job)))
    # Queued a month ago and never finished (its message lost): expiry must not take it.
    db.execute_as(
        tenant,
        "INSERT INTO jobs (job_id, tenant_id, kind, created_at) VALUES (%s, %s, 'query', now() - interval '30 days')",
        (stale, tenant),
    )
    for tenant, key, job, finished_at in jobs:
        assert _expired_after(db, tenant, job, finished_at) >= RETENTION_S
        with short_retention.client(key) as client:
            assert client.get(f"/v1/jobs/{job}").status_code == 404
    row = _finished(db, tenant, stale)  # swept past by at least one sweep since it was written
    assert row is not None and row[0] is None
