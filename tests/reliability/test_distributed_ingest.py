"""Distributed ingestion: a source split into shards on two worker nodes, one node killed -9 mid-run.

Two `sluice worker` processes (each its own Celery node, as on two hosts) share one Redis broker and one
database. The test freezes the run with a SHARE lock on the shard ledger once a node is storing a
document, kill -9s that node's whole process group (its main process and its pool process), then lets
the run go on: the lost shard is redelivered (acks_late; Redis visibility timeout) to the surviving node,
which skips the documents the dead node had settled. Every document ends stored exactly once, by one
transaction that also wrote its ledger row, and the run's summary counts each once.
"""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.ingest import ingest
from serving.celery_app import create_celery
from serving.shards import ingest_distributed, start_run, wait_run
from sluice.db import admin_conninfo, create_tenant
from tests.reliability.stack import blocked_on_lock, drop_keys
from tests.serving_support import settings_env, start_worker, stop_worker

DOCS = 12
SHARD_SIZE = 2
TOPICS = ("bees", "tides", "volcanoes", "glaciers", "comets", "coral", "deserts", "owls", "rivers", "ferns")


def _corpus(folder) -> list[str]:
    """DOCS small distinct documents; their source ids."""
    names = []
    for i in range(DOCS):
        topic = TOPICS[i % len(TOPICS)]
        text = f"# Note {i} on {topic}\n\n" + f"Paragraph {i}: {topic} are studied in field {i}. " * 20
        (folder / f"note-{i:02d}.md").write_text(text)
        names.append(f"note-{i:02d}.md")
    return names


@pytest.fixture(scope="module")
def dist_settings(stack_settings):
    # Redelivery of a dead node's unacked shard after 8 s (production: an hour, above the longest shard).
    return stack_settings("distributed", broker_visibility_timeout_s=8)


@pytest.fixture(scope="module")
def two_nodes(dist_settings, tmp_path_factory):
    """Two single-process worker nodes on the same broker: [(process, log)] * 2."""
    folder = tmp_path_factory.mktemp("nodes")
    nodes = []
    try:
        for name in ("a", "b"):
            log = folder / f"worker-{name}.log"
            nodes.append((start_worker(dist_settings, log, concurrency=1, name=f"sluice-{name}@%h"), log))
        yield nodes
    finally:
        for proc, _ in nodes:
            stop_worker(proc)
        drop_keys(dist_settings)


def _storing_node(conninfo: str, run_id: str) -> str:
    """The `worker` (host:pid) of a shard of the run being worked on once the ledger is frozen."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT worker FROM ingest_shards WHERE run_id = %s AND state = 'running' ORDER BY started_at LIMIT 1",
                (run_id,),
            ).fetchone()
            if row:
                return row[0]
            time.sleep(0.1)
    raise AssertionError("no shard of the run started")


def _node_of(nodes, worker: str):
    """The (process, log) of the node whose pool process has the pid in `worker` (host:pid)."""
    pid = worker.rsplit(":", 1)[1]
    for proc, log in nodes:
        if f"worker process warm: pid {pid}," in log.read_text():
            return proc
    raise AssertionError(f"no node runs pool process {pid}")


def test_a_shard_lost_with_its_node_is_redone_elsewhere_and_nothing_is_stored_twice(
    dist_settings, two_nodes, db, tmp_path
):
    tenant = f"dist-{os.getpid()}-{int(time.time())}"
    create_tenant(db, tenant)
    names = _corpus(tmp_path)
    app = create_celery(dist_settings)
    conninfo = admin_conninfo(dist_settings)
    with psycopg.connect(conninfo) as locker:
        # Frozen before the first shard is sent: every store blocks at its ledger row, inside its transaction.
        locker.execute("LOCK TABLE ingest_run_documents IN SHARE MODE")
        run_id, _ = start_run(app, db, tenant, tmp_path, SHARD_SIZE, "default")
        blocked_on_lock(conninfo, dist_settings.app_role, timeout=180)
        victim = _node_of(two_nodes, _storing_node(conninfo, run_id))
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        locker.commit()
    state = wait_run(app, db, tenant, run_id, timeout_s=600)
    app.close()

    assert state.finished and state.shards == DOCS // SHARD_SIZE
    summary = state.summary
    assert (summary.ingested, summary.updated, summary.unchanged, summary.failed) == (DOCS, 0, 0, 0)
    with psycopg.connect(conninfo) as conn:
        attempts = conn.execute(
            "SELECT max(attempt) FROM ingest_shards WHERE tenant_id = %s AND run_id = %s", (tenant, run_id)
        ).fetchone()[0]
        assert attempts >= 2  # the killed node's shard was taken over by another attempt
        stored = conn.execute(
            "SELECT d.source_id, count(c.*), count(DISTINCT c.xmin::text), min(c.xmin::text), min(l.xmin::text), "
            "min(l.chunks) FROM documents d JOIN chunks c USING (tenant_id, document_id) "
            "JOIN ingest_run_documents l ON l.tenant_id = d.tenant_id AND l.source_id = d.source_id "
            "WHERE d.tenant_id = %s GROUP BY d.source_id ORDER BY d.source_id",
            (tenant,),
        ).fetchall()
    assert [row[0] for row in stored] == names  # every document, once
    for source_id, chunks, writers, chunk_tx, ledger_tx, settled_chunks in stored:
        assert writers == 1 and chunk_tx == ledger_tx, source_id  # one transaction wrote its chunks and ledger row
        assert chunks == settled_chunks, source_id
    assert summary.chunks == sum(row[1] for row in stored)


def test_the_flow_fans_out_in_shards_isolates_a_bad_document_and_a_rerun_finds_the_rest_unchanged(
    dist_settings, two_nodes, db, tmp_path, monkeypatch
):
    tenant = f"dist2-{os.getpid()}-{int(time.time())}"
    create_tenant(db, tenant)
    _corpus(tmp_path)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    for name, value in settings_env(dist_settings).items():  # the flow reads Settings at its entry point
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    with prefect_test_harness(server_startup_timeout=300):
        state = ingest(str(tmp_path), tenant, shard_size=5, return_state=True)
    assert state.is_completed() and state.name == "Partial", state.message
    first = state.result()
    assert (first["ingested"], first["failed"]) == (DOCS, 1)
    assert any("broken.pdf" in e for e in first["errors"])

    (tmp_path / "broken.pdf").unlink()
    (tmp_path / "note-00.md").unlink()
    second = ingest_distributed(dist_settings, db, tenant, tmp_path, 5, sync=True, timeout_s=600)
    assert second.shards == 3
    assert (second.summary.unchanged, second.summary.ingested, second.summary.deleted) == (DOCS - 1, 0, 1)
    assert second.summary.run_id != first["run_id"]
