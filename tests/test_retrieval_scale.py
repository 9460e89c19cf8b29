"""Filtered dense search never under-returns; property-based tenant isolation against an exact scan.

One dataset per module: a 20k-chunk tenant of random unit vectors (the hard case for HNSW
filtering) and four small tenants with clustered vectors and overlapping metadata.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from bench.synthetic import (
    AUTHORS,
    IDENTITY,
    SECTIONS,
    SYNTHETIC,
    VOCAB,
    clustered_vectors,
    load_synthetic,
    make_records,
    near_queries,
    unit_vectors,
)
from sluice.config import EmbedderConfig, PipelineConfig, RetrievalConfig
from sluice.db import OWNER_ROLE, admin_conninfo
from sluice.filter_columns import apply
from tasks import retrieve as R
from tasks.embed import EmbedderIdentity
from tasks.records import Record, store_records
from tasks.store import register_index
from tests.conftest import hnsw_plan
from tests.filter_reference import matches

BIG, BIG_N = "scale-big", 20_000
SMALL = ("iso-a", "iso-b", "iso-c", "iso-d")
SMALL_N = 1_200
K = 10


@pytest.fixture(scope="module")
def big(db, throwaway):
    """20k chunks in one tenant, through the bulk path (rows first, then the index's graph: tasks/bulk.py)."""
    throwaway(BIG)
    records, _ = load_synthetic(db, BIG, BIG_N, seed=1)
    return records


@pytest.fixture(scope="module")
def small(db, migrated, throwaway):
    data = {}
    for n, tenant in enumerate(SMALL):
        throwaway(tenant)
        records, vectors = _load_small(db, tenant, seed=100 + n)
        data[tenant] = (records, vectors)
    with psycopg.connect(admin_conninfo(migrated)) as admin:  # the admin role sees every tenant's rows
        rows = admin.execute("SELECT chunk_id, tenant_id FROM chunks").fetchall()
    owner = dict(rows)
    return data, owner


def _load_small(db, tenant: str, seed: int):
    rng = np.random.default_rng(seed)
    records = [
        replace(r, collection=f"private-{tenant}") if i % 7 == 0 else r
        for i, r in enumerate(make_records(SMALL_N, rng, prefix=tenant))
    ]
    vectors = clustered_vectors(SMALL_N, rng)
    with db.tenant(tenant) as conn:
        register_index(conn, SYNTHETIC, IDENTITY)
        store_records(conn, SYNTHETIC.index_id, records, vectors)
    return records, vectors


@pytest.mark.parametrize(("spec", "share"), [({"doc.pct": 7}, 0.01), ({"doc.permille": 7}, 0.001)])
def test_filtered_dense_returns_k_where_the_default_plan_does_not(db, big, spec, share):
    expected = {r.source_id for r in big if matches(spec, r)}
    assert len(expected) == int(BIG_N * share) >= K
    queries = unit_vectors(5, np.random.default_rng(7))
    default_counts = []
    for q in queries:
        with db.tenant(BIG) as conn:
            # The default plan: ef_search 40, no iterative scan, LIMIT k over the HNSW order. Pinned, because on
            # a table without statistics yet (a fresh CI database) the planner may pick an exact sort instead.
            conn.execute("SET LOCAL enable_sort = off")
            conn.execute("SET LOCAL enable_seqscan = off")
            conn.execute("SET LOCAL enable_bitmapscan = off")
            params = {"q": q, "index_id": SYNTHETIC.index_id, "k": K, "fetch": K}
            beam = R.graph_beam(conn, SYNTHETIC.index_id)
            default_counts.append(len(R.ann_rows(conn, beam, params, spec, sql.Literal(384))))
        with db.tenant(BIG) as conn:
            hits = R.dense_search(conn, SYNTHETIC.index_id, q, RetrievalConfig(k=K), spec)
        assert len(hits) == K
        assert {h.source_id for h in hits} <= expected
    assert max(default_counts) < K, default_counts  # the default plan under-returns on every query


def test_default_plan_uses_hnsw(db, big):
    # Whether the planner prefers HNSW depends on statistics a fresh database may not have yet; with sorts
    # disabled the only ordered path left is the index, so this checks the index can serve the query.
    with db.tenant(BIG) as conn:
        plan = hnsw_plan(conn, SYNTHETIC.index_id, unit_vectors(1, np.random.default_rng(1))[0], {"doc.permille": 7})
    assert f"chunks_hnsw_{SYNTHETIC.index_id}" in plan, plan  # the index's own graph (migration 0014)


def test_vectors_are_stored_in_the_row_and_text_goes_to_toast_first(big, migrated):
    # Migration 0019: a 384-d vector (1,540 bytes) stays in its row; before it, pgvector's EXTERNAL storage
    # moved it out first whenever a row passed ~2 kB, as these rows (text + tsvector + vector) do.
    query = (
        "SELECT count(*), count(*) FILTER (WHERE pg_column_toast_chunk_id(embedding) IS NOT NULL), "
        "count(*) FILTER (WHERE pg_column_toast_chunk_id(tsv) IS NOT NULL OR pg_column_toast_chunk_id(text) "
        "IS NOT NULL) FROM chunks WHERE tenant_id = %s"
    )
    with psycopg.connect(admin_conninfo(migrated)) as admin:
        rows, vectors_out, others_out = admin.execute(query, (BIG,)).fetchone()
    assert rows == BIG_N
    assert vectors_out == 0
    assert others_out > 0  # rows past the threshold exist: the test would see the vectors move if 0019 were absent


def test_graph_is_built_with_the_wide_construction_beam(big, migrated):
    # Migration 0020: at 1M chunks a graph built with ef_construction 64 lost one query in six (recall 0.82).
    with psycopg.connect(admin_conninfo(migrated)) as admin:
        (options,) = admin.execute(
            "SELECT c.reloptions FROM pg_class c WHERE c.relname = %s", (f"chunks_hnsw_{SYNTHETIC.index_id}",)
        ).fetchone()
    assert sorted(options) == ["ef_construction=200", "m=16"]


# ---------------------------------------------------------------- property-based isolation
def _leaf() -> st.SearchStrategy[dict]:
    names = ["default", "legal", "eng", *(f"private-{t}" for t in SMALL)]
    ranges = st.sampled_from(["eq", "gt", "gte", "lt", "lte"])
    return st.one_of(
        st.builds(lambda a: {"doc.author": a}, st.sampled_from(AUTHORS)),
        st.builds(lambda a: {"doc.author": {"in": a}}, st.lists(st.sampled_from(AUTHORS), min_size=1, max_size=4)),
        st.builds(lambda o, y: {"doc.year": {o: y}}, ranges, st.integers(1998, 2026)),
        st.builds(lambda o, p: {"doc.pct": {o: p}}, ranges, st.integers(0, 99)),
        st.builds(lambda v: {"doc.lang": v}, st.sampled_from(["en", "de", "fr", "xx"])),
        st.builds(lambda o, v: {"doc.lang": {o: v}}, ranges, st.sampled_from(["de", "en", "fr"])),
        st.builds(lambda e: {"doc.lang": {"exists": e}}, st.booleans()),
        st.builds(lambda s: {"doc.team.name": s}, st.sampled_from(SECTIONS)),
        st.builds(lambda o, p: {"chunk.page": {o: p}}, ranges, st.integers(0, 50)),
        st.builds(lambda s: {"chunk.section": {"in": s}}, st.lists(st.sampled_from(SECTIONS), min_size=1, max_size=3)),
        st.builds(lambda c: {"collection": c}, st.sampled_from(names)),
    )


FILTERS = st.one_of(
    st.none(),
    st.recursive(
        _leaf(),
        lambda kids: st.one_of(
            st.builds(lambda xs: {"and": xs}, st.lists(kids, min_size=1, max_size=3)),
            st.builds(lambda xs: {"or": xs}, st.lists(kids, min_size=1, max_size=3)),
            st.builds(lambda x: {"not": x}, kids),
        ),
        max_leaves=4,
    ),
)
CASES = st.tuples(
    st.sampled_from(SMALL),
    FILTERS,
    st.integers(0, 2**31),
    st.sampled_from(["dense", "dense", "lexical", "hybrid"]),
    st.sampled_from([1, 5, 10]),
)


def _expected_dense(records, vectors, spec, q, k) -> list[str]:
    keep = [i for i, r in enumerate(records) if matches(spec, r)]
    if not keep:
        return []
    sims = vectors[keep] @ q
    order = np.argsort(-sims, kind="stable")[:k]
    return [records[keep[i]].source_id for i in order]


def _query_text(records, rng) -> str:
    words = records[int(rng.integers(len(records)))].text.split()
    picks = [words[int(i)] for i in rng.integers(0, len(words), size=2)]
    return " ".join([*picks, VOCAB[int(rng.integers(len(VOCAB)))]])


EXHAUSTIVE = settings(
    max_examples=1000, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


def test_isolation_property(db, small):
    data, owner = small
    recalls: list[float] = []
    cases = [0]

    @EXHAUSTIVE
    @given(CASES)
    def check(case):
        tenant, spec, seed, mode, k = case
        records, vectors = data[tenant]
        rng = np.random.default_rng(seed)
        q = near_queries(vectors, 1, rng)[0]
        text = _query_text(records, rng)
        with db.tenant(tenant) as conn:
            hits = R.retrieve(conn, SYNTHETIC.index_id, text, q, RetrievalConfig(mode=mode, k=k), spec)
        cases[0] += 1
        assert all(owner.get(h.chunk_id) == tenant for h in hits), (tenant, spec)
        by_id = {r.source_id: r for r in records}
        assert all(h.source_id in by_id and matches(spec, by_id[h.source_id]) for h in hits), spec
        allowed = [r for r in records if matches(spec, r)]
        terms = set(text.split())
        lexical_ok = [r for r in allowed if terms & set(r.text.split())]
        if mode == "lexical":
            assert len(hits) == min(k, len(lexical_ok))
            assert all(terms & set(h.text.split()) for h in hits)
            return
        assert len(hits) == min(k, len(allowed)), (spec, len(hits), len(allowed))
        if mode == "dense":
            exact = _expected_dense(records, vectors, spec, q, k)
            if exact:
                recalls.append(len({h.source_id for h in hits} & set(exact)) / len(exact))

    check()
    assert cases[0] >= 1000
    assert len(recalls) > 200
    assert np.mean(recalls) >= 0.95, np.mean(recalls)
    assert min(recalls) >= 0.5, sorted(recalls)[:10]


def _in_private_a(conn, data: dict, retrieval: RetrievalConfig) -> list:
    """Hits for tenant iso-a's first record, filtered to iso-a's private collection."""
    records, vectors = data["iso-a"]
    return R.retrieve(conn, SYNTHETIC.index_id, records[0].text, vectors[0], retrieval, {"collection": "private-iso-a"})


def test_other_tenants_collection_returns_nothing(db, small):
    data, _ = small
    with db.tenant("iso-b") as conn:
        assert _in_private_a(conn, data, RetrievalConfig(mode="hybrid", k=10)) == []
        # No count leaks either: the tenant sees zero documents of that collection, not "some, hidden".
        seen = conn.execute("SELECT count(*) FROM documents WHERE collection = 'private-iso-a'").fetchone()[0]
        assert seen == 0
    with db.tenant("iso-a") as conn:
        assert len(_in_private_a(conn, data, RetrievalConfig(k=10))) == 10


# ---------------------------------------------------------------- promoted keys (sluice/filter_columns.py)
@pytest.fixture(scope="module")
def promoted_big(big, migrated):
    """The 20k tenant with doc.pct and doc.permille promoted to indexed columns (as `sluice db up` does)."""
    with psycopg.connect(admin_conninfo(migrated), autocommit=True) as conn:
        apply(conn, OWNER_ROLE, {"pct": "integer", "permille": "integer"})
        conn.execute("ANALYZE chunks")
    return big


PROMOTED_SPECS = [
    ({"doc.pct": 7}, 0.01),
    ({"doc.permille": 7}, 0.001),
    ({"doc.permille": {"in": [3, 500]}, "doc.lang": "de"}, None),  # promoted and jsonb conditions together
    ({"or": [{"doc.permille": {"gte": 998}}, {"doc.pct": 3, "chunk.page": {"lt": 10}}]}, None),
]


@pytest.mark.parametrize(("spec", "share"), PROMOTED_SPECS, ids=["1pct", "0.1pct", "and-jsonb", "or"])
def test_promoted_filters_return_exactly_the_exact_scans_top_k(db, promoted_big, spec, share):
    expected = {r.source_id for r in promoted_big if matches(spec, r)}
    assert share is None or len(expected) == int(BIG_N * share)
    for q in unit_vectors(5, np.random.default_rng(17)):
        with db.tenant(BIG) as conn:
            compiled = R.compile_for(conn, spec)
            hits = R.dense_search(conn, SYNTHETIC.index_id, q, RetrievalConfig(k=K), spec)
            exact = R.exact_search(conn, SYNTHETIC.index_id, q, K, spec)  # jsonb conditions only: the reference
        assert compiled.bounded and "meta_" in compiled.clause.as_string(None)
        assert len(hits) == min(K, len(expected))
        assert [h.chunk_id for h in hits] == [h.chunk_id for h in exact]
        assert {h.source_id for h in hits} <= expected


@pytest.mark.parametrize("spec", [{"doc.pct": 7}, {"doc.permille": 7}])
def test_promoted_filter_reads_the_matching_rows_not_the_tenants(db, promoted_big, spec):
    q = unit_vectors(1, np.random.default_rng(3))[0]
    with db.tenant(BIG) as conn:
        compiled = R.compile_for(conn, spec)
        query = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) " + R._DENSE_EXACT).format(
            filter=compiled.clause,
            index_id=sql.Literal(SYNTHETIC.index_id),
            dim=sql.Literal(384),
            source=R.source(compiled),
        )
        plan = conn.execute(query, {"q": q, "index_id": SYNTHETIC.index_id, "k": K, **compiled.params}).fetchone()[0]
    text = json.dumps(plan)
    assert '"Seq Scan"' not in text, text
    # The matching chunks and their vectors come from the key's covering btree alone (sluice/filter_columns.carry).
    scans = [n for n in _nodes(plan[0]["Plan"]) if n.get("Index Name") == f"chunks_meta_{next(iter(spec))[4:]}"]
    assert scans and scans[0]["Node Type"] == "Index Only Scan", text
    scanned = max(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) for n in _nodes(plan[0]["Plan"]))
    assert scanned <= BIG_N // 50, scanned  # rows read by any node: the matches, not the tenant's 20k


