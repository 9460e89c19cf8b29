"""Okapi BM25 under RLS: equal to a reference implementation, statistics kept exact, an index RLS lets us use."""

from __future__ import annotations

from unittest.mock import ANY

import numpy as np
import psycopg
import pytest

from bench.bm25_reference import compare
from bench.synthetic import IDENTITY, SYNTHETIC, unit_vectors
from sluice.config import RetrievalConfig
from sluice.db import Database, admin_conninfo, create_tenant, migrate, run_alembic
from tasks.chunk import Chunk
from tasks.ingest_text import text_document
from tasks.records import Record, store_records
from tasks.retrieve import retrieve
from tasks.store import register_index, replace_chunks, upsert_document
from tests.conftest import scratch_database

K = 10
GONE = [f"doc-{i}" for i in range(30)]
# Real English (stop words, inflections the stemmer folds: "running"/"runs"/"run") and Zipf-distributed codes.
ENGLISH = (
    "the of and to in is for with on running runs run cells cell infection infected virus viruses patients patient "
    "vaccine vaccines protein proteins study studies results treatment treated"
).split()
VOCAB = ENGLISH + [f"code{i}" for i in range(400)]


def _texts(n: int, rng: np.random.Generator) -> list[str]:
    """n texts of 3-120 words drawn with Zipf-like frequencies, so document frequencies and lengths vary."""
    weights = 1.0 / np.arange(1, len(VOCAB) + 1) ** 0.9
    weights /= weights.sum()
    return [" ".join(rng.choice(VOCAB, size=int(rng.integers(3, 120)), p=weights)) for _ in range(n)]


def _queries(n: int, rng: np.random.Generator) -> list[str]:
    return [" ".join(rng.choice(VOCAB, size=int(rng.integers(1, 6)))) for _ in range(n)]


def _load(db, tenant: str, texts: list[str], seed: int, vector_index: bool = True) -> None:
    records = [Record(f"{tenant}-{i:05d}", t) for i, t in enumerate(texts)]
    with db.tenant(tenant) as conn:
        register_index(conn, SYNTHETIC, IDENTITY, vector_index=vector_index)
        store_records(conn, SYNTHETIC.index_id, records, unit_vectors(len(records), np.random.default_rng(seed)))


def _compare(conn, index_id: str, queries: list[str], config: RetrievalConfig) -> tuple[float, float]:
    """(top-10 position agreement with bm25s, largest score difference on chunks both rank) over the queries."""
    result = compare(conn, index_id, queries, config)
    return result.agreement, result.max_score_diff


@pytest.mark.parametrize(("k1", "b"), [(1.2, 0.75), (2.0, 0.3)])
def test_bm25_equals_the_reference_on_a_generated_corpus(db, new_tenant, k1, b):
    rng = np.random.default_rng(11)
    tenant, other = new_tenant("bm25"), new_tenant("bm25-other")
    _load(db, tenant, _texts(400, rng), seed=1)
    _load(db, other, _texts(300, rng), seed=2)  # another tenant's chunks in the same index must not count
    config = RetrievalConfig(mode="lexical", k=K, k1=k1, b=b)
    with db.tenant(tenant) as conn:
        agreement, worst = _compare(conn, SYNTHETIC.index_id, _queries(60, rng), config)
    assert agreement >= 0.98, agreement
    assert worst < 1e-9, worst


def _stats(conn, index_id: str) -> tuple[int, int]:
    row = conn.execute("SELECT chunks, total_length FROM lexical_stats WHERE index_id = %s", (index_id,)).fetchone()
    return tuple(row) if row else (0, 0)


def _recount(conn, index_id: str) -> tuple[int, int]:
    return conn.execute(
        "SELECT count(*), coalesce(sum((SELECT sum(cardinality(l.positions)) FROM unnest(c.tsv) l)), 0) "
        "FROM chunks c WHERE index_id = %s",
        (index_id,),
    ).fetchone()


