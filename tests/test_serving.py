"""The serving layer end to end: real Redis broker, real `sluice worker` subprocess, real Postgres, real HTTP."""

from __future__ import annotations

import base64
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.auth import create_key, revoke_key
from serving.celery_app import create_celery
from sluice.config import PipelineConfig
from tests.conftest import SAMPLE
from tests.serving_support import ApiServer, module_settings, start_worker, stop_worker, wait_job

BEES = "# Bees\n\nHoneybees communicate the location of flowers to their hive mates with a waggle dance.\n"
BEES_MORE = "# Pollen\n\nHoneybees carry pollen home in baskets on their hind legs, packed with nectar and saliva.\n"


@pytest.fixture(scope="module")
def serving_settings(migrated, private_redis, tmp_path_factory):
    return module_settings(migrated, private_redis.url, tmp_path_factory, "serving-test")


@pytest.fixture(scope="module")
def worker(serving_settings, tmp_path_factory):
    proc = start_worker(serving_settings, tmp_path_factory.mktemp("worker") / "worker.log")
    yield proc
    stop_worker(proc)


@pytest.fixture(scope="module")
def api(serving_settings, worker):
    with ApiServer(serving_settings) as server:
        yield server


@pytest.fixture(scope="module")
def tenants(db, api, serving_settings):
    """Tenant A holds the sample corpus (its ingest folder is the sample), tenant B one uploaded file."""
    from sluice.db import create_tenant

    out = {}
    for name in ("a", "b"):
        tenant = f"srv{name}-{uuid.uuid4().hex[:8]}"
        create_tenant(db, tenant)
        out[name] = (tenant, create_key(db, tenant).secret)
    (serving_settings.ingest_root / out["a"][0]).symlink_to(SAMPLE, target_is_directory=True)
    with api.client(out["a"][1]) as client:
        job = client.post("/v1/jobs", json={"kind": "ingest", "source": "corpus"})
        assert job.status_code == 202, job.text
        done = wait_job(client, job.json()["job_id"], timeout=300)
        assert done["status"] == "succeeded" and done["result"]["ingested"] == 12, done
    with api.client(out["b"][1]) as client:
        files = [{"name": "bees.md", "content_base64": base64.b64encode(BEES.encode()).decode()}]
        job = client.post("/v1/jobs", json={"kind": "ingest", "files": files})
        assert job.status_code == 202, job.text
        assert wait_job(client, job.json()["job_id"])["status"] == "succeeded"
    return out


def _stats_total(settings, task: str = "sluice.query") -> int:
    """How many times the workers ran `task` (from the workers' own counters).

    A broadcast reply can miss its timeout on a loaded machine; an empty answer is asked again
    rather than read as "ran nothing" (that misreading made the idempotency test flake).
    """
    inspect = create_celery(settings).control.inspect(timeout=2)
    for _ in range(5):
        if stats := inspect.stats():
            return sum(s.get("total", {}).get(task, 0) for s in stats.values())
    raise AssertionError("no worker answered `inspect stats` five times")


def _jobs_for(db, tenant: str, question: str) -> int:
    """Jobs the API recorded (and so enqueued) for this question."""
    with db.tenant(tenant) as conn:
        return conn.execute("SELECT count(*) FROM jobs WHERE request->>'question' = %s", (question,)).fetchone()[0]


def test_health_and_readiness(api):
    with api.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "workers": "ok: 1 worker(s), 1 process(es)"}
        assert "sluice_http_requests_total" in client.get("/metrics").text


def test_readiness_counts_only_workers_on_its_own_broker(api, serving_settings):
    other = serving_settings.model_copy(update={"broker_url": serving_settings.broker_url.rsplit("/", 1)[0] + "/15"})
    with ApiServer(other) as server, server.client() as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["broker"] == "ok" and checks["workers"].startswith("error: no worker heartbeat")


