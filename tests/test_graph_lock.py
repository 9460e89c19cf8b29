"""A graph build behind another tenant's open write on `chunks` waits a bounded time, then is deferred.

CREATE INDEX (tasks/graph.py) needs a SHARE lock on `chunks`, which any open write transaction holds off;
unbounded, the build waited forever and every new writer queued behind it. Here a second connection, as
another tenant, inserts into `chunks` and keeps its transaction open while a first load, a first ingest or
a rollout builds a graph: each returns with the graph deferred and its rows searchable (exactly), and once
that transaction ends the graph is built. Calls that could hang run in a thread with a generous deadline,
so a regression fails instead of freezing the run (the deadline is a guard, not a measurement).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import psycopg
import pytest

from bench.synthetic import DIM, make_records, new_space, unit_vectors
from sluice.config import PipelineConfig, RecursiveChunker, RetrievalConfig
from sluice.db import Database, admin_conninfo, create_tenant
from sluice.settings import Settings
from tasks import bulk
from tasks import retrieve as R
from tasks.bulk import bulk_load_records, ensure_vector_index, has_vector_index
from tasks.graph import Graph, ensure_graph
from tasks.indexes import active_index
from tasks.ingest import Run, run_ingest
from tasks.records import store_records
from tasks.store import register_index
from tests.conftest import hnsw_plan

SHORT = 0.3  # seconds the builds here wait for their lock
# The wait of a build expected to succeed once the blocker is gone. Past PostgreSQL's deadlock_timeout (1 s) an
# autovacuum of `chunks` yields to a waiting lock, before it never: a SHORT wait failed whenever one was running.
RETRY = 3.0
DEADLINE = 120  # seconds a call may take before the test calls it hung
K = 10
T = TypeVar("T")


@contextmanager
def open_write(settings: Settings, tenant: str) -> Iterator[None]:
    """Another tenant's transaction, on a connection of its own, that inserted into `chunks` and stays open
    (a long ingest, an idle client) until the block ends."""
    config, identity = new_space("blocker")
    rng = np.random.default_rng(1)
    with Database(settings) as other, other.tenant(tenant) as conn:
        register_index(conn, config, identity, vector_index=False)
        store_records(conn, config.index_id, make_records(3, rng, prefix=tenant), unit_vectors(3, rng))
        with psycopg.connect(admin_conninfo(settings), autocommit=True) as admin:  # the premise, checked
            held = admin.execute(
                "SELECT count(*) FROM pg_locks WHERE pid = %s AND relation = 'chunks'::regclass "
                "AND mode = 'RowExclusiveLock' AND granted",
                (conn.info.backend_pid,),
            ).fetchone()[0]
        assert held == 1
        yield


def within_deadline(call: Callable[[], T]) -> T:
    """call() in a thread; TimeoutError past DEADLINE (the blocker's exit then frees the hung call)."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(call).result(timeout=DEADLINE)
    finally:
        pool.shutdown(wait=False)


def test_a_bulk_load_behind_an_open_write_is_deferred_searched_exactly_then_built(db, migrated, new_tenant):
    tenant, other = new_tenant("gl-bulk"), new_tenant("gl-blocker")
    config, identity = new_space("gl-bulk")
    rng = np.random.default_rng(7)
    records, vectors = make_records(1500, rng, prefix=tenant), unit_vectors(1500, rng)
    q = vectors[42]
    with open_write(migrated, other):
        load = lambda: bulk_load_records(  # noqa: E731
            db, tenant, config, identity, records, vectors, activate="default", lock_timeout_s=SHORT
        )
        result = within_deadline(load)
        assert (result.rows, result.graph, result.built) == (1500, Graph.DEFERRED, False)
        with db.tenant(tenant) as conn:
            assert not has_vector_index(conn, config.index_id)
            assert active_index(conn, "default") == config.index_id  # the build's transaction went on and committed
            assert f"chunks_hnsw_{config.index_id}" not in hnsw_plan(conn, config.index_id, q)
        with db.tenant(tenant) as conn:
            hits = R.dense_search(conn, config.index_id, q, RetrievalConfig(k=K))
            exact = R.exact_search(conn, config.index_id, q, K)
        assert [h.chunk_id for h in hits] == [h.chunk_id for h in exact]  # no graph: the exact answer
        assert hits[0].source_id == records[42].source_id
    with db.tenant(tenant) as conn:  # the blocker is gone: the retry builds it
        assert ensure_vector_index(conn, config.index_id, DIM, RETRY) == Graph.BUILT
    with db.tenant(tenant) as conn:
        assert ensure_vector_index(conn, config.index_id, DIM, SHORT) == Graph.EXISTED
        assert f"chunks_hnsw_{config.index_id}" in hnsw_plan(conn, config.index_id, q)
    with db.tenant(tenant) as conn:
        assert R.dense_search(conn, config.index_id, q, RetrievalConfig(k=K))[0].source_id == records[42].source_id


def test_a_deferred_build_leaves_the_callers_transaction_and_its_lock_timeout_as_they_were(db, migrated, new_tenant):
    tenant, other = new_tenant("gl-caller"), new_tenant("gl-blocker")
    config, identity = new_space("gl-caller")
    with db.tenant(tenant) as conn:
        register_index(conn, config, identity, vector_index=False)
    with open_write(migrated, other), db.tenant(tenant) as conn:
        conn.execute("SELECT set_config('lock_timeout', '17s', true)")
        assert within_deadline(lambda: ensure_graph(conn, config.index_id, SHORT)) == Graph.DEFERRED
        assert conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0] == "17s"
        assert conn.execute("SELECT count(*) FROM indexes WHERE index_id = %s", (config.index_id,)).fetchone()[0] == 1
    with db.tenant(tenant) as conn:
        conn.execute("SELECT set_config('lock_timeout', '17s', true)")
        assert ensure_graph(conn, config.index_id, RETRY) == Graph.BUILT
        assert conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0] == "17s"  # not RETRY


