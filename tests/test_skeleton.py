"""Walking skeleton: ingest the sample corpus, answer the gold questions, cite the right source."""

from __future__ import annotations

import json

import pytest

from sluice.errors import EmbedderMismatchError
from tasks.answer import answer_question
from tasks.embed import EmbedderIdentity
from tasks.ingest import ingest_source
from tests.conftest import SAMPLE


@pytest.fixture(scope="module")
def ingested(db, embedder, pipeline, sample_corpus):
    from sluice.db import create_tenant

    tenant = "skeleton"
    create_tenant(db, tenant)
    summary = ingest_source(db, tenant, pipeline, embedder, sample_corpus, 10_000_000)
    return tenant, summary


def _gold():
    return [json.loads(line) for line in (SAMPLE / "gold.jsonl").read_text().splitlines() if line.strip()]


def test_sample_corpus_ingests_every_file(ingested, sample_corpus):
    _, summary = ingested
    files = [p for p in sample_corpus.iterdir() if p.is_file()]
    assert summary.failed == 0, summary.errors
    assert summary.ingested == len(files) >= 12
    assert summary.chunks >= summary.ingested


def test_chunks_record_exact_source_spans(ingested, db):
    tenant, _ = ingested
    with db.tenant(tenant) as conn:
        rows = conn.execute(
            "SELECT c.char_start, c.char_end, c.text, d.text FROM chunks c JOIN documents d USING (document_id)"
        ).fetchall()
    assert rows
    for start, end, chunk_text, doc_text in rows:
        assert doc_text[start:end] == chunk_text


@pytest.mark.parametrize("item", _gold(), ids=lambda g: g["id"])
def test_gold_question_cites_expected_source(ingested, db, embedder, pipeline, item):
    tenant, _ = ingested
    result = answer_question(db, tenant, pipeline, embedder, item["question"])
    expected = {e["source_id"] for e in item["evidence"]}
    cited = {c.source_id for c in result.answer.citations}
    assert cited & expected, f"cited {cited}, expected one of {expected}; answer: {result.answer.text}"
    assert result.answer.citations and "[1]" in result.answer.text
    for cite in result.answer.citations:
        assert 0 <= cite.start < cite.end


def test_reingest_is_a_no_op(ingested, db, embedder, pipeline, sample_corpus):
    tenant, first = ingested
    calls = embedder.calls
    with db.tenant(tenant) as conn:
        before = conn.execute("SELECT count(*), max(chunk_id) FROM chunks").fetchone()
    again = ingest_source(db, tenant, pipeline, embedder, sample_corpus, 10_000_000)
    assert again.unchanged == first.ingested and again.ingested == again.updated == 0
    assert embedder.calls == calls, "re-ingesting unchanged files must not call the model"
    with db.tenant(tenant) as conn:
        assert conn.execute("SELECT count(*), max(chunk_id) FROM chunks").fetchone() == before


def test_query_with_another_embedder_is_refused(ingested, db, embedder, pipeline):
    tenant, _ = ingested
    from tasks.store import check_embedder

    other = EmbedderIdentity(embedder.identity.model, "0" * 64, embedder.identity.dim, True)
    with pytest.raises(EmbedderMismatchError, match="weights"):
        with db.tenant(tenant) as conn:
            check_embedder(conn, pipeline.index_id, other)
