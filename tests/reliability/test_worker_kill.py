"""kill -9 of the worker process running a query, and one running an ingest: each job still completes, once.

Deterministic: the test holds an ACCESS EXCLUSIVE lock on `chunks`, so the task is provably inside its
work (blocked in the database, seen in pg_stat_activity) when its process is killed; the lock is
released only after the task has been handed to another process.
"""

from __future__ import annotations

import base64
import os
import signal
import threading
import time

import psycopg

from serving.celery_app import INGEST_TASK, QUERY_TASK, create_celery
from sluice.db import admin_conninfo
from tests.reliability.conftest import make_bee_tenant, make_tenant
from tests.reliability.stack import blocked_on_lock
from tests.serving_support import wait_job


def _active(app, name: str, not_pid: int | None = None, timeout: float = 60) -> dict:
    """The active task called `name` (on a process other than `not_pid`), as Celery's inspect reports it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tasks in (app.control.inspect(timeout=1).active() or {}).values():
            for task in tasks:
                if task["name"] == name and task["worker_pid"] != not_pid:
                    return task
        time.sleep(0.2)
    raise AssertionError(f"no {name} task became active")


def _all_warm(app, log, timeout: float = 300) -> list[int]:
    """Wait until every pool process of the worker has loaded its embedder (a replacement of a killed
    one takes a while): only then is a kill sure to leave another process ready to take the task over."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = app.control.inspect(timeout=1).stats() or {}
        pids = [pid for s in stats.values() for pid in s["pool"]["processes"]]
        text = log.read_text()
        if len(pids) >= 2 and all(f"worker process warm: pid {pid}," in text for pid in pids):
            return pids
        time.sleep(0.5)
    raise AssertionError("the worker's pool processes did not all become warm")


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
    _all_warm(app, two_process_worker)
    with rel_api.client(key, timeout=180) as client:
        replies: list = []
        with psycopg.connect(admin_conninfo(rel_settings)) as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")  # held until commit below
            asker = threading.Thread(
                target=lambda: replies.append(client.post("/v1/query", json={"question": "How do bees dance?"}))
            )
            asker.start()
            first = _active(app, QUERY_TASK)
            os.kill(first["worker_pid"], signal.SIGKILL)
            _gone(first["worker_pid"])
            second = _active(app, QUERY_TASK, not_pid=first["worker_pid"])  # redelivered (reject_on_worker_lost)
            assert second["id"] == first["id"]
            locker.commit()
        asker.join(timeout=120)
    assert replies and replies[0].status_code == 200, replies and replies[0].text
    body = replies[0].json()
    assert "waggle" in body["answer"] and body["task_id"] == first["id"]
    with db.tenant(tenant) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 2  # the ingest and this one query
        assert conn.execute("SELECT count(*) FROM answer_cache").fetchone()[0] == 1  # one result stored
    assert "WorkerLostError" in two_process_worker.read_text()


NOTES = {
    f"note{n}.md": f"# Note {n}\n\nKingfishers number {n} dive for minnows at dawn and return to the same perch.\n"
    for n in range(3)
}


def test_ingest_survives_kill_9_of_its_worker_process(rel_settings, rel_api, two_process_worker, db):
    tenant, key = make_tenant(db)
    app = create_celery(rel_settings)
    _all_warm(app, two_process_worker)
    files = [{"name": n, "content_base64": base64.b64encode(t.encode()).decode()} for n, t in NOTES.items()]
    with rel_api.client(key, timeout=180) as client:
        with psycopg.connect(admin_conninfo(rel_settings)) as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            job = client.post("/v1/jobs", json={"kind": "ingest", "files": files}).json()["job_id"]
            first = _active(app, INGEST_TASK)
            blocked_on_lock(admin_conninfo(rel_settings), rel_settings.app_role)
            os.kill(first["worker_pid"], signal.SIGKILL)
            _gone(first["worker_pid"])
            second = _active(app, INGEST_TASK, not_pid=first["worker_pid"])  # retried (retry_on_worker_lost)
            assert second["id"] == first["id"] == job
            locker.commit()
        body = wait_job(client, job, timeout=180)
    assert body["status"] == "succeeded", body
    assert body["result"]["ingested"] == len(NOTES) and body["result"]["failed"] == 0, body
    with db.tenant(tenant) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
        docs = dict(conn.execute("SELECT source_id, document_id FROM documents").fetchall())
        assert sorted(docs) == sorted(NOTES)  # every document once
        rows = conn.execute("SELECT document_id, ordinal, text FROM chunks ORDER BY document_id, ordinal").fetchall()
    assert len(rows) == body["result"]["chunks"] == len({(d, o) for d, o, _ in rows})  # no duplicate chunk
    for source, doc_id in docs.items():  # and each document's chunks are its text, once
        assert "".join(t for d, _, t in rows if d == doc_id).count("Kingfishers") == 1, source
    assert "WorkerLostError" in two_process_worker.read_text()
