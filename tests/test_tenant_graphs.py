"""A large tenant gets an HNSW graph of its own in an index; the others keep sharing one without it (issue 18).

In a graph every tenant shares, RLS drops the other tenants' rows after the scan, so a tenant's beam is
widened by the graph's rows per row of its own (tasks/retrieve.py): at a million chunks beside another
million that cost 15.0 ms where the million alone took 8.3 (docs/benchmarks.md, Runs 11 and 12). Here two
small tenants share an index's graph, a third crosses `own_graph_rows`: by a bulk load (claimed before its
rows go in, so none enters the shared graph) or by an ingest that grew it (claimed afterwards).
"""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest

from bench.synthetic import DIM, clustered_vectors, make_records, near_queries, new_space
from sluice.config import RetrievalConfig
from sluice.db import Database, admin_conninfo, create_tenant, migrate, run_alembic
from tasks import retrieve as R
from tasks.bulk import bulk_load_records, ensure_vector_index, has_vector_index
from tasks.graph import Graph, claim_own_graph, own_graph, release_graphs
from tasks.indexes import drop_indexes, list_indexes
from tasks.records import store_records
from tasks.store import register_index
from tests.conftest import hnsw_plan, scratch_database

K, EF, THRESHOLD = 10, 40, 3000
SMALL_N, BIG_N = 1500, 4000


def graph_of(conn, index_id: str) -> str:
    return conn.execute("SELECT index_graph(%s)", (index_id,)).fetchone()[0]


def recall(db, tenant: str, index_id: str, queries: np.ndarray) -> float:
    found = []
    for q in queries:
        with db.tenant(tenant) as conn:
            hits = R.dense_search(conn, index_id, q, RetrievalConfig(k=K, ef_search=EF))
            exact = R.exact_search(conn, index_id, q, K)
        assert len(hits) == K
        assert all(h.source_id.startswith(tenant) for h in hits)  # RLS: only the tenant's own rows
        found.append(len({h.chunk_id for h in hits} & {h.chunk_id for h in exact}) / K)
    return float(np.mean(found))


def shared_size(migrated, index_id: str) -> int:
    with psycopg.connect(admin_conninfo(migrated), autocommit=True) as admin:
        return admin.execute("SELECT pg_relation_size(%s)", (f"chunks_hnsw_{index_id}",)).fetchone()[0]


@pytest.fixture(scope="module")
def space(db, migrated, throwaway):
    """Two small tenants in one index with its shared graph built; the space, and a tag naming this run's tenants."""
    config, identity = new_space("own-graph")
    tag = uuid.uuid4().hex[:6]
    for i in range(2):
        tenant = throwaway(f"og-small{i}-{tag}")
        rng = np.random.default_rng(10 + i)
        vectors = clustered_vectors(SMALL_N, rng)
        result = bulk_load_records(db, tenant, config, identity, make_records(SMALL_N, rng, prefix=tenant), vectors)
        assert result.graph == (Graph.BUILT if i == 0 else Graph.EXISTED)
    with psycopg.connect(admin_conninfo(migrated), autocommit=True) as admin:
        admin.execute("ANALYZE chunks")  # the shared graph's reltuples: the first build counted one tenant's rows
    return config, identity, tag


def test_a_bulk_load_past_the_threshold_gets_its_own_graph_and_leaves_the_shared_one_alone(
    db, migrated, throwaway, space
):
    config, identity, tag = space
    index_id, big = config.index_id, throwaway(f"og-big-{tag}")
    rng = np.random.default_rng(5)
    vectors = clustered_vectors(BIG_N, rng)
    before = shared_size(migrated, index_id)
    records = make_records(BIG_N, rng, prefix=big)
    result = bulk_load_records(db, big, config, identity, records, vectors, own_graph_rows=THRESHOLD)
    assert (result.rows, result.graph) == (BIG_N, Graph.BUILT)
    assert shared_size(migrated, index_id) == before  # none of its rows went into the shared graph
    with db.tenant(big) as conn:
        assert own_graph(conn, index_id)
        own = graph_of(conn, index_id)
        assert own.startswith(f"chunks_hnsw_{index_id}_") and has_vector_index(conn, index_id)
        assert conn.execute("SELECT bool_and(own_graph) FROM chunks WHERE index_id = %s", (index_id,)).fetchone()[0]
        assert own in hnsw_plan(conn, index_id, vectors[0])
        assert R.set_search_params(conn, EF, index_id).ef_search == EF  # all of its graph is its own: no widening
        assert [r[4] for r in list_indexes(conn)] == ["own"]  # `sluice index list`
    small = f"og-small0-{tag}"
    with db.tenant(small) as conn:
        assert not own_graph(conn, index_id) and graph_of(conn, index_id) == f"chunks_hnsw_{index_id}"
        shared_plan = hnsw_plan(conn, index_id, vectors[0])
        assert f"chunks_hnsw_{index_id} " in shared_plan and own not in shared_plan, shared_plan
        # The shared graph holds the two small tenants' rows, not the big one's: a half share, a 2x beam.
        assert R.set_search_params(conn, EF, index_id).ef_search == 2 * EF
        assert [r[4] for r in list_indexes(conn)] == ["shared"]
    assert recall(db, big, index_id, near_queries(vectors, 40, np.random.default_rng(7))) >= 0.95