def _postings_match_chunks(conn, index_id: str) -> bool:
    """Every (chunk, lexeme, tf) of the stored chunks is a posting, and there is no other posting."""
    return conn.execute(
        "SELECT NOT EXISTS (SELECT c.chunk_id, l.lexeme, cardinality(l.positions) FROM chunks c, unnest(c.tsv) l "
        "WHERE c.index_id = %(i)s EXCEPT SELECT chunk_id, term, tf FROM lexical_postings WHERE index_id = %(i)s) "
        "AND NOT EXISTS (SELECT chunk_id, term, tf FROM lexical_postings WHERE index_id = %(i)s EXCEPT "
        "SELECT c.chunk_id, l.lexeme, cardinality(l.positions) FROM chunks c, unnest(c.tsv) l "
        "WHERE c.index_id = %(i)s)",
        {"i": index_id},
    ).fetchone()[0]


def _store_document(conn, source_id: str, texts: list[str], dim: int = 384) -> None:
    """Store `texts` as the chunks of one document through the ingest path (upsert, then replace_chunks)."""
    doc = text_document(source_id, "\n".join(texts))
    document_id, _ = upsert_document(conn, doc, {})
    chunks, start = [], 0
    for ordinal, text in enumerate(texts):
        chunks.append(Chunk(ordinal, start, start + len(text), text))
        start += len(text) + 1
    vectors = unit_vectors(len(texts), np.random.default_rng(len(doc.text)), dim)
    replace_chunks(conn, document_id, SYNTHETIC.index_id, doc.content_hash, chunks, vectors)


def test_statistics_stay_exact_as_documents_are_added_replaced_and_deleted(db, new_tenant):
    rng = np.random.default_rng(5)
    tenant, other = new_tenant("bm25-stats"), new_tenant("bm25-stats-other")
    _load(db, other, _texts(50, rng), seed=3)
    with db.tenant(other) as conn:
        other_before = _stats(conn, SYNTHETIC.index_id)
    config = RetrievalConfig(mode="lexical", k=K)
    queries = _queries(30, rng)
    with db.tenant(tenant) as conn:
        register_index(conn, SYNTHETIC, IDENTITY)
        for i in range(40):  # added
            _store_document(conn, f"doc-{i}", _texts(int(rng.integers(1, 4)), rng))
    steps = [
        lambda conn: [_store_document(conn, f"doc-{i}", _texts(2, rng)) for i in range(0, 40, 3)],  # new content
        lambda conn: replace_chunks_in_place(conn, "doc-1", _texts(1, rng)),  # fewer chunks, same document
        lambda conn: conn.execute(
            "DELETE FROM documents WHERE source_id = ANY(%s)", ([f"doc-{i}" for i in range(30)],)
        ),
        lambda conn: [_store_document(conn, f"new-{i}", _texts(3, rng)) for i in range(10)],
    ]
    for step in [lambda conn: None, *steps]:
        with db.tenant(tenant) as conn:
            step(conn)
        with db.tenant(tenant) as conn:
            assert _stats(conn, SYNTHETIC.index_id) == _recount(conn, SYNTHETIC.index_id)
            assert _postings_match_chunks(conn, SYNTHETIC.index_id)
            agreement, worst = _compare(conn, SYNTHETIC.index_id, queries, config)
            assert agreement >= 0.98 and worst < 1e-9, (agreement, worst)
    with db.tenant(other) as conn:
        assert _stats(conn, SYNTHETIC.index_id) == other_before  # another tenant's statistics never move


def replace_chunks_in_place(conn, source_id: str, texts: list[str]) -> None:
    """Re-chunk a stored document into `texts` without changing its content (the ON CONFLICT DO UPDATE path)."""
    document_id, text, digest = conn.execute(
        "SELECT document_id, text, content_hash FROM documents WHERE source_id = %s", (source_id,)
    ).fetchone()
    chunks = [Chunk(i, 0, len(text), t) for i, t in enumerate(texts)]
    vectors = unit_vectors(len(texts), np.random.default_rng(7))
    replace_chunks(conn, document_id, SYNTHETIC.index_id, digest, chunks, vectors)


