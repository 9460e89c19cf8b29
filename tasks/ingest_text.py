"""Ingest documents that arrive as plain text (no file, no parser): the stored text is the text given.

Used for evaluation corpora whose gold spans are offsets into the original text (covid_qa): the
file parser joins elements with blank lines and would shift every offset, this path keeps them exact.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.errors import DocumentError
from tasks.chunk import make_chunker
from tasks.embed import Embedder
from tasks.ingest import CachedEncoder, IngestSummary, Prepared, SourceFile, embed_texts, store_prepared
from tasks.parse import Element, ParsedDocument, content_hash
from tasks.store import document_state, register_index


def text_document(source_id: str, text: str) -> ParsedDocument:
    """A parsed document whose text is exactly `text`, as one element."""
    if not text.strip():
        raise DocumentError(source_id, "parse", "the text is empty")
    digest = content_hash(text.encode("utf-8", "surrogatepass"))
    return ParsedDocument(source_id, text, (Element("NarrativeText", 0, len(text)),), digest, {"filetype": "txt"})


def ingest_text(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    embedder: Embedder,
    doc: ParsedDocument,
    summary: IngestSummary | None = None,
) -> str:
    """Chunk, embed and store one text document into the config's index; return the outcome.

    With `summary`, its chunk and truncated-chunk counts grow by this document's.
    """
    with db.tenant(tenant) as conn:
        state = document_state(conn, doc.source_id, config.index_id)
    if state and state.content_hash == doc.content_hash and state.indexed_hash == doc.content_hash:
        return "unchanged"
    chunks = make_chunker(config.chunker, CachedEncoder(db, tenant, embedder)).split(doc)
    if not chunks:
        raise DocumentError(doc.source_id, "chunk", "the chunker produced no chunks")
    vectors, fresh = embed_texts(db, tenant, embedder, [c.embed_text for c in chunks])
    prep = Prepared(SourceFile(Path(doc.source_id), doc.source_id), doc, chunks, state)
    outcome = store_prepared(db, tenant, config, embedder.identity.key, prep, vectors, fresh)
    if summary is not None:
        summary.chunks += len(chunks)
        summary.truncated += embedder.count_truncated([c.embed_text for c in chunks])
    return outcome


def ingest_texts(
    db: Database, tenant: str, config: PipelineConfig, embedder: Embedder, docs: Iterable[tuple[str, str]]
) -> IngestSummary:
    """Ingest (source_id, text) pairs; a failing document is counted and the others go on."""
    summary = IngestSummary(run_id=uuid.uuid4().hex)
    with db.tenant(tenant) as conn:
        register_index(conn, config, embedder.identity)
    for source_id, text in docs:
        try:
            outcome = ingest_text(db, tenant, config, embedder, text_document(source_id, text), summary)
        except DocumentError as err:
            summary.failed += 1
            summary.errors.append(err)
            continue
        setattr(summary, outcome, getattr(summary, outcome) + 1)
    return summary
