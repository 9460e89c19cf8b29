"""Hostile request content against the real API and a real two-process worker (issue 14, findings 1, 5, 6).

Filters nested hundreds of levels deep, non-finite numbers, mappings of thousands of keys and strings of
megabytes are refused at the edge with a 422 that names the limit, before a job row is written or a
message queued. A message that bypasses the API (another producer, a replayed queue) cannot take the
worker down either: the main process refuses it, it becomes a dead letter and is never redelivered.
A task that kills its worker process on every attempt ends the same way. The worker answers afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from serving.celery_app import QUERY_QUEUE, QUERY_TASK, create_celery
from sluice.db import admin_conninfo
from sluice.metrics import ENQUEUED_AT
from tests.filter_strategies import filters, nested, nested_text
from tests.reliability.conftest import make_bee_tenant
from tests.reliability.test_worker_kill import _active, _all_warm, _gone

Q, J = "/v1/query", "/v1/jobs"
JSON = {"content-type": "application/json"}
QUESTION = "How do honeybees tell hive mates where flowers are?"


@pytest.fixture(scope="module")
def stack(rel_settings, start_stack, tmp_path_factory):
    """(worker process, its log, its metrics folder, API server): one retry after a lost worker process."""
    prom = tmp_path_factory.mktemp("prom")
    once = rel_settings.model_copy(update={"task_max_retries": 1})
    env = {"PROMETHEUS_MULTIPROC_DIR": str(prom)}
    api = start_stack(rel_settings, concurrency=2, worker_settings=once, extra_env=env)
    return api.worker, api.worker_log, prom, api


@pytest.fixture(scope="module")
def bees(db, stack):
    """A tenant holding the bee document: (tenant id, API key)."""
    return make_bee_tenant(db, stack[3])


def jobs_of(db, tenant: str) -> int:
    with db.tenant(tenant) as conn:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


def assert_answers(stack, key: str) -> None:
    """The worker's main process is alive and a plain question still gets its answer."""
    proc, log, _, api = stack
    assert proc.poll() is None, log.read_text()[-3000:]
    with api.client(key, timeout=120) as client:
        r = client.post(Q, json={"question": QUESTION})
    assert r.status_code == 200 and "waggle" in r.json()["answer"], r.text[:500]


@pytest.mark.parametrize("depth", [600, 300, 950])
@pytest.mark.parametrize("path", [Q, J])
def test_deep_filter_is_refused_at_the_edge_and_the_worker_lives(stack, bees, db, path, depth):
    tenant, key = bees
    before = jobs_of(db, tenant)
    kind = '"kind": "query", ' if path == J else ""
    body = "{" + kind + '"question": "bees?", "filters": ' + nested_text(depth) + "}"
    with stack[3].client(key, timeout=150) as client:
        r = client.post(path, content=body.encode(), headers=JSON)
    assert r.status_code == 422, r.text[:500]
    assert "nested deeper than 8 levels" in r.text, r.text[:500]
    assert jobs_of(db, tenant) == before  # refused before a job row or a message
    assert_answers(stack, key)


def _filters(body: str) -> bytes:
    return ('{"question": "bees?", "filters": ' + body + "}").encode()


EDGE_CASES = [
    ("nan", _filters('{"doc.year": NaN}'), "NaN or infinite"),
    ("infinity", _filters('{"doc.year": {"gt": Infinity}}'), "NaN or infinite"),
    ("minus-infinity", _filters('{"doc.year": {"lt": -Infinity}}'), "NaN or infinite"),
    ("1e400", _filters('{"doc.year": {"in": [1, 1e400]}}'), "NaN or infinite"),
    ("950-deep", _filters(nested_text(950)), "nested deeper"),
    ("5000-keys", _filters(json.dumps({f"doc.k{i}": i for i in range(5000)})), "more than 50"),
    ("200000-keys", _filters(json.dumps({f"doc.k{i}": i for i in range(200_000)})), "more than 50"),
    ("201-conditions", _filters(json.dumps({"or": [{"doc.a": i, "doc.b": i} for i in range(101)]})), "more than 200"),
    ("20mib-string", _filters(json.dumps({"doc.title": "x" * (20 * 1024 * 1024)})), "longer than 2000"),
]


@pytest.mark.parametrize(("body", "says"), [c[1:] for c in EDGE_CASES], ids=[c[0] for c in EDGE_CASES])
def test_filter_limits_are_a_422_naming_the_limit_before_anything_is_stored(stack, bees, db, body, says):
    tenant, key = bees
    before = jobs_of(db, tenant)
    with stack[3].client(key, timeout=150) as client:
        for path, content in ((Q, body), (J, b'{"kind": "query", ' + body[1:])):
            t0 = time.monotonic()
            r = client.post(path, content=content, headers=JSON)
            elapsed = time.monotonic() - t0
            assert r.status_code == 422 and says in r.text, (path, r.status_code, r.text[:500])
            assert elapsed < 5, (path, elapsed)  # refused at the edge: no worker, no database round trip
    assert jobs_of(db, tenant) == before


def _send(rel_settings, tenant: str, filters) -> str:
    """Queue a query the way the API does, but without its checks (another producer, a replayed queue)."""
    app = create_celery(rel_settings)
    job_id = str(uuid.uuid4())
    payload = {"tenant": tenant, "question": "bees?", "filters": filters, "collection": None, "stream": False}
    app.send_task(QUERY_TASK, args=[payload], task_id=job_id, queue=QUERY_QUEUE, headers={ENQUEUED_AT: time.time()})
    return job_id


