"""`sluice jobs dead` and `sluice jobs retry ID` against a real API, broker and two-process `sluice worker`.

A query kills its worker process on every attempt (SLUICE_TASK_MAX_RETRIES=1) and becomes a dead letter;
the cause goes away; the replay answers under a job id derived from the dead letter, and a second replay
sends nothing. Another tenant's id and a dead letter whose arguments were summarised are refused.
"""

from __future__ import annotations

import json
import os
import signal
import uuid

import psycopg
import pytest
import redis

from serving.celery_app import QUERY_QUEUE, QUERY_TASK, create_celery
from serving.deadletter import DeadLetter, record
from serving.deadletters_replay import replay_job_id
from sluice.db import admin_conninfo
from tests.filter_strategies import nested
from tests.reliability.conftest import make_bee_tenant, make_tenant
from tests.reliability.test_hostile_input import _dead_letter, _send
from tests.reliability.test_worker_kill import _active, _all_warm, _gone
from tests.serving_support import wait_job


@pytest.fixture(scope="module")
def stack(rel_settings, start_stack):
    """An API in front of `sluice worker --concurrency 2` that re-sends a task once after a lost process."""
    once = rel_settings.model_copy(update={"task_max_retries": 1})
    return start_stack(rel_settings, concurrency=2, worker_settings=once)


@pytest.fixture(scope="module")
def bees(db, stack):
    return make_bee_tenant(db, stack)


def _killed_query(stack, rel_settings, db, tenant: str, key: str) -> str:
    """A query whose worker process is killed on both its attempts: its dead letter's task id."""
    app = create_celery(rel_settings)
    _all_warm(app, stack.worker_log)
    with stack.client(key) as client, psycopg.connect(admin_conninfo(rel_settings)) as locker:
        locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")  # the query waits inside its work
        r = client.post("/v1/jobs", json={"kind": "query", "question": "How do bees dance?"})
        assert r.status_code == 202, r.text
        job_id, pid = r.json()["job_id"], None
        for _ in range(2):
            pid = _active(app, QUERY_TASK, not_pid=pid)["worker_pid"]
            os.kill(pid, signal.SIGKILL)
            _gone(pid)
        assert _dead_letter(db, tenant, job_id, wait_s=30) is not None, stack.worker_log.read_text()[-3000:]
    return job_id  # the lock is released: the cause is gone


def _received(stack, job_id: str) -> int:
    return stack.worker_log.read_text().count(f"Task {QUERY_TASK}[{job_id}] received")


def _retried(db, tenant: str, task_id: str) -> tuple:
    with db.tenant(tenant) as conn:
        return conn.execute("SELECT retries, retried_as FROM dead_letters WHERE task_id = %s", (task_id,)).fetchone()


def test_a_dead_query_is_listed_replayed_once_and_answers(stack, bees, db, rel_settings, cli):
    tenant, key = bees
    dead = _killed_query(stack, rel_settings, db, tenant, key)
    listed = cli("jobs", "dead", "--tenant", tenant, "--json", settings=rel_settings)
    assert listed.exit_code == 0, listed.output
    [row] = [r for r in json.loads(listed.stdout) if r["task_id"] == dead]
    assert (row["task"], row["reason"], row["attempts"], row["retried_as"]) == (QUERY_TASK, "worker_lost", 2, None)
    assert "WorkerLostError" in row["error"] and len(row["error"]) <= 120, row
    table = cli("jobs", "dead", "--tenant", tenant, settings=rel_settings)
    assert table.exit_code == 0 and "worker_lost" in table.stdout, table.output

    _all_warm(create_celery(rel_settings), stack.worker_log)  # the killed processes' replacements
    first = cli("jobs", "retry", dead, "--tenant", tenant, settings=rel_settings)
    assert first.exit_code == 0, first.output
    job_id = first.stdout.strip()
    assert job_id == replay_job_id(dead, 1) and job_id != dead
    with stack.client(key) as client:
        done = wait_job(client, job_id, timeout=180)
    assert done["status"] == "succeeded" and "waggle" in done["result"]["answer"], done
    assert _retried(db, tenant, dead) == (1, job_id)

    again = cli("jobs", "retry", dead, "--tenant", tenant, settings=rel_settings)
    assert again.exit_code == 0 and again.stdout.strip() == job_id, again.output
    assert "nothing sent" in again.stderr
    assert _retried(db, tenant, dead) == (1, job_id)
    assert redis.Redis.from_url(rel_settings.broker_url).llen(QUERY_QUEUE) == 0
    assert _received(stack, job_id) == 1  # the worker got the replay once

    other, _ = make_tenant(db)
    refused = cli("jobs", "retry", dead, "--tenant", other, settings=rel_settings)
    assert refused.exit_code == 2 and f"no dead letter {dead} for tenant {other}" in refused.output, refused.output
    assert json.loads(cli("jobs", "dead", "--tenant", other, "--json", settings=rel_settings).stdout) == []


def test_a_dead_letter_with_summarised_arguments_is_not_replayed(stack, bees, db, rel_settings, cli):
    tenant, _ = bees
    dead = _send(rel_settings, tenant, nested(600))  # the worker's main process refuses it: a poison dead letter
    create_celery(rel_settings).AsyncResult(dead).get(timeout=60, propagate=False)
    assert _dead_letter(db, tenant, dead, wait_s=10) is not None
    refused = cli("jobs", "retry", dead, "--tenant", tenant, settings=rel_settings)
    assert refused.exit_code == 2, refused.output
    assert "cannot be replayed" in refused.output and "nest deeper than" in refused.output, refused.output
    assert "POST /v1/jobs" in refused.output
    assert _retried(db, tenant, dead) == (0, None)
    assert redis.Redis.from_url(rel_settings.broker_url).llen(QUERY_QUEUE) == 0


def test_an_unknown_tenant_is_refused_by_name(rel_settings, cli):
    r = cli("jobs", "dead", "--tenant", "no-such-tenant", settings=rel_settings)
    assert r.exit_code == 2 and "no-such-tenant" in r.output, r.output


def test_a_replay_that_died_too_is_replayed_under_the_next_id(stack, bees, db, rel_settings, cli):
    """Dead letters written with the worker's own `record` (the original, then its replay as if it died too)."""
    tenant, key = bees
    dead = str(uuid.uuid4())
    payload = {"tenant": tenant, "question": "How do bees dance?", "filters": None, "collection": None, "stream": False}
    assert record(rel_settings, DeadLetter(dead, QUERY_TASK, "retries_exhausted", "OperationalError: gone", 4, payload))
    first = cli("jobs", "retry", dead, "--tenant", tenant, settings=rel_settings).stdout.strip()
    assert first == replay_job_id(dead, 1)
    assert record(rel_settings, DeadLetter(first, QUERY_TASK, "worker_lost", "WorkerLostError: killed", 2, payload))
    second = cli("jobs", "retry", dead, "--tenant", tenant, settings=rel_settings)
    assert second.exit_code == 0 and second.stdout.strip() == replay_job_id(dead, 2) != first, second.output
    with stack.client(key) as client:
        done = wait_job(client, replay_job_id(dead, 2), timeout=180)
    assert done["status"] == "succeeded" and "waggle" in done["result"]["answer"], done
    assert _retried(db, tenant, dead) == (2, replay_job_id(dead, 2))
    third = cli("jobs", "retry", dead, "--tenant", tenant, settings=rel_settings)
    assert third.stdout.strip() == replay_job_id(dead, 2) and "nothing sent" in third.stderr, third.output
