"""Writes to Postgres: index registration, the embedding cache, atomic document upserts.

Every function takes a connection already inside `Database.tenant()` (or `shared()`), so RLS
decides what it can see and write. Bulk rows go through COPY into a TEMP table, then one
`INSERT ... ON CONFLICT`: COPY straight into an RLS table is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from sluice.champion import write_config
from sluice.config import PipelineConfig
from sluice.errors import ConfigError, EmbedderMismatchError
from sluice.settings import GRAPH_LOCK_TIMEOUT_S
from tasks.chunk import Chunk
from tasks.embed import EmbedderIdentity
from tasks.graph import ensure_graph
from tasks.indexes import hold_store_lock
from tasks.parse import ParsedDocument


def register_index(
    conn: psycopg.Connection,
    config: PipelineConfig,
    identity: EmbedderIdentity,
    vector_index: bool = True,
    lock_timeout_s: float = GRAPH_LOCK_TIMEOUT_S,
) -> None:
    """Record the config and its embedding space; refuse an embedder that differs from the recorded one.

    With `vector_index` (the row path) the index's HNSW graph exists before any row is stored, unless its
    build waited over `lock_timeout_s` for its lock and was deferred (tasks/graph.py: logged, the rows
    then go in without it); a bulk load passes False and builds it once its rows are in
    (`tasks.bulk.build_vector_index`).
    """
    write_config(conn, config)
    body = Jsonb(config.index_body())
    conn.execute(
        "INSERT INTO indexes (index_id, body, embedder_model, weights_hash, dim, normalize) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (config.index_id, body, identity.model, identity.weights_hash, identity.dim, identity.normalize),
    )
    check_embedder(conn, config.index_id, identity)
    if vector_index:
        ensure_graph(conn, config.index_id, lock_timeout_s)


def check_embedder(conn: psycopg.Connection, index_id: str, identity: EmbedderIdentity) -> None:
    """Raise EmbedderMismatchError unless `identity` is the embedder index `index_id` was built with."""
    row = conn.execute(  # precision and backend live in the index body (absent in older bodies: float32, torch)
        "SELECT embedder_model, weights_hash, dim, normalize, coalesce(body->'embedder'->>'precision', 'float32'), "
        "coalesce(body->'embedder'->>'backend', 'torch') FROM indexes WHERE index_id = %s",
        (index_id,),
    ).fetchone()
    if row is None:
        raise EmbedderMismatchError(f"index {index_id} does not exist: ingest with this config first")
    recorded = EmbedderIdentity(*row)
    if recorded != identity:
        raise EmbedderMismatchError(
            f"index {index_id} was built with {recorded.model} (weights {recorded.weights_hash[:12]}, "
            f"{recorded.dim}-d, normalize={recorded.normalize}, {recorded.label}); the embedder in use is "
            f"{identity.model} (weights {identity.weights_hash[:12]}, {identity.dim}-d, "
            f"normalize={identity.normalize}, {identity.label}): "
            "use the recorded embedder or ingest into a new index"
        )


@dataclass(frozen=True)
class DocumentState:
    document_id: int
    content_hash: str
    indexed_hash: str | None  # content hash this index holds chunks for, if any


def document_state(conn: psycopg.Connection, source_id: str, index_id: str) -> DocumentState | None:
    """What is stored for a source id: its document version and this index's version of it."""
    row = conn.execute(
        "SELECT d.document_id, d.content_hash, i.content_hash FROM documents d "
        "LEFT JOIN indexed_documents i ON i.document_id = d.document_id AND i.index_id = %s "
        "WHERE d.source_id = %s",
        (index_id, source_id),
    ).fetchone()
    return DocumentState(*row) if row else None


def cached_embeddings(conn: psycopg.Connection, model_key: str, hashes: list[str]) -> dict[str, np.ndarray]:
    """Look up cached vectors by text hash."""
    if not hashes:
        return {}
    rows = conn.execute(
        "SELECT text_hash, embedding FROM embedding_cache WHERE model_key = %s AND text_hash = ANY(%s)",
        (model_key, list(set(hashes))),
    ).fetchall()
    return {h: np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32) for h, v in rows}


