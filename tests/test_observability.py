"""Metrics and logs end to end: real `sluice serve` and `sluice worker` processes sharing one
PROMETHEUS_MULTIPROC_DIR, a real Redis broker; queries through HTTP, then /metrics is scraped and
the processes' log files are parsed as JSON lines."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from serving.auth import create_key
from serving.backpressure import oldest_age
from serving.celery_app import QUERY_QUEUE, create_celery
from sluice.metrics import ENQUEUED_AT, oldest_age_redis
from tests.serving_support import free_port, wait_job

BEES = "# Bees\n\nHoneybees communicate the location of flowers to their hive mates with a waggle dance.\n"


@pytest.fixture(scope="module")
def mp_settings(stack_settings):
    """This module's own redis-server as broker: `sluice status` must count this module's worker only."""
    return stack_settings("metrics-test", trace_console=True)


@pytest.fixture(scope="module")
def stack(mp_settings, start_stack, tmp_path_factory):
    """Worker and API as separate processes, one multiprocess metrics folder."""
    prom = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("prom"))}
    return start_stack(mp_settings, api_process=True, extra_env=prom)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def test_queries_move_the_series(stack, db):
    from sluice.db import create_tenant

    tenant = f"met-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    before = scrape(stack.url)
    with stack.client(create_key(db, tenant).secret) as client:
        _ingest_then_ask_three_times(client)
    after = scrape(stack.url)

    def moved(name: str, by: float = 1, **labels: str) -> None:
        delta = total(after, name, **labels) - total(before, name, **labels)
        assert delta >= by, (name, labels, delta)

    moved("sluice_query_seconds_count", 3, tenant=tenant)
    moved("sluice_query_seconds_count", 1, tenant=tenant, cached="true", tier="default")
    moved("sluice_time_to_first_token_seconds_count", 1, tenant=tenant, stream="true")
    moved("sluice_time_to_first_token_seconds_count", 2, tenant=tenant, stream="false")
    moved("sluice_queue_wait_seconds_count", 2, queue="query")  # recorded in the worker process
    moved("sluice_queue_wait_seconds_count", 1, queue="ingest")
    moved("sluice_stage_seconds_count", 2, stage="retrieve")
    moved("sluice_router_decisions_total", 2, tier="default")
    moved("sluice_answer_cache_total", 1, result="hit")
    moved("sluice_answer_cache_total", 2, result="miss")
    moved("sluice_embedding_cache_total", 1)
    moved("sluice_ingest_documents_total", 1, outcome="ingested")
    moved("sluice_ingest_chunks_total", 1)
    moved("sluice_tasks_total", 2, task="sluice.query", outcome="ok")
    moved("sluice_http_request_seconds_count", 3, route="/v1/query")
    assert ("sluice_tokens_total", (("kind", "completion"), ("model", "extractive"), ("tenant", tenant))) in after
    assert total(after, "sluice_broker_up") == 1
    assert ("sluice_queue_depth", (("queue", "query"),)) in after


def _ingest_then_ask_three_times(client: httpx.Client) -> None:
    """Upload the bee note, ask about it twice (the second is an answer-cache hit), then once streamed."""
    files = [{"name": "bees.md", "content_base64": base64.b64encode(BEES.encode()).decode()}]
    job = client.post("/v1/jobs", json={"kind": "ingest", "files": files})
    assert wait_job(client, job.json()["job_id"])["status"] == "succeeded"
    question = {"question": "How do honeybees tell hive mates where flowers are?"}
    for _ in range(2):
        r = client.post("/v1/query", json=question)
        assert r.status_code == 200 and "waggle" in r.json()["answer"], r.text
    with client.stream("POST", "/v1/query", json={"question": "What do bees dance?", "stream": True}) as s:
        assert s.status_code == 200 and "event: done" in s.read().decode()


def test_queue_depth_and_oldest_age_read_from_the_broker(stack, mp_settings):
    """With no worker on a scratch queue, a message waits: depth and age are scraped from Redis."""
    app = create_celery(mp_settings)
    queue = f"scratch-{uuid.uuid4().hex[:6]}"
    app.send_task("sluice.nothing", args=[{}], queue=queue, headers={ENQUEUED_AT: time.time() - 30})
    client = redis.Redis.from_url(mp_settings.broker_url)
    try:
        assert 29 <= oldest_age_redis(client, queue) < 60
        assert 29 <= oldest_age(app, queue) < 60
        assert oldest_age(app, f"empty-{queue}") is None
        before = scrape(stack.url)
        assert total(before, "sluice_queue_oldest_age_seconds", queue=QUERY_QUEUE) < 30
    finally:
        client.delete(queue)
    assert re.search(r"sluice_queue_depth\{queue=\"ingest\"\}", httpx.get(f"{stack.url}/metrics").text)


def test_oldest_age_on_the_postgres_broker(migrated):
    """The embedded-Postgres (SQLAlchemy) transport: the oldest visible row's enqueue header."""
    settings = migrated.model_copy(update={"broker_url": None, "result_backend": None})
    app = create_celery(settings)
    queue = f"scratch-{uuid.uuid4().hex[:6]}"
    assert oldest_age(app, queue) is None
    app.send_task("sluice.nothing", args=[{}], queue=queue, headers={ENQUEUED_AT: time.time() - 30})
    app.send_task("sluice.nothing", args=[{}], queue=queue, headers={ENQUEUED_AT: time.time()})
    try:
        assert 29 <= oldest_age(app, queue) < 60
    finally:
        with app.pool.acquire(block=True) as conn:
            conn.default_channel.queue_purge(queue)
    assert oldest_age(app, queue) is None