def _nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _carried(conn, key: str) -> list[tuple]:
    return conn.execute(
        sql.SQL("SELECT c.chunk_id, c.{col}, d.{col} FROM chunks c JOIN documents d USING (document_id)").format(
            col=sql.Identifier(f"meta_{key}")
        )
    ).fetchall()


def test_every_chunk_carries_its_documents_promoted_values(db, promoted_big):
    """Chunks stored before the key was promoted were filled once; each copy equals its document's column."""
    with db.tenant(BIG) as conn:
        for key in ("pct", "permille"):
            rows = _carried(conn, key)
            assert len(rows) == BIG_N
            assert all(chunk == doc and doc is not None for _, chunk, doc in rows), key


def test_a_metadata_change_reaches_the_chunks_and_the_filter(db, promoted_big, throwaway):
    """New chunks take their document's value as they are written; a changed document passes it on."""
    tenant = "scale-carry"
    throwaway(tenant)
    records, vectors = load_synthetic(db, tenant, 300, seed=9)
    q = vectors[0]
    source = records[0].source_id
    with db.tenant(tenant) as conn:
        assert all(chunk == doc for _, chunk, doc in _carried(conn, "pct"))
        before = R.dense_search(conn, SYNTHETIC.index_id, q, RetrievalConfig(k=K), {"doc.pct": 12345})
        conn.execute(
            "UPDATE documents SET metadata = jsonb_set(metadata, '{pct}', '12345') WHERE source_id = %s", (source,)
        )
        carried = conn.execute(
            "SELECT c.meta_pct FROM chunks c JOIN documents d USING (document_id) WHERE d.source_id = %s", (source,)
        ).fetchall()
        after = R.dense_search(conn, SYNTHETIC.index_id, q, RetrievalConfig(k=K), {"doc.pct": 12345})
        old_value = {"doc.pct": records[0].metadata["pct"]}
        others = R.dense_search(conn, SYNTHETIC.index_id, q, RetrievalConfig(k=K), old_value)
    assert before == [] and carried == [(12345,)]
    assert [h.source_id for h in after] == [source]
    assert source not in {h.source_id for h in others}