def test_an_update_that_changes_no_text_keeps_its_postings(db, new_tenant):
    """0023: updated chunks whose text is unchanged (metadata, offsets) keep their postings rows; a chunk whose
    text changed is re-posted; statistics and postings stay exact."""
    tenant = new_tenant("bm25-update")
    rng = np.random.default_rng(23)
    with db.tenant(tenant) as conn:
        register_index(conn, SYNTHETIC, IDENTITY)
        _store_document(conn, "doc", _texts(6, rng))

    def posted(conn) -> dict[int, list[str]]:  # ordinal -> the transactions that wrote its chunk's postings
        rows = conn.execute(
            "SELECT c.ordinal, array_agg(DISTINCT p.xmin::text) FROM lexical_postings p JOIN chunks c "
            "ON c.chunk_id = p.chunk_id WHERE p.index_id = %s GROUP BY c.ordinal",
            (SYNTHETIC.index_id,),
        ).fetchall()
        return dict(rows)

    with db.tenant(tenant) as conn:
        before = posted(conn)
    with db.tenant(tenant) as conn:
        conn.execute("UPDATE chunks SET metadata = metadata || '{\"k\": 1}', char_end = char_end + 1 WHERE ordinal < 5")
        conn.execute("UPDATE chunks SET text = text || ' zebra' WHERE ordinal = 5")
    with db.tenant(tenant) as conn:
        after = posted(conn)
        assert _stats(conn, SYNTHETIC.index_id) == _recount(conn, SYNTHETIC.index_id)
        assert _postings_match_chunks(conn, SYNTHETIC.index_id)
        zebra = "SELECT count(*) FROM lexical_postings p JOIN chunks c ON c.chunk_id = p.chunk_id "
        assert conn.execute(zebra + "WHERE c.ordinal = 5 AND p.term = 'zebra'").fetchone()[0] == 1
    assert len(before) == 6
    assert all(after[o] == before[o] for o in range(5)), "postings of unchanged text were written again"
    assert after[5] != before[5]


def test_the_postings_index_serves_lexical_search_under_rls(db, new_tenant):
    tenant = new_tenant("bm25-plan")
    _load(db, tenant, _texts(200, np.random.default_rng(9)), seed=4)
    with db.tenant(tenant) as conn:
        conn.execute("SET LOCAL enable_seqscan = off")  # a table this small would be scanned whole anyway
        conn.execute("SET LOCAL enable_bitmapscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT count(*) FROM lexical_postings WHERE index_id = %s AND term = ANY(%s)",
                (SYNTHETIC.index_id, ["cell", "code3"]),
            ).fetchall()
        )
    assert "Index Only Scan using lexical_postings_pkey" in plan or "Index Scan using lexical_postings_pkey" in plan
    assert "Index Cond: ((tenant_id = current_setting" in plan, plan  # the policy itself is an index condition


def test_fusions_weigh_their_rankings(db, new_tenant):
    rng = np.random.default_rng(21)
    tenant = new_tenant("bm25-fusion")
    _load(db, tenant, _texts(300, rng), seed=6)
    query, vector = "cells infection code1", unit_vectors(1, rng)[0]
    with db.tenant(tenant) as conn:
        bm25 = retrieve(conn, SYNTHETIC.index_id, query, vector, RetrievalConfig(mode="lexical", k=K))
        dense = retrieve(conn, SYNTHETIC.index_id, query, vector, RetrievalConfig(mode="dense", k=K))
        lexical_only = RetrievalConfig(mode="hybrid", k=K, fusion="convex", dense_weight=0)
        convex = retrieve(conn, SYNTHETIC.index_id, query, vector, lexical_only)
        even = retrieve(conn, SYNTHETIC.index_id, query, vector, RetrievalConfig(mode="hybrid", k=K, fusion="convex"))
        rrf = retrieve(conn, SYNTHETIC.index_id, query, vector, RetrievalConfig(mode="hybrid", k=K, lexical_weight=0))
    assert [h.chunk_id for h in convex] == [h.chunk_id for h in bm25]  # weight 0 on dense: BM25's order
    assert convex[0].score == pytest.approx(1.0) and all(0 <= h.score <= 1 for h in even)
    assert [h.chunk_id for h in rrf] == [h.chunk_id for h in dense]
    assert {h.chunk_id for h in even} & {h.chunk_id for h in bm25} and {h.chunk_id for h in even} & {
        h.chunk_id for h in dense
    }