def test_a_first_ingest_behind_an_open_write_returns_deferred_and_the_next_ingest_builds(
    db, migrated, new_tenant, embedder, sample_corpus
):
    tenant, other = new_tenant("gl-ingest"), new_tenant("gl-blocker")
    config = PipelineConfig(chunker=RecursiveChunker(chunk_size=617, chunk_overlap=61))  # an index no test has built

    def ingest(wait: float = SHORT):
        return run_ingest(Run(db, tenant, config, embedder, 10_000_000, graph_lock_timeout_s=wait), sample_corpus)

    with open_write(migrated, other):
        first = within_deadline(ingest)
        assert first.failed == 0 and first.ingested > 1 and first.graph == Graph.DEFERRED, first
        note = first.graph_note(config.index_id, tenant)
        assert f"sluice index build-graph {config.index_id} --tenant {tenant}" in note
        with db.tenant(tenant) as conn:
            assert not has_vector_index(conn, config.index_id)
            text = conn.execute(
                "SELECT text FROM chunks WHERE index_id = %s ORDER BY chunk_id LIMIT 1", (config.index_id,)
            ).fetchone()[0]
        with db.tenant(tenant) as conn:  # searchable meanwhile: a chunk's own text finds it
            assert (
                R.dense_search(conn, config.index_id, embedder.encode([text])[0], RetrievalConfig(k=K))[0].text == text
            )
    second = ingest(RETRY)
    assert (second.unchanged, second.graph) == (first.ingested, Graph.BUILT)
    assert first.as_dict()["graph"] == "deferred" and second.graph_note(config.index_id) is None
    with db.tenant(tenant) as conn:
        assert has_vector_index(conn, config.index_id)


def test_build_graph_command_defers_while_blocked_then_builds(db, migrated, new_tenant, sluice_cli):
    tenant, other = new_tenant("gl-cli"), new_tenant("gl-blocker")
    config, identity = new_space("gl-cli")
    rng = np.random.default_rng(8)
    with open_write(migrated, other):
        bulk_load_records(
            db, tenant, config, identity, make_records(50, rng), unit_vectors(50, rng), lock_timeout_s=SHORT
        )
        blocked = within_deadline(
            lambda: sluice_cli("index", "build-graph", config.index_id, "--tenant", tenant, "--lock-timeout", SHORT)
        )
        assert blocked.exit_code == 1 and "deferred" in blocked.output, blocked.output
    built = sluice_cli("index", "build-graph", config.index_id, "--tenant", tenant)
    assert built.exit_code == 0 and f"index {config.index_id}: HNSW graph built" in built.output, built.output
    again = sluice_cli("index", "build-graph", config.index_id, "--tenant", tenant)
    assert again.exit_code == 0 and "HNSW graph existed" in again.output, again.output
    unknown = sluice_cli("index", "build-graph", "no-such-index", "--tenant", tenant)
    assert unknown.exit_code == 2 and "index no-such-index is not registered" in unknown.output, unknown.output


# ---------------------------------------------------------------- a rollout, on a database of its own
@pytest.fixture(scope="module")
def rs(settings):
    from tests.rollout_support import private_database

    own = private_database(settings, "sluice_graph_lock_test")
    return own.model_copy(update={"graph_build_lock_timeout_s": SHORT})