@pytest.mark.parametrize("dim", [384, 640, 1024])
def test_the_largest_entries_fit_and_are_found(db, promoted_big, migrated, throwaway, dim):
    """The longest tenant id and promoted text value with vectors up to COVERED_DIM fit the covering btree
    (an entry too large would refuse the INSERT); wider vectors go to the key's `_wide` index."""
    with psycopg.connect(admin_conninfo(migrated), autocommit=True) as conn:
        apply(conn, OWNER_ROLE, {"desk": "text"})
    tenant = throwaway(f"w{dim}-" + "x" * (62 - len(str(dim)) - 1))
    assert len(tenant) == 63
    config = PipelineConfig(embedder=EmbedderConfig(model="synthetic-random-unit", dim=dim, precision="float32"))
    identity = EmbedderIdentity("synthetic-random-unit", "0" * 64, dim, True)
    desk = "d" * 1024 if dim <= 384 else "d" * 300  # the widest text entry fits with 384-d vectors
    records = [Record(f"doc-{i}", f"text {i}", {"desk": desk, "pct": i}) for i in range(3)]
    vectors = unit_vectors(3, np.random.default_rng(dim), dim)
    with db.tenant(tenant) as conn:
        register_index(conn, config, identity)
        assert store_records(conn, config.index_id, records, vectors) == 3
        for spec in ({"doc.desk": desk}, {"doc.pct": 1}):
            hits = R.dense_search(conn, config.index_id, vectors[1], RetrievalConfig(k=K), spec)
            assert [h.source_id for h in hits][:1] == ["doc-1"], spec


def test_broad_promoted_filter_takes_hnsw_and_still_returns_k(db, promoted_big, monkeypatch):
    monkeypatch.setattr(R, "PREFILTER_ROWS", 100)  # 10k matches: over it, so the iterative HNSW scan answers
    spec = {"doc.pct": {"lt": 50}}
    expected = {r.source_id for r in promoted_big if matches(spec, r)}
    for q in unit_vectors(3, np.random.default_rng(5)):
        with db.tenant(BIG) as conn:
            hits = R.dense_search(conn, SYNTHETIC.index_id, q, RetrievalConfig(k=K), spec)
        assert len(hits) == K and {h.source_id for h in hits} <= expected
