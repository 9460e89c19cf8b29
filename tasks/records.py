"""Bulk-load pre-chunked records (one chunk per document) with their vectors: BEIR corpora, synthetic sets.

Runs in the caller's tenant transaction. COPY into an RLS table is refused, so rows are staged
in a TEMP table and inserted with one INSERT ... SELECT each for documents, chunks and
indexed_documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb


@dataclass(frozen=True)
class Record:
    source_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    chunk_metadata: dict[str, Any] = field(default_factory=dict)
    collection: str = "default"


_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS record_stage (source_id text, text text, metadata jsonb, "
    "chunk_metadata jsonb, collection text, dim int, embedding vector) ON COMMIT DELETE ROWS"
)
_DOCS = (
    "INSERT INTO documents (tenant_id, source_id, content_hash, metadata, text, collection) "
    "SELECT current_setting('app.tenant_id'), source_id, md5(text), metadata, text, collection FROM record_stage "
    "ON CONFLICT (tenant_id, source_id) DO NOTHING"
)
_CHUNKS = (
    "INSERT INTO chunks (tenant_id, document_id, index_id, ordinal, char_start, char_end, text, metadata, "
    "dim, embedding, own_graph) SELECT current_setting('app.tenant_id'), d.document_id, %(index_id)s, 0, 0, "
    "length(s.text), s.text, s.chunk_metadata, s.dim, s.embedding, (SELECT own_graph(%(index_id)s)) "
    "FROM record_stage s JOIN documents d USING (source_id) "
    "ON CONFLICT (tenant_id, document_id, index_id, ordinal) DO NOTHING"
)
_INDEXED = (
    "INSERT INTO indexed_documents (tenant_id, document_id, index_id, content_hash, chunk_count) "
    "SELECT current_setting('app.tenant_id'), d.document_id, %(index_id)s, d.content_hash, 1 "
    "FROM record_stage s JOIN documents d USING (source_id) ON CONFLICT DO NOTHING"
)


def store_records(conn: psycopg.Connection, index_id: str, records: list[Record], vectors: np.ndarray) -> int:
    """Insert each record as a document with one chunk in index `index_id`; return chunks inserted."""
    if len(records) != len(vectors):
        raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
    conn.execute(_STAGE)
    copy_sql = "COPY record_stage (source_id, text, metadata, chunk_metadata, collection, dim, embedding) FROM STDIN"
    with conn.cursor().copy(copy_sql + " (FORMAT BINARY)") as copy:
        copy.set_types(["text", "text", "jsonb", "jsonb", "text", "int4", "vector"])
        for rec, vec in zip(records, vectors, strict=True):
            copy.write_row(
                (rec.source_id, rec.text, Jsonb(rec.metadata), Jsonb(rec.chunk_metadata), rec.collection, len(vec), vec)
            )
    conn.execute(_DOCS)
    inserted = conn.execute(_CHUNKS, {"index_id": index_id}).rowcount
    conn.execute(_INDEXED, {"index_id": index_id})
    conn.execute("TRUNCATE record_stage")
    return inserted