def test_an_ingest_that_crosses_the_threshold_claims_a_graph_covering_the_rows_it_had(db, migrated, throwaway, space):
    config, identity, tag = space
    index_id, grown = config.index_id, throwaway(f"og-grown-{tag}")
    rng = np.random.default_rng(9)
    vectors = clustered_vectors(2 * SMALL_N, rng)
    records = make_records(2 * SMALL_N, rng, prefix=grown)
    with db.tenant(grown) as conn:  # the row path: into the shared graph, below the threshold
        register_index(conn, config, identity)
        store_records(conn, index_id, records[:SMALL_N], vectors[:SMALL_N])
        assert not claim_own_graph(conn, index_id, 0, THRESHOLD)
    with db.tenant(grown) as conn:
        store_records(conn, index_id, records[SMALL_N:], vectors[SMALL_N:])
        # An ingest ends by ensuring the tenant's graph: past the threshold it claims and builds its own.
        assert ensure_vector_index(conn, index_id, DIM, own_graph_rows=THRESHOLD) == Graph.BUILT
    with db.tenant(grown) as conn:
        flags = conn.execute("SELECT own_graph, count(*) FROM chunks WHERE index_id = %s GROUP BY 1", (index_id,))
        assert dict(flags.fetchall()) == {False: 2 * SMALL_N}  # stored before the claim: in the shared graph too
        assert graph_of(conn, index_id) in hnsw_plan(conn, index_id, vectors[0])
        store_records(conn, index_id, make_records(100, rng, prefix=grown, start=10**6), clustered_vectors(100, rng))
        assert conn.execute("SELECT count(*) FROM chunks WHERE own_graph").fetchone()[0] == 100  # stored after
        assert ensure_vector_index(conn, index_id, DIM, own_graph_rows=THRESHOLD) == Graph.EXISTED
    # Its own graph holds every row it had, the ones also in the shared graph included.
    assert recall(db, grown, index_id, near_queries(vectors, 30, np.random.default_rng(3))) >= 0.95


def test_a_claimed_tenant_without_its_graph_yet_is_searched_exactly_and_completely(db, throwaway, space):
    config, identity, tag = space
    index_id, waiting = config.index_id, throwaway(f"og-wait-{tag}")
    rng = np.random.default_rng(21)
    vectors = clustered_vectors(400, rng)
    with db.tenant(waiting) as conn:  # claimed and stored, its graph not built (as when its build is deferred)
        register_index(conn, config, identity, vector_index=False)
        assert claim_own_graph(conn, index_id, 400, 400)
        store_records(conn, index_id, make_records(400, rng, prefix=waiting), vectors)
    for q in near_queries(vectors, 10, np.random.default_rng(4)):
        with db.tenant(waiting) as conn:
            assert not has_vector_index(conn, index_id)
            assert [r[4] for r in list_indexes(conn)] == ["own (not built)"]
            hits = R.dense_search(conn, index_id, q, RetrievalConfig(k=K, ef_search=EF))
            exact = R.exact_search(conn, index_id, q, K)
        assert [h.chunk_id for h in hits] == [h.chunk_id for h in exact]


def test_a_tenant_cannot_build_a_graph_it_has_not_claimed(db, new_tenant, space):
    config, identity, _ = space
    with db.tenant(new_tenant("og-unclaimed")) as conn:
        register_index(conn, config, identity, vector_index=False)
        with pytest.raises(psycopg.errors.RaiseException, match="has not claimed a graph"):
            conn.execute("SELECT ensure_tenant_hnsw(%s)", (config.index_id,))