def cache_embeddings(conn: psycopg.Connection, model_key: str, items: dict[str, np.ndarray]) -> None:
    """Add vectors to the tenant's embedding cache (existing entries are kept)."""
    if not items:
        return
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS embedding_stage (text_hash text, embedding vector) ON COMMIT DELETE ROWS"
    )
    with conn.cursor().copy("COPY embedding_stage (text_hash, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["text", "vector"])
        for key, vector in items.items():
            copy.write_row((key, vector))
    conn.execute(
        "INSERT INTO embedding_cache (tenant_id, model_key, text_hash, embedding) "
        "SELECT current_setting('app.tenant_id'), %s, text_hash, embedding FROM embedding_stage "
        "ON CONFLICT DO NOTHING",
        (model_key,),
    )
    conn.execute("TRUNCATE embedding_stage")


def upsert_document(
    conn: psycopg.Connection,
    doc: ParsedDocument,
    metadata: dict[str, Any],
    collection: str = "default",
    source_uri: str | None = None,
    storing: str | None = None,
) -> tuple[int, bool]:
    """Insert or update a document row (in `collection`); return (document_id, content_changed).

    Element spans are kept so a rollout can re-chunk the stored text without re-parsing, and `source_uri`
    (the file's absolute path) so it can re-read the original bytes when the parser changes. New content
    deletes the document's chunks in every index but `storing`, the one whose chunks the caller stores next
    in this transaction (`replace_chunks`, which keeps those the edit left unchanged).
    """
    elements = Jsonb(element_spans(doc))
    inserted = conn.execute(
        "INSERT INTO documents (tenant_id, source_id, content_hash, metadata, text, collection, elements, source_uri) "
        "VALUES (current_setting('app.tenant_id'), %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (tenant_id, source_id) DO NOTHING RETURNING document_id",
        (doc.source_id, doc.content_hash, Jsonb(metadata), doc.text, collection, elements, source_uri),
    ).fetchone()
    if inserted:
        return inserted[0], True
    document_id, stored_hash = conn.execute(
        "SELECT document_id, content_hash FROM documents WHERE source_id = %s FOR UPDATE", (doc.source_id,)
    ).fetchone()
    set_collection(conn, doc.source_id, collection)
    if stored_hash == doc.content_hash:
        _refresh(conn, document_id, elements, source_uri)
        return document_id, False
    # New content: every index's chunks of the old text are stale (their spans point into it), but in the
    # index being stored the new chunks replace them in this transaction.
    stale = "WHERE document_id = %s AND index_id IS DISTINCT FROM %s"
    conn.execute(f"DELETE FROM chunks {stale}", (document_id, storing))  # noqa: S608 (constants only)
    conn.execute(f"DELETE FROM indexed_documents {stale}", (document_id, storing))  # noqa: S608
    conn.execute(
        "UPDATE documents SET content_hash = %s, text = %s, metadata = %s, status = 'ingested', elements = %s, "
        "source_uri = %s, updated_at = now() WHERE document_id = %s",
        (doc.content_hash, doc.text, Jsonb(metadata), elements, source_uri, document_id),
    )
    return document_id, True


def _refresh(conn: psycopg.Connection, document_id: int, elements: Jsonb, source_uri: str | None) -> None:
    """Same bytes again: fill what a row stored before 0008 lacks, and follow a file that moved."""
    conn.execute(
        "UPDATE documents SET elements = coalesce(elements, %s), source_uri = coalesce(%s, source_uri) "
        "WHERE document_id = %s",
        (elements, source_uri, document_id),
    )


def element_spans(doc: ParsedDocument) -> list[list[Any]]:
    """The document's elements as [kind, start, end] rows (all a chunker reads of them)."""
    return [[e.kind, e.start, e.end] for e in doc.elements]


_COLLECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def validate_collection(collection: str) -> str:
    """Return the collection name, or raise ConfigError naming the rule (mirrors the schema's CHECK)."""
    if not isinstance(collection, str) or not _COLLECTION.fullmatch(collection):
        raise ConfigError(
            f"collection {collection!r} is invalid: use 1-128 ASCII letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return collection


def set_collection(conn: psycopg.Connection, source_id: str, collection: str) -> None:
    """Move a document to `collection` (a source id is unique per tenant, so it lives in one collection)."""
    conn.execute(
        "UPDATE documents SET collection = %s WHERE source_id = %s AND collection <> %s",
        (collection, source_id, collection),
    )


# A document's chunks, upserted by ordinal. A chunk stored before whose offsets, text, metadata and vector are
# all unchanged is left as it is, its `own_graph` too (re-ingesting an edited document rewrites only the chunks
# the edit moved or changed): a rewritten row is a new tuple in every index on `chunks`, an insert into the
# live HNSW graph and its BM25 postings deleted and written again (docs/retrieval.md, "Re-ingesting an edited
# document").
UNCHANGED_KEPT = (
    " WHERE (chunks.char_start, chunks.char_end, chunks.text, chunks.metadata, chunks.dim, chunks.embedding) "
    "IS DISTINCT FROM (EXCLUDED.char_start, EXCLUDED.char_end, EXCLUDED.text, EXCLUDED.metadata, EXCLUDED.dim, "
    "EXCLUDED.embedding)"
)
UPSERT_CHUNKS = (
    "INSERT INTO chunks (tenant_id, document_id, index_id, ordinal, char_start, char_end, text, metadata, "
    "dim, embedding, own_graph) SELECT current_setting('app.tenant_id'), %(doc)s, %(index)s, ordinal, "
    "char_start, char_end, text, metadata, dim, embedding, (SELECT own_graph(%(index)s)) "
    "FROM chunk_stage ON CONFLICT (tenant_id, document_id, index_id, ordinal) DO UPDATE SET "
    "char_start = EXCLUDED.char_start, char_end = EXCLUDED.char_end, text = EXCLUDED.text, "
    "metadata = EXCLUDED.metadata, dim = EXCLUDED.dim, embedding = EXCLUDED.embedding, "
    "own_graph = EXCLUDED.own_graph" + UNCHANGED_KEPT
)


def replace_chunks(
    conn: psycopg.Connection,
    document_id: int,
    index_id: str,
    content: str,
    chunks: list[Chunk],
    vectors: np.ndarray,
) -> None:
    """Make `chunks` this index's chunks of the document, in the caller's transaction."""
    hold_store_lock(conn)  # a rollout's switch never slips between this store and its completeness check
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS chunk_stage (ordinal int, char_start int, char_end int, text text, "
        "metadata jsonb, dim int, embedding vector) ON COMMIT DELETE ROWS"
    )
    sql = "COPY chunk_stage (ordinal, char_start, char_end, text, metadata, dim, embedding) FROM STDIN (FORMAT BINARY)"
    with conn.cursor().copy(sql) as copy:
        copy.set_types(["int4", "int4", "int4", "text", "jsonb", "int4", "vector"])
        for chunk, vector in zip(chunks, vectors, strict=True):
            copy.write_row(
                (chunk.ordinal, chunk.start, chunk.end, chunk.embed_text, Jsonb(chunk.metadata), len(vector), vector)
            )
    conn.execute(UPSERT_CHUNKS, {"doc": document_id, "index": index_id})
    conn.execute("TRUNCATE chunk_stage")
    conn.execute(
        "DELETE FROM chunks WHERE document_id = %s AND index_id = %s AND ordinal >= %s",
        (document_id, index_id, len(chunks)),
    )
    _mark_indexed(conn, document_id, index_id, content, len(chunks))


def _mark_indexed(conn: psycopg.Connection, document_id: int, index_id: str, content: str, chunks: int) -> None:
    """Record which version of the document the index now holds, and in how many chunks."""
    conn.execute(
        "INSERT INTO indexed_documents (tenant_id, document_id, index_id, content_hash, chunk_count) "
        "VALUES (current_setting('app.tenant_id'), %s, %s, %s, %s) ON CONFLICT (tenant_id, document_id, index_id) "
        "DO UPDATE SET content_hash = EXCLUDED.content_hash, chunk_count = EXCLUDED.chunk_count, indexed_at = now()",
        (document_id, index_id, content, chunks),
    )


def record_error(conn: psycopg.Connection, source_id: str, stage: str, reason: str, run_id: str | None) -> None:
    """Record a per-document failure the user can query."""
    conn.execute(
        "INSERT INTO ingest_errors (tenant_id, source_id, stage, reason, run_id) "
        "VALUES (current_setting('app.tenant_id'), %s, %s, %s, %s)",
        (source_id, stage, reason[:4000], run_id),
    )


def delete_documents_except(conn: psycopg.Connection, keep: list[str], collection: str = "default") -> int:
    """Delete the collection's documents (and, by cascade, their chunks) whose source id is not in `keep`."""
    cur = conn.execute("DELETE FROM documents WHERE collection = %s AND NOT (source_id = ANY(%s))", (collection, keep))
    return cur.rowcount


def parent_sections(conn: psycopg.Connection, chunk_ids: list[int]) -> dict[int, str]:
    """Parent section text of parent_child chunks, by chunk id (chunks of other strategies are absent).

    PostgreSQL's substr counts characters from 1, as Python's offsets count code points from 0.
    """
    rows = conn.execute(
        "SELECT c.chunk_id, substr(d.text, (c.metadata->>'parent_start')::int + 1, "
        "(c.metadata->>'parent_end')::int - (c.metadata->>'parent_start')::int) "
        "FROM chunks c JOIN documents d USING (document_id) "
        "WHERE c.chunk_id = ANY(%s) AND c.metadata ? 'parent_start'",
        (chunk_ids,),
    ).fetchall()
    return dict(rows)