def _dead_letter(db, tenant: str, job_id: str, wait_s: float = 0) -> tuple | None:
    """The job's dead letter; `wait_s` for one written just after the FAILURE result (a lost worker's)."""
    deadline = time.monotonic() + wait_s
    while True:
        with db.tenant(tenant) as conn:
            row = conn.execute(
                "SELECT task_name, reason, attempts, arguments, last_error FROM dead_letters WHERE task_id = %s",
                (job_id,),
            ).fetchone()
        if row is not None or time.monotonic() > deadline:
            return row
        time.sleep(0.1)


def _dead_letters_counted(prom, reason: str) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(prom))
    return registry.get_sample_value("sluice_dead_letters_total", {"task": QUERY_TASK, "reason": reason}) or 0.0


def test_a_poison_message_is_dead_lettered_once_and_the_worker_lives(stack, bees, db, rel_settings):
    tenant, key = bees
    app = create_celery(rel_settings)
    for depth in (600, 900):  # pickling the arguments for a pool process recursed out at ~500 levels
        job_id = _send(rel_settings, tenant, nested(depth))
        result = app.AsyncResult(job_id)
        result.get(timeout=60, propagate=False)
        assert result.state == "FAILURE", result.state
        row = _dead_letter(db, tenant, job_id)
        assert row is not None, stack[1].read_text()[-3000:]
        name, reason, attempts, arguments, error = row
        assert (name, reason, attempts) == (QUERY_TASK, "poison", 1), row
        assert "nest deeper than 64 levels" in error, error
        assert "omitted" in arguments and len(json.dumps(arguments)) < 2000  # bounded, not the payload
    # Acknowledged, so never redelivered. The guard stores the FAILURE result before Celery rejects the
    # message, so on a busy machine the result can be read a moment before the acknowledgement lands.
    broker = redis.Redis.from_url(rel_settings.broker_url)
    deadline = time.monotonic() + 30
    while (held := (broker.llen(QUERY_QUEUE), broker.hlen("unacked"))) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert held == (0, 0), "messages (queued, unacknowledged) still held by the broker"
    assert _dead_letters_counted(stack[2], "poison") == 2
    assert_answers(stack, key)


def test_a_too_wide_filter_from_another_producer_is_refused_not_retried(stack, bees, db, rel_settings):
    """10,000 keys in one mapping: the worker re-checks with the API's code and answers an error at once."""
    tenant, _ = bees
    job_id = _send(rel_settings, tenant, {f"doc.k{i}": i for i in range(10_000)})
    t0 = time.monotonic()
    body = create_celery(rel_settings).AsyncResult(job_id).get(timeout=60)
    assert time.monotonic() - t0 < 30
    assert body["error"]["type"] == "QueryError" and "more than 50" in body["error"]["message"], body
    assert "Retry in" not in _lines_of(stack[1], job_id)
    assert _dead_letter(db, tenant, job_id) is None  # an answered refusal, not a dead letter


def _lines_of(log, job_id: str) -> str:
    return "\n".join(line for line in log.read_text().splitlines() if job_id in line)


def test_fuzzed_filters_at_their_extremes_never_give_a_5xx(stack, bees):
    """Hypothesis: deep, wide, non-finite, oversized filters through both endpoints; then the worker answers."""
    _, key = bees
    seen: list[int] = []
    with stack[3].client(key, timeout=150) as client:

        @given(path=st.sampled_from((Q, J)), text=filters())
        @settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(path: str, text: str) -> None:
            kind = '"kind": "query", ' if path == J else ""
            body = "{" + kind + '"question": "How do bees dance?", "filters": ' + text + "}"
            r = client.post(path, content=body.encode(), headers=JSON)
            seen.append(r.status_code)
            assert r.status_code < 500, (path, text[:300], r.status_code, r.text[:300])

        check()
    assert {200, 202} & set(seen) and 422 in seen, sorted(set(seen))  # reached both the answers and the refusals
    assert_answers(stack, key)


def test_a_query_that_kills_its_worker_process_every_time_is_dead_lettered(stack, bees, db, rel_settings):
    """SLUICE_TASK_MAX_RETRIES=1: killed, re-sent, killed again, then a dead letter; the caller hears 502."""
    proc, log, prom, api = stack
    tenant, key = bees
    app = create_celery(rel_settings)
    _all_warm(app, log)
    replies: list = []
    with api.client(key, timeout=180) as client:
        with psycopg.connect(admin_conninfo(rel_settings)) as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")  # the query waits inside its work
            asker = threading.Thread(target=lambda: replies.append(client.post(Q, json={"question": "Bees dance?"})))
            asker.start()
            pid = None
            for _ in range(2):
                task = _active(app, QUERY_TASK, not_pid=pid)
                pid = task["worker_pid"]
                os.kill(pid, signal.SIGKILL)
                _gone(pid)
            asker.join(timeout=120)
            locker.commit()
    assert replies and replies[0].status_code == 502, replies and replies[0].text
    row = _dead_letter(db, tenant, task["id"], wait_s=10)
    assert row is not None and row[1:3] == ("worker_lost", 2), row
    assert row[3]["question"] == "Bees dance?" and row[3]["tenant"] == tenant, row
    assert _dead_letters_counted(prom, "worker_lost") == 1
    _all_warm(app, log)
    assert_answers(stack, key)