def test_sync_query_round_trip(api, tenants):
    with api.client(tenants["a"][1]) as client:
        r = client.post("/v1/query", json={"question": "How many days do I have to return an unridden bike?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "45 days" in body["answer"]
    assert body["citations"][0]["document"] == "returns-policy.md"
    start, end = body["citations"][0]["span"]
    assert 0 <= start < end
    assert body["config_id"] == PipelineConfig().config_id
    assert body["model_tier"] == "default"
    assert {"embed", "retrieve", "generate", "worker_total", "api_total"} <= set(body["timings_ms"])
    assert body["generation"]["model"] == "extractive" and body["generation"]["tokens_per_s"] is None


def test_async_query_job(api, tenants):
    with api.client(tenants["a"][1]) as client:
        r = client.post("/v1/jobs", json={"kind": "query", "question": "How long is the carbon frame warranty?"})
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['job_id']}"
        done = wait_job(client, r.json()["job_id"])
    assert done["status"] == "succeeded", done
    assert "7 years" in done["result"]["answer"]


def test_streaming_sends_tokens_then_done(api, tenants):
    question = {"question": f"What does the warranty cover for carbon forks? ({uuid.uuid4().hex[:6]})", "stream": True}
    with api.client(tenants["a"][1]) as client, client.stream("POST", "/v1/query", json=question) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [block for block in r.read().decode().split("\n\n") if block]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    assert names[0] == "accepted" and names[-1] == "done" and "token" in names
    tokens = [json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: token")]
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert "".join(tokens) == done["answer"]


def test_auth_missing_wrong_and_revoked_keys(api, db, tenants):
    body = {"question": "anything"}
    with api.client() as client:
        assert client.post("/v1/query", json=body).status_code == 401
    with api.client("sk_nope_nope") as client:
        r = client.post("/v1/query", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    key = create_key(db, tenants["a"][0])
    with api.client(key.secret) as client:
        assert client.get("/v1/jobs/none").status_code == 404  # authenticated: the job is just missing
        assert revoke_key(db, key.key_id) == tenants["a"][0]
        assert client.get("/v1/jobs/none").status_code == 401


def test_cross_tenant_attempts_return_nothing(api, tenants):
    with api.client(tenants["a"][1]) as a:
        job_a = a.post("/v1/jobs", json={"kind": "query", "question": "What is the restocking fee?"}).json()["job_id"]
        assert wait_job(a, job_a)["status"] == "succeeded"
    with api.client(tenants["b"][1]) as b:
        r = b.post("/v1/query", json={"question": "What is the restocking fee under the Test Ride Promise?"})
        assert r.status_code == 200
        assert {c["document"] for c in r.json()["citations"]} <= {"bees.md"}
        assert "8 percent" not in r.json()["answer"]
        assert b.get(f"/v1/jobs/{job_a}").status_code == 404


def test_same_idempotency_key_is_scoped_per_tenant(api, tenants):
    key = f"shared-{uuid.uuid4().hex}"
    body = {"question": "How do honeybees tell each other where flowers are?"}
    with api.client(tenants["a"][1]) as a, api.client(tenants["b"][1]) as b:
        ra = a.post("/v1/query", json=body, headers={"Idempotency-Key": key})
        rb = b.post("/v1/query", json=body, headers={"Idempotency-Key": key})
    assert ra.status_code == rb.status_code == 200
    assert [c["document"] for c in rb.json()["citations"]] == ["bees.md"]
    assert "bees.md" not in {c["document"] for c in ra.json()["citations"]}


def test_idempotency_twenty_concurrent_identical_requests(api, tenants, serving_settings, db):
    key = f"idem-{uuid.uuid4().hex}"
    body = {"question": f"Can I return a used saddle? ({uuid.uuid4().hex[:8]})"}  # unique: no cache hit
    before = _stats_total(serving_settings)

    def post(_: int):
        with api.client(tenants["a"][1]) as client:
            return client.post("/v1/query", json=body, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(post, range(20)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1  # byte-identical bodies
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 19
    assert _stats_total(serving_settings) - before == 1  # one unit of work in the worker
    assert _jobs_for(db, tenants["a"][0], body["question"]) == 1  # enqueued once
    with api.client(tenants["a"][1]) as client:
        again = client.post("/v1/query", json=body, headers={"Idempotency-Key": key})
        assert again.content == responses[0].content
        other = client.post("/v1/query", json={"question": "something else"}, headers={"Idempotency-Key": key})
        assert other.status_code == 422 and "different request body" in other.json()["detail"]


def test_idempotent_job_submission_enqueues_once(api, tenants):
    key = f"job-{uuid.uuid4().hex}"
    body = {"kind": "query", "question": "Which frames have a lifetime warranty?"}
    with api.client(tenants["a"][1]) as client:
        first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
        second = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]


def test_ingest_invalidates_the_answer_cache(api, tenants, serving_settings):
    question = {"question": "What do honeybees carry home?"}
    ingests_before = _stats_total(serving_settings, "sluice.ingest")
    with api.client(tenants["b"][1]) as client:
        first = client.post("/v1/query", json=question).json()
        assert first["cached"] is False
        cached = client.post("/v1/query", json=question).json()
        assert cached["cached"] is True and cached["answer"] == first["answer"]
        assert cached["generation"]["tokens_per_s"] is None  # nothing decoded, then or now
        files = [{"name": "pollen.md", "content_base64": base64.b64encode(BEES_MORE.encode()).decode()}]
        job = client.post("/v1/jobs", json={"kind": "ingest", "files": files}).json()
        assert wait_job(client, job["job_id"])["status"] == "succeeded"
        after = client.post("/v1/query", json=question).json()
    assert _stats_total(serving_settings, "sluice.ingest") - ingests_before == 1  # routed to one queue, run once
    assert after["cached"] is False
    assert after["corpus_version"] > first["corpus_version"]
    assert "pollen.md" in {c["document"] for c in after["citations"]}


def test_cache_is_per_tenant(api, tenants):
    question = {"question": "How do bees find flowers?"}
    with api.client(tenants["b"][1]) as b:
        b.post("/v1/query", json=question)
        assert b.post("/v1/query", json=question).json()["cached"] is True
    with api.client(tenants["a"][1]) as a:
        r = a.post("/v1/query", json=question).json()
    assert r["cached"] is False and "bees.md" not in {c["document"] for c in r["citations"]}


@pytest.mark.parametrize("source", ["../sample", "/etc", "corpus/../../..", "no-such-folder"])
def test_named_sources_outside_the_root_are_refused(api, tenants, source):
    with api.client(tenants["a"][1]) as client:
        r = client.post("/v1/jobs", json={"kind": "ingest", "source": source})
    assert r.status_code == 422, r.text


def test_upload_names_must_be_plain(api, tenants):
    files = [{"name": "../evil.md", "content_base64": base64.b64encode(b"x").decode()}]
    with api.client(tenants["a"][1]) as client:
        assert client.post("/v1/jobs", json={"kind": "ingest", "files": files}).status_code == 422


def test_rate_limit_returns_429_with_retry_after(serving_settings, worker, db, new_tenant):
    limited = serving_settings.model_copy(update={"rate_limit_per_s": 0.2, "rate_limit_burst": 2.0})
    key = create_key(db, new_tenant("rate")).secret
    with ApiServer(limited) as server, server.client(key) as client:
        codes = [client.get("/v1/jobs/none").status_code for _ in range(3)]
        r = client.get("/v1/jobs/none")
    assert codes == [404, 404, 429]  # a burst of two, then refused
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_backpressure_503_then_recovery(serving_settings, worker, tenants):
    limits = serving_settings.model_copy(update={"queue_limit": 2})
    control = create_celery(serving_settings).control
    control.cancel_consumer("query", reply=True, timeout=5)
    accepted, refused = [], None
    try:
        with ApiServer(limits) as server, server.client(tenants["a"][1]) as client:
            for n in range(10):
                r = client.post("/v1/jobs", json={"kind": "query", "question": f"Where is my refund? {n}"})
                if r.status_code == 503:
                    refused = r
                    break
                assert r.status_code == 202
                accepted.append(r.json()["job_id"])
                time.sleep(0.25)  # let the cached queue depth refresh
            assert refused is not None and int(refused.headers["retry-after"]) >= 1
            assert len(accepted) == 2
            streamed = client.post("/v1/query", json={"question": "Refund? (stream)", "stream": True})
            assert streamed.status_code == 503  # refused before the stream starts, not a broken stream
            control.add_consumer("query", reply=True, timeout=5)
            assert all(wait_job(client, job)["status"] == "succeeded" for job in accepted)  # none dropped
            time.sleep(0.3)
            r = client.post("/v1/jobs", json={"kind": "query", "question": "Where is my refund?"})
            assert r.status_code == 202
    finally:
        control.add_consumer("query", reply=True, timeout=5)


def test_new_config_is_picked_up_without_restart(api, tenants, serving_settings):
    question = {"question": "How long is the warranty on a carbon fibre frame?"}
    path = serving_settings.config_path
    with api.client(tenants["a"][1]) as client:
        before = client.post("/v1/query", json=question).json()
        assert before["config_id"] == PipelineConfig().config_id and len(before["citations"]) == 3
        try:
            path.write_text("name: serving-test\ngenerator:\n  kind: extractive\n  max_sentences: 1\n")
            after = client.post("/v1/query", json=question).json()
        finally:
            path.write_text("name: serving-test\n")
    assert after["config_id"] != before["config_id"]  # a new cache key too: no stale answer
    assert after["cached"] is False and len(after["citations"]) == 1


def test_idempotency_key_expires(serving_settings, worker, tenants):
    short = serving_settings.model_copy(update={"idempotency_ttl_s": 1})
    body = {"kind": "query", "question": "Is there a fee for returning a bike?"}
    with ApiServer(short) as server, server.client(tenants["a"][1]) as client:
        first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "short-lived"}).json()
        assert client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "short-lived"}).json() == first
        time.sleep(1.5)
        later = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "short-lived"}).json()
    assert later["job_id"] != first["job_id"]  # expired: a new unit of work


def test_nul_characters_are_refused_with_422(api, tenants):
    with api.client(tenants["a"][1]) as client:
        r = client.post("/v1/jobs", json={"kind": "query", "question": "ok", "filters": {"a\u0000": 1}})
        assert r.status_code == 422 and "NUL" in r.text
        assert client.post("/v1/query", json={"question": "fee\u0000?"}).status_code == 422
