"""The Prefect flow over a real Postgres: counts, partial-failure state, retries of transient errors only."""

from __future__ import annotations

import psycopg
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.ingest import final_state, ingest, retry_transient
from tasks.ingest import IngestSummary


@pytest.fixture(scope="session")
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def flow_env(migrated, prefect_harness, monkeypatch):
    monkeypatch.setenv("SLUICE_DB_NAME", migrated.db_name)
    monkeypatch.setenv("SLUICE_INGEST_BATCH_CHUNKS", "3")  # several embed-and-store batches


def test_flow_ingests_and_ends_partial_when_a_document_fails(flow_env, new_tenant, tmp_path):
    tenant = new_tenant("flow")
    for i in range(5):
        (tmp_path / f"n{i}.md").write_text(f"# Note {i}\n\nKingfishers number {i} dive for minnows at dawn.\n")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    state = ingest(str(tmp_path), tenant, concurrency=2, return_state=True)
    assert state.is_completed() and state.name == "Partial"
    assert "1 document(s) failed" in state.message and "ingested 5" in state.message
    result = state.result()
    assert result["ingested"] == 5 and result["failed"] == 1 and result["chunks"] >= 5
    assert any("broken.pdf" in e for e in result["errors"])

    (tmp_path / "broken.pdf").unlink()
    (tmp_path / "n0.md").write_text("# Note 0\n\nHerons wait motionless in the shallows.\n")
    (tmp_path / "n4.md").unlink()
    again = ingest(str(tmp_path), tenant, sync=True, return_state=True)
    assert again.is_completed() and again.name == "Completed"
    counts = again.result()
    assert (counts["updated"], counts["unchanged"], counts["deleted"], counts["failed"]) == (1, 3, 1, 0)


def test_flow_metadata_parameter_reaches_every_document_under_its_own(flow_env, db, new_tenant, tmp_path):
    tenant = new_tenant("flow")
    (tmp_path / "a.md").write_text("---\nteam: own\n---\n# A\n\nOtters crack mussels on flat stones.\n")
    (tmp_path / "b.md").write_text("# B\n\nPuffins nest in burrows on grassy cliff tops.\n")
    state = ingest(str(tmp_path), tenant, metadata={"team": "flow", "wave": 3}, return_state=True)
    assert state.is_completed() and state.result()["ingested"] == 2
    with db.tenant(tenant) as conn:
        rows = dict(conn.execute("SELECT source_id, user_metadata FROM documents").fetchall())
    assert rows == {"a.md": {"team": "own", "wave": 3}, "b.md": {"team": "flow", "wave": 3}}


def test_final_state_when_everything_failed(prefect_harness):
    from prefect import flow

    from sluice.errors import DocumentError

    summary = IngestSummary("r", failed=2, errors=[DocumentError("a", "parse", "x"), DocumentError("b", "read", "y")])

    @flow
    def wrap():
        return final_state(summary, "idx")

    state = wrap(return_state=True)
    assert state.is_failed() and "every document failed" in state.message


class _StateRaising:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


def test_only_transient_database_errors_are_retried():
    assert retry_transient(None, None, _StateRaising(psycopg.OperationalError("server closed the connection")))
    assert not retry_transient(None, None, _StateRaising(ValueError("bad document")))
    assert not retry_transient(None, None, _StateRaising(psycopg.errors.UniqueViolation("duplicate key")))


def test_a_dropped_pooled_connection_is_replaced(flow_env, migrated, embedder, pipeline, new_tenant, admin, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.ingest import list_task
    from sluice.db import Database
    from tasks.ingest import Run

    tenant = new_tenant("retry")
    (tmp_path / "a.md").write_text("# A\n\nSome words.")
    # A private one-connection pool: the connection dropped below is the one the task gets next,
    # and the session's shared pool is never handed a dead connection.
    db = Database(migrated.model_copy(update={"pool_min_size": 1, "pool_max_size": 1}))
    run = Run(db, tenant, pipeline, embedder, 1_000_000)
    with db.tenant(tenant) as conn:
        pid = conn.info.backend_pid

    @flow
    def wrap():
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))  # the server drops it, as on a failover
        return list_task(run, str(tmp_path), return_state=True)

    try:
        state = wrap()
        with db.tenant(tenant) as conn:
            new_pid = conn.info.backend_pid
    finally:
        db.close()
    assert state.is_completed(), state.message
    assert [f.source_id for f in state.result()] == ["a.md"]
    with get_client(sync_client=True) as client:
        task_run = client.read_task_run(state.state_details.task_run_id)
    # The pool checks a connection before lending it (sluice/db.py), so the dead one is replaced and the
    # task succeeds at once; a database that dies mid-task is retried (tests/reliability/test_db_restart.py).
    assert task_run.run_count == 1
    assert new_pid != pid
