"""kill -9 and restart of the Redis broker while jobs wait in its queues: every accepted job still completes.

The broker is this module's own redis-server, started with `--appendonly yes --appendfsync always`
(RedisServer): each enqueue is on disk before Redis replies, so before the API answers 202. Without
an append-only file a restarted Redis comes back empty and queued jobs are lost; production Redis
needs the same setting (README, "Reliability").
"""

from __future__ import annotations

import base64
import time

import httpx
import pytest
import redis

from serving.celery_app import INGEST_QUEUE, QUERY_QUEUE
from tests.reliability.conftest import BEES, make_tenant
from tests.serving_support import ApiServer, start_worker, stop_worker

QUESTIONS = ("How do honeybees tell hive mates where flowers are?", "What dance do bees do?", "Why do bees dance?")


def _bee_corpus(db, pipeline, embedder, tmp_path) -> tuple[str, str]:
    """A tenant whose bee document is ingested in this process (no worker may run before the restart)."""
    from tasks.ingest import ingest_source

    tenant, key = make_tenant(db)
    (tmp_path / "bees.md").write_text(BEES)
    assert ingest_source(db, tenant, pipeline, embedder, tmp_path, 1_000_000).ingested == 1
    return tenant, key


def _status(client: httpx.Client, job_id: str) -> dict:
    """GET /v1/jobs/{id}, tolerating the moments the API's own broker connections take to come back."""
    for _ in range(50):
        r = client.get(f"/v1/jobs/{job_id}")
        if r.status_code == 200:
            return r.json()
        time.sleep(0.2)
    raise AssertionError(f"job status kept failing: {r.status_code} {r.text}")


def _finish(client: httpx.Client, jobs: list[str], timeout: float = 240) -> dict[str, dict]:
    done: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(jobs) and time.monotonic() < deadline:
        for job in set(jobs) - set(done):
            body = _status(client, job)
            if body["status"] in ("succeeded", "failed"):
                done[job] = body
        time.sleep(0.3)
    assert len(done) == len(jobs), f"jobs never finished: {set(jobs) - set(done)}"
    return done


def test_jobs_queued_across_a_broker_kill_9_all_complete(
    rel_settings, private_redis, db, pipeline, embedder, tmp_path, tmp_path_factory
):
    tenant, key = _bee_corpus(db, pipeline, embedder, tmp_path)
    notes = [(f"note{n}.md", f"# Note {n}\n\nHerons number {n} wait motionless in the shallows.\n") for n in range(4)]
    with ApiServer(rel_settings) as api, api.client(key, timeout=60) as client:
        jobs = []
        for name, text in notes:  # no worker is running: every job waits in Redis
            files = [{"name": name, "content_base64": base64.b64encode(text.encode()).decode()}]
            r = client.post("/v1/jobs", json={"kind": "ingest", "files": files})
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
        for question in QUESTIONS:
            r = client.post("/v1/jobs", json={"kind": "query", "question": question})
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
        broker = redis.Redis.from_url(private_redis.url)
        assert (broker.llen(INGEST_QUEUE), broker.llen(QUERY_QUEUE)) == (len(notes), len(QUESTIONS))

        private_redis.kill()
        with pytest.raises(redis.ConnectionError):
            broker.ping()  # really down
        private_redis.start()
        assert (broker.llen(INGEST_QUEUE), broker.llen(QUERY_QUEUE)) == (len(notes), len(QUESTIONS))

        worker = start_worker(rel_settings, tmp_path_factory.mktemp("worker") / "worker.log")
        try:
            done = _finish(client, jobs)
        finally:
            stop_worker(worker)
    assert all(body["status"] == "succeeded" for body in done.values()), done
    answers = [done[j]["result"]["answer"] for j in jobs[len(notes) :]]
    assert all("waggle" in a for a in answers), answers
    assert sum(done[j]["result"]["ingested"] for j in jobs[: len(notes)]) == len(notes)
    with db.tenant(tenant) as conn:
        sources = {r[0] for r in conn.execute("SELECT source_id FROM documents").fetchall()}
    assert sources == {"bees.md"} | {name for name, _ in notes}