def test_a_rollout_switches_with_its_graph_deferred_and_the_next_ingest_builds_it(rs, tmp_path, cli):
    from sluice.served import served
    from tasks.rollout import run_rollout
    from tasks.rollout_state import tenant_row
    from tests.rollout_support import SMALL, ingest, promote, write_docs

    def status_line() -> str:
        status = cli("champion", "status", "--tenant", tenant, settings=rs)
        assert status.exit_code == 0, status.output
        return next(row for row in status.output.splitlines() if row.startswith(f"{tenant}:"))

    with Database(rs) as rdb:
        tenant, other = "gl-roll", "gl-roll-blocker"
        for name in (tenant, other):
            create_tenant(rdb, name)
        folder = write_docs(tmp_path / "docs", 3)[0].parent
        ingest(rs, rdb, tenant, folder)
        target = promote(rdb, SMALL)
        with open_write(rs, other):
            ro = within_deadline(lambda: run_rollout(rs, rdb, tenant, "test"))
            assert ro.outcomes == {tenant: "switched"} and ro.deferred_graphs == {tenant: target.index_id}
            assert served(rs, rdb, tenant).index_id == target.index_id  # served, searched exactly meanwhile
            with rdb.tenant(tenant) as conn:
                assert not has_vector_index(conn, target.index_id)
        fix = f"sluice index build-graph {target.index_id} --tenant {tenant}"
        row = tenant_row(rdb, tenant, ro.rollout_id)
        assert row.status == "switched" and "without its HNSW graph" in row.error and fix in row.error
        line = status_line()  # later, from the rollout's own record, not from its run's output
        assert "rollout switched 3/3" in line and "without its HNSW graph" in line and fix in line, line
        assert ingest(rs, rdb, tenant, folder) == target.index_id  # the next ingest into the index builds it
        with rdb.tenant(tenant) as conn:
            assert has_vector_index(conn, target.index_id)
        line = status_line()
        assert "which has been built since" in line and fix not in line, line


def test_a_second_builder_of_one_graph_finds_it_built(db, new_tenant):
    """Two tenants build one index's graph at once (a rollout does): the second waits for the first, then
    finds the graph, though its own look before the wait had cached the name as absent (it failed with
    `relation "chunks_hnsw_..." already exists` before migration 0017)."""
    first, second = new_tenant("race-a"), new_tenant("race-b")
    config, identity = new_space("race")
    rng = np.random.default_rng(4)
    for tenant in (first, second):
        with db.tenant(tenant) as conn:
            register_index(conn, config, identity, vector_index=False)
            store_records(conn, config.index_id, make_records(50, rng, prefix=tenant), unit_vectors(50, rng))
    built, commit = threading.Event(), threading.Event()

    def first_builder() -> Graph:
        with db.tenant(first) as a:
            graph = ensure_graph(a, config.index_id, DEADLINE)
            built.set()
            assert commit.wait(DEADLINE)
        return graph  # committed

    pool = ThreadPoolExecutor(max_workers=2)
    builder = pool.submit(first_builder)
    assert built.wait(DEADLINE)
    with db.tenant(second) as b:
        assert not has_vector_index(b, config.index_id)  # the name, looked up (and cached) as absent
        waiting = pool.submit(ensure_graph, b, config.index_id, DEADLINE)
        with psycopg.connect(admin_conninfo(db.settings), autocommit=True) as admin:
            while (
                not waiting.done()
                and not admin.execute(  # until it waits on the first builder's lock
                    "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", (b.info.backend_pid,)
                ).fetchone()[0]
            ):
                time.sleep(0.01)
        commit.set()
        assert builder.result(timeout=DEADLINE) == Graph.BUILT
        assert waiting.result(timeout=DEADLINE) == Graph.EXISTED
    pool.shutdown()


def test_two_loads_whose_builds_end_together_both_commit(db, throwaway, admin, monkeypatch, caplog):
    """Each load's graph transaction holds its build's lock on `chunks` when it asks for ANALYZE's (migration
    0024), which conflicts with it: two builds ending together wait for each other and PostgreSQL ends one wait
    as a deadlock. That load leaves the statistics to the other (which analyzes once it commits) and commits too."""
    both_built = threading.Barrier(2, timeout=DEADLINE)
    refresh = bulk.refresh_statistics

    def after_both_builds(conn, loaded, lock_timeout_s):
        both_built.wait()  # each transaction now holds its graph build's SHARE lock on chunks
        return refresh(conn, loaded, lock_timeout_s)

    monkeypatch.setattr(bulk, "refresh_statistics", after_both_builds)
    n = 1500
    spaces = [new_space(f"together-{i}") for i in range(2)]

    def load(i: int) -> Graph:
        tenant, (config, identity) = throwaway(f"together-{i}-{uuid.uuid4().hex[:8]}"), spaces[i]
        rng = np.random.default_rng(i)
        records, vectors = make_records(n, rng, prefix=tenant), unit_vectors(n, rng)
        return bulk_load_records(db, tenant, config, identity, records, vectors, lock_timeout_s=DEADLINE).graph

    with caplog.at_level("INFO", logger="tasks.bulk"), ThreadPoolExecutor(max_workers=2) as pool:
        loads = [pool.submit(load, i) for i in range(2)]
        graphs = [f.result(timeout=DEADLINE) for f in loads]
    assert graphs == [Graph.BUILT, Graph.BUILT]
    assert [r for r in caplog.records if "DeadlockDetected" in r.getMessage()]  # the premise: they did collide
    for config, _ in spaces:  # the other's analyze counted both loads' rows
        plan = admin.execute("EXPLAIN (FORMAT JSON) SELECT 1 FROM chunks WHERE index_id = %s", (config.index_id,))
        assert n / 2 <= plan.fetchone()[0][0]["Plan"]["Plan Rows"] <= n * 2
