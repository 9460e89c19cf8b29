"""kill -9 and restart of the broker while jobs wait in its queues: every accepted job still completes.

Redis: this module's own redis-server, started with `--appendonly yes --appendfsync always`
(RedisServer): each enqueue is on disk before Redis replies, so before the API answers 202. Without
an append-only file a restarted Redis comes back empty and queued jobs are lost; production Redis
needs the same setting (README, "Reliability").

RabbitMQ: a private node of this module (RabbitServer), never the system one. Queues are durable,
messages persistent, and the API publishes with confirms (serving.celery_app): RabbitMQ confirms a
persistent message on a durable queue once it is on disk, so the 202 comes after that.
"""

from __future__ import annotations

import base64
import time

import httpx
import pytest
from kombu import Connection

from serving.celery_app import INGEST_QUEUE, QUERY_QUEUE
from tests.reliability.conftest import BEES, make_tenant
from tests.serving_support import ApiServer, RabbitServer, start_worker, stop_worker

QUESTIONS = ("How do honeybees tell hive mates where flowers are?", "What dance do bees do?", "Why do bees dance?")


def _bee_corpus(db, pipeline, embedder, tmp_path) -> tuple[str, str]:
    """A tenant whose bee document is ingested in this process (no worker may run before the restart)."""
    from tasks.ingest import ingest_source

    tenant, key = make_tenant(db)
    (tmp_path / "bees.md").write_text(BEES)
    assert ingest_source(db, tenant, pipeline, embedder, tmp_path, 1_000_000).ingested == 1
    return tenant, key


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request, private_redis, tmp_path_factory):
    """The restartable broker under test: the module's redis-server, or a private RabbitMQ node."""
    if request.param == "redis":
        yield private_redis
        return
    with RabbitServer(tmp_path_factory.mktemp("rabbitmq")) as rabbit:
        yield rabbit


def _depths(url: str) -> tuple[int, int]:
    """Messages waiting in the ingest and query queues, read through kombu (either broker)."""
    with Connection(url, connect_timeout=5) as conn:
        channel = conn.default_channel
        return tuple(channel.queue_declare(q, passive=True).message_count for q in (INGEST_QUEUE, QUERY_QUEUE))


def _down(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception:  # noqa: BLE001 - each transport raises its own connection error
        return True
    return False


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
    rel_settings, broker, db, pipeline, embedder, tmp_path, tmp_path_factory
):
    settings = rel_settings.model_copy(update={"broker_url": broker.url})
    tenant, key = _bee_corpus(db, pipeline, embedder, tmp_path)
    notes = [(f"note{n}.md", f"# Note {n}\n\nHerons number {n} wait motionless in the shallows.\n") for n in range(4)]
    with ApiServer(settings) as api, api.client(key, timeout=60) as client:
        jobs = []
        for name, text in notes:  # no worker is running: every job waits in the broker
            files = [{"name": name, "content_base64": base64.b64encode(text.encode()).decode()}]
            r = client.post("/v1/jobs", json={"kind": "ingest", "files": files})
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
        for question in QUESTIONS:
            r = client.post("/v1/jobs", json={"kind": "query", "question": question})
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
        assert _depths(broker.url) == (len(notes), len(QUESTIONS))

        broker.kill()
        assert _down(broker.url)  # really down
        broker.start()
        assert _depths(broker.url) == (len(notes), len(QUESTIONS))

        worker = start_worker(settings, tmp_path_factory.mktemp("worker") / "worker.log")
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
