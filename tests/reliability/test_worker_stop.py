"""SIGTERM to a worker's process group (what `demo-api --stop`, systemd and our tests send) ends it in time.

On each broker: a busy worker (its query held inside the database by a lock this test holds) exits within
an orchestrator's grace period and its unfinished query is redelivered and answered by the next worker;
that next worker, now idle, exits in time too. On the embedded-Postgres broker the worker used to hang
in shutdown for ever (a pool process killed while holding the pool's result-queue lock).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from serving.celery_app import INGEST_TASK, QUERY_TASK, create_celery
from serving.worker import QUERY_LIMIT_S
from sluice.db import admin_conninfo
from tests.reliability.stack import blocked_on_lock
from tests.serving_support import start_worker, upload_payload

# Kubernetes' default terminationGracePeriodSeconds (and the grace our tests' stop_worker gives).
GRACE_S = 30
OWLS = "# Owls\n\nBarn owls swallow their prey whole and cough up the bones as pellets a few hours later.\n"


@pytest.fixture(params=["redis", "postgres"])
def broker_settings(request, migrated, tmp_path_factory):
    """Settings for one broker: a private redis-server, or the embedded Postgres (its own broker database)."""
    config = tmp_path_factory.mktemp("config") / "pipeline.yaml"
    config.write_text("name: worker-stop\n")
    if request.param == "redis":
        broker = {"broker_url": request.getfixturevalue("private_redis").url, "result_backend": None}
    else:
        broker = {"broker_url": None, "result_backend": None, "broker_db_name": "sluice_broker_stop"}
    return migrated.model_copy(update={**broker, "config_path": config, "query_timeout_s": 120.0})


def _sigterm_group(proc: subprocess.Popen) -> float:
    """SIGTERM the worker's process group; seconds until its main process exited (killed if past the grace)."""
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return time.monotonic() - start


def test_sigterm_stops_a_busy_then_an_idle_worker(broker_settings, db, new_tenant, tmp_path: Path):
    app = create_celery(broker_settings)
    tenant, doc = new_tenant("stop"), tmp_path / "docs" / "owls.md"
    doc.parent.mkdir()
    doc.write_text(OWLS)
    first = start_worker(broker_settings, tmp_path / "first.log")
    payload = upload_payload(db, tenant, {doc.name: doc.read_bytes()})
    ingest = app.send_task(INGEST_TASK, args=[payload], queue="ingest")
    assert ingest.get(timeout=120)["ingested"] == 1
    with psycopg.connect(admin_conninfo(broker_settings)) as locker:
        locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")  # the query waits inside retrieval
        query = app.send_task(QUERY_TASK, args=[{"tenant": tenant, "question": "What do barn owls cough up?"}])
        blocked_on_lock(admin_conninfo(broker_settings), broker_settings.app_role)
        busy_s = _sigterm_group(first)
    assert busy_s < GRACE_S < QUERY_LIMIT_S, f"busy worker still running {busy_s:.0f} s after SIGTERM"
    second = start_worker(broker_settings, tmp_path / "second.log")
    answer = query.get(timeout=120)
    assert "pellets" in answer["answer"], answer
    # The first worker had exited before the second started: the answer can only come from a redelivery.
    assert f"{query.id}] succeeded" not in (tmp_path / "first.log").read_text()
    idle_s = _sigterm_group(second)
    assert idle_s < GRACE_S, f"idle worker still running {idle_s:.0f} s after SIGTERM"