def test_bm25_equals_the_reference_on_covid_qa(db, new_tenant, embedder, pipeline, dataset):
    from evals.gold import load_covid_qa
    from tasks.ingest_text import ingest_texts

    docs, items = load_covid_qa(dataset("covid_qa"), max_docs=4)
    tenant = new_tenant("bm25-covid")
    summary = ingest_texts(db, tenant, pipeline, embedder, [(d.source_id, d.text) for d in docs])
    assert summary.failed == 0
    with db.tenant(tenant) as conn:
        result = compare(conn, pipeline.index_id, [], RetrievalConfig(mode="lexical", k=K), items)
    assert result.queries == len(items) > 20
    assert result.agreement >= 0.98, result
    assert abs(result.ndcg_ours - result.ndcg_reference) <= 0.005, result


# Today's stores write 0022's column (a tenant's own graph): at an older revision it is put back alone, and
# no tenant claims a graph of its own.
SHIM_0022 = (
    "ALTER TABLE chunks ADD COLUMN own_graph boolean NOT NULL DEFAULT false; "
    "CREATE FUNCTION own_graph(text) RETURNS boolean LANGUAGE sql STABLE AS 'SELECT false'"
)
UNSHIM_0022 = "DROP FUNCTION own_graph(text); ALTER TABLE chunks DROP COLUMN own_graph"


def admin(settings, statements: str) -> None:
    with psycopg.connect(admin_conninfo(settings), autocommit=True) as conn:
        conn.execute(statements)


def test_the_migration_backfills_chunks_stored_before_it(migrated):
    """Chunks of several tenants stored at 0008 get their postings and statistics when 0010 runs."""
    with scratch_database("sluice_test_bm25_backfill") as settings:
        migrate(settings, "0008")
        admin(settings, SHIM_0022)
        rng = np.random.default_rng(13)
        with Database(settings) as old:
            for tenant in ("a", "b"):
                create_tenant(old, tenant)
                _load(old, tenant, _texts(150, rng), seed=8, vector_index=False)  # 0014 builds the graph
        admin(settings, UNSHIM_0022)
        migrate(settings)
        with Database(settings) as new:
            for tenant in ("a", "b"):
                with new.tenant(tenant) as conn:
                    assert _stats(conn, SYNTHETIC.index_id) == _recount(conn, SYNTHETIC.index_id) == (150, ANY)
                    assert _postings_match_chunks(conn, SYNTHETIC.index_id)
                    assert _compare(conn, SYNTHETIC.index_id, _queries(20, rng), RetrievalConfig(k=K)) == (1.0, ANY)


def test_the_triggers_of_0018_and_0023_keep_statistics_exact_and_downgrade_to_the_ones_they_replaced(migrated):
    """0018's trigger skips empty transition tables, 0023's re-posts only updated rows whose text changed; their
    downgrades restore 0018's and 0014's, and each keeps the statistics."""
    from alembic import command

    rng = np.random.default_rng(17)
    with scratch_database("sluice_test_lexical_0018") as settings:

        def source() -> str:
            with psycopg.connect(admin_conninfo(settings)) as conn:
                return conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'lexical_sync'").fetchone()[0]

        migrate(settings)
        with Database(settings) as db:
            create_tenant(db, "a")
            with db.tenant("a") as conn:
                register_index(conn, SYNTHETIC, IDENTITY)
            for step in ("head", "0022", "0017", "head again"):
                if step == "0022":
                    run_alembic(settings, lambda cfg: command.downgrade(cfg, "0022"))
                    assert "EXISTS (SELECT FROM old_rows)" in source() and "x.tsv = t.tsv" not in source()
                elif step == "0017":
                    run_alembic(settings, lambda cfg: command.downgrade(cfg, "0017"))
                    assert "EXECUTE format" in source() and "EXISTS (SELECT FROM old_rows)" not in source()
                    admin(settings, SHIM_0022)
                else:
                    if step == "head again":
                        admin(settings, UNSHIM_0022)
                    migrate(settings)
                    assert "EXISTS (SELECT FROM old_rows)" in source() and "x.tsv = t.tsv" in source()
                with db.tenant("a") as conn:
                    for i in range(12):  # new documents, then the same ones replaced (the update and delete paths)
                        _store_document(conn, f"doc-{i}", _texts(int(rng.integers(1, 4)), rng))
                    replace_chunks_in_place(conn, "doc-1", _texts(1, rng))
                with db.tenant("a") as conn:
                    assert _stats(conn, SYNTHETIC.index_id) == _recount(conn, SYNTHETIC.index_id), step
                    assert _postings_match_chunks(conn, SYNTHETIC.index_id), step