def json_lines(path: Path) -> list[dict]:
    """Every log record of a process (not its spans): non-JSON lines may only be Celery's start-up banner."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if "context" not in rec:
                out.append(rec)
    return out


def spans(path: Path, trace_id: str) -> list[dict]:
    """Finished spans of one trace, printed by the console exporter (one JSON object per line)."""
    found = []
    for line in path.read_text().splitlines():
        if line.startswith("{") and '"context"' in line:
            span = json.loads(line)
            if span["context"]["trace_id"] == f"0x{trace_id}":
                found.append(span)
    return found


def test_one_trace_per_query_across_api_queue_and_worker(stack, db):
    from sluice.db import create_tenant

    tenant = f"trc-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    key = create_key(db, tenant).secret
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        files = [{"name": "bees.md", "content_base64": base64.b64encode(BEES.encode()).decode()}]
        assert wait_job(client, client.post("/v1/jobs", json={"kind": "ingest", "files": files}).json()["job_id"])
        r = client.post("/v1/query", json={"question": f"How do bees share where flowers are? {uuid.uuid4().hex[:6]}"})
    assert r.status_code == 200, r.text
    trace_id = r.headers["x-trace-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id in r.headers["traceparent"]
    want_worker = {"sluice.query", "queue", "embed", "retrieve", "generate"}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        api_spans, worker_spans = spans(stack.api_log, trace_id), spans(stack.worker_log, trace_id)
        if {"POST /v1/query", "enqueue"} <= {s["name"] for s in api_spans} and want_worker <= {
            s["name"] for s in worker_spans
        }:
            break
        time.sleep(0.3)
    by_name = {s["name"]: s for s in api_spans + worker_spans}
    assert want_worker | {"POST /v1/query", "enqueue"} <= set(by_name), sorted(by_name)
    # The worker's task span is a child of the API's enqueue span; stages are children of the task.
    assert by_name["sluice.query"]["parent_id"] == by_name["enqueue"]["context"]["span_id"]
    task_id = by_name["sluice.query"]["context"]["span_id"]
    assert {by_name[n]["parent_id"] for n in ("queue", "embed", "retrieve", "generate")} == {task_id}
    assert by_name["enqueue"]["parent_id"] == by_name["POST /v1/query"]["context"]["span_id"]
    # ...and every log line of the request carries the same trace id, in both processes.
    worker_lines = [rec for rec in json_lines(stack.worker_log) if rec.get("tenant") == tenant]
    assert any(rec["msg"] == "query answered" and rec["trace_id"] == trace_id for rec in worker_lines)
    api_lines = [rec for rec in json_lines(stack.api_log) if rec.get("tenant") == tenant]
    assert any(rec.get("route") == "/v1/query" and rec["trace_id"] == trace_id for rec in api_lines)


def test_logs_are_json_with_request_context_carried_to_the_worker(stack, db):
    from sluice.db import create_tenant

    tenant = f"log-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    key = create_key(db, tenant).secret
    request_id = f"req-{uuid.uuid4().hex[:10]}"
    headers = {"Authorization": f"Bearer {key}", "X-Request-Id": request_id}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=60) as client:
        files = [{"name": "bees.md", "content_base64": base64.b64encode(BEES.encode()).decode()}]
        job = client.post("/v1/jobs", json={"kind": "ingest", "files": files})
        assert job.headers["x-request-id"] == request_id
        assert wait_job(client, job.json()["job_id"])["status"] == "succeeded"
        r = client.post("/v1/query", json={"question": f"Why do bees dance? {uuid.uuid4().hex[:6]}"})
        assert r.status_code == 200, r.text
        weird = client.post("/v1/query", json={"question": "x"}, headers={"X-Request-Id": "bad id {}"})
        assert weird.headers["x-request-id"] != "bad id {}" and len(weird.headers["x-request-id"]) == 32
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the worker's lines reach its file a moment after the result
        ours = [rec for rec in json_lines(stack.worker_log) if rec.get("request_id") == request_id]
        if {"query answered", "ingest finished"} <= {rec["msg"] for rec in ours}:
            break
        time.sleep(0.2)
    answered = next(rec for rec in ours if rec["msg"] == "query answered")
    assert answered["tenant"] == tenant and answered["config_id"] and answered["level"] == "INFO"
    assert answered["tier"] == "default" and answered["ms"] > 0
    assert any(rec["msg"] == "ingest finished" and rec["tenant"] == tenant for rec in ours)
    api_lines = [rec for rec in json_lines(stack.api_log) if rec.get("request_id") == request_id]
    query_line = next(rec for rec in api_lines if rec.get("route") == "/v1/query")
    assert query_line["tenant"] == tenant and query_line["status"] == 200 and query_line["config_id"]
    worker_text = [ln for ln in stack.worker_log.read_text().splitlines() if "ready." in ln or "warm" in ln]
    assert worker_text and all(ln.startswith("{") for ln in worker_text), worker_text


def test_sluice_status_reads_the_live_api(stack, db, cli):
    """`sluice status` against the running API while queries arrive during its interval."""
    import threading

    from sluice.db import create_tenant

    tenant = f"sts-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    key = create_key(db, tenant).secret
    codes: list[int] = []

    def traffic() -> None:
        time.sleep(0.5)  # after the first scrape
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            codes.extend(client.post("/v1/query", json={"question": f"bees {n}"}).status_code for n in range(4))

    thread = threading.Thread(target=traffic)
    thread.start()
    result = cli("status", "--url", stack.url, "--interval", "3")
    thread.join()
    assert result.exit_code == 0, result.output
    assert codes and all(c in (200, 404, 422) for c in codes), codes  # empty corpus: answered or refused, never 5xx
    out = result.output
    assert re.search(r"queue query\s*│\s*\d+ waiting", out), out
    assert "workers" in out and "ok: 1" in out, out
    requests = int(re.search(r"requests\s*│\s*(\d+)", out).group(1))
    assert requests >= len(codes) >= 1, out
    assert re.search(r"p99 latency\s*│\s*\d+ ms", out) and "error rate (5xx) │ 0.0%" in out.replace("  ", " "), out


def test_sluice_status_names_the_fix_when_the_api_is_down(cli):
    result = cli("status", "--url", f"http://127.0.0.1:{free_port()}", "--interval", "0.1")
    assert result.exit_code == 2 and "is `sluice serve` running there?" in result.output