def test_dropping_an_index_drops_the_tenants_own_graph_and_claim_when_no_reader_holds_chunks(
    db, migrated, throwaway, space
):
    """`sluice index drop` and `sluice gc` (drop_indexes): a graph of its own is a gigabyte at a million rows."""
    config, identity, tag = space
    index_id, gone, kept = config.index_id, throwaway(f"og-gone-{tag}"), throwaway(f"og-kept-{tag}")
    rng = np.random.default_rng(31)
    owns = {}
    for tenant in (gone, kept):
        records, vectors = make_records(600, rng, prefix=tenant), clustered_vectors(600, rng)
        assert (
            bulk_load_records(db, tenant, config, identity, records, vectors, own_graph_rows=500).graph == Graph.BUILT
        )
        with db.tenant(tenant) as conn:
            owns[tenant] = graph_of(conn, index_id)
    assert drop_indexes(db, gone, [index_id]) == {index_id: 600}
    with db.tenant(gone) as conn:
        assert not own_graph(conn, index_id) and graph_of(conn, index_id) == f"chunks_hnsw_{index_id}"
    assert owns[gone] not in graph_names(migrated) and owns[kept] in graph_names(migrated)

    gone, own = kept, owns[kept]  # now with a reader in the way
    with db.tenant(gone) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="still has chunks in index"):
            conn.execute("SELECT drop_tenant_hnsw(%s)", (index_id,))
    with db.tenant(gone) as conn:
        assert release_graphs(conn) == []  # it holds rows there: nothing to release
    with psycopg.connect(admin_conninfo(migrated)) as reader:  # a search in flight: its lock on chunks
        reader.execute("SELECT count(*) FROM chunks WHERE index_id = %s", (index_id,))
        assert drop_indexes(db, gone, [index_id], lock_timeout_s=0.2) == {index_id: 600}
        with db.tenant(gone) as conn:
            assert own_graph(conn, index_id)  # the drop was not granted in time: claim and graph kept
        assert own in graph_names(migrated)
    with db.tenant(gone) as conn:  # the reader is done: the next call (a later drop or gc) drops it
        assert release_graphs(conn) == [index_id]
        assert not own_graph(conn, index_id) and graph_of(conn, index_id) == f"chunks_hnsw_{index_id}"
    names = graph_names(migrated)
    assert own not in names and f"chunks_hnsw_{index_id}" in names  # the shared graph stays
    with db.tenant(f"og-small0-{tag}") as conn:  # the others' rows and searches are untouched
        assert len(R.dense_search(conn, index_id, vectors[0], RetrievalConfig(k=K, ef_search=EF))) == K


def graph_names(settings) -> set[str]:
    with psycopg.connect(admin_conninfo(settings)) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'chunks_hnsw_%'").fetchall()
    return {r[0] for r in rows}


def test_the_migration_downgrades_to_one_shared_graph_and_upgrades_again(migrated):
    """0022's downgrade drops the tenants' graphs and the column and the graphs naming it; head again works."""
    from alembic import command

    config, identity = new_space("own-graph-migration")
    rng = np.random.default_rng(2)
    with scratch_database("sluice_test_tenant_graphs_0022") as settings:
        migrate(settings)
        with Database(settings) as db:
            for tenant, n in (("small", 300), ("big", 600)):
                create_tenant(db, tenant)
                records, vectors = make_records(n, rng, prefix=tenant), clustered_vectors(n, rng)
                bulk_load_records(db, tenant, config, identity, records, vectors, own_graph_rows=500)
            with db.tenant("big") as conn:
                own = graph_of(conn, config.index_id)
        assert graph_names(settings) == {f"chunks_hnsw_{config.index_id}", own}
        run_alembic(settings, lambda cfg: command.downgrade(cfg, "0021"))
        assert graph_names(settings) == set()  # the shared graph's predicate named own_graph: dropped with it
        with psycopg.connect(admin_conninfo(settings)) as conn:
            columns = conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'chunks'::regclass").fetchall()
            assert "own_graph" not in {r[0] for r in columns}
            assert conn.execute("SELECT to_regclass('tenant_graphs')").fetchone()[0] is None
        migrate(settings)
        with Database(settings) as db:
            for tenant, graph in (("small", Graph.BUILT), ("big", Graph.EXISTED)):  # one shared graph again
                with db.tenant(tenant) as conn:
                    assert graph_of(conn, config.index_id) == f"chunks_hnsw_{config.index_id}"  # the claim went too
                    assert ensure_vector_index(conn, config.index_id, DIM, own_graph_rows=10_000) == graph
