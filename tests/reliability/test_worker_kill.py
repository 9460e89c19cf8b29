"""kill -9 of the worker process running a query: the query still completes, once.

Deterministic: the test holds an ACCESS EXCLUSIVE lock on `chunks`, so the query task is provably
inside retrieval (blocked) when its process is killed; the lock is released only after the kill.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg

from serving.celery_app import create_celery
from sluice.db import admin_conninfo
from tests.reliability.conftest import make_bee_tenant


def _active_query(app, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tasks in (app.control.inspect(timeout=1).active() or {}).values():
            for task in tasks:
                if task["name"] == "sluice.query":
                    return task
        time.sleep(0.2)
    raise AssertionError("no query task became active")


def _gone(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} still alive")


def test_query_survives_kill_9_of_its_worker_process(rel_settings, rel_api, two_process_worker, db):
    tenant, key = make_bee_tenant(db, rel_api)  # its own tenant: the job and cache counts below are exact
    app = create_celery(rel_settings)
    with rel_api.client(key, timeout=180) as client:
        replies: list = []
        with psycopg.connect(admin_conninfo(rel_settings)) as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")  # held until commit below
            asker = threading.Thread(
                target=lambda: replies.append(client.post("/v1/query", json={"question": "How do bees dance?"}))
            )
            asker.start()
            first = _active_query(app)
            os.kill(first["worker_pid"], signal.SIGKILL)
            _gone(first["worker_pid"])
            second = _active_query(app)  # redelivered (acks_late + reject_on_worker_lost) to a live process
            assert second["id"] == first["id"] and second["worker_pid"] != first["worker_pid"]
            locker.commit()
        asker.join(timeout=120)
    assert replies and replies[0].status_code == 200, replies and replies[0].text
    body = replies[0].json()
    assert "waggle" in body["answer"] and body["task_id"] == first["id"]
    with db.tenant(tenant) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 2  # the ingest and this one query
        assert conn.execute("SELECT count(*) FROM answer_cache").fetchone()[0] == 1  # one result stored
    assert "WorkerLostError" in two_process_worker.read_text()
