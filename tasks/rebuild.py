"""Build a tenant's stored documents into another index: re-chunk the stored text, re-parse only when needed.

Chunking reads the stored text and element spans (`documents.text`, `documents.elements`), so a chunker or
embedder change never touches the original files. The original bytes are needed only when the parser
changed, or when the target chunker reads element spans (structure, parent_child) that a document stored
before they were kept lacks: they are re-read from the file's path recorded at ingest
(`documents.source_uri`) and must still hash to the stored version. A document whose file is gone or
changed, or whose new parse gives another text than the stored one (chunk spans point into the stored
text), is reported and stays on the old index. Uploads are removed once ingested, so a parser change
reaches them only through a new upload.

Vectors come from the tenant's embedding cache wherever it has them (identical text is never embedded
twice), and each document is stored in its own transaction: a crash leaves it absent from the target or
complete there, and a rerun builds only what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.errors import DocumentError
from tasks.chunk import Chunk, make_chunker
from tasks.embed import Embedder
from tasks.indexes import hold_store_lock
from tasks.ingest import CachedEncoder, embed_texts
from tasks.parse import Element, ParsedDocument, content_hash
from tasks.parse_limits import ParseLimits
from tasks.parse_process import parse_bounded
from tasks.store import cache_embeddings, replace_chunks
from tasks.text import text_hash

NEEDS_ELEMENTS = frozenset({"structure", "parent_child"})  # chunkers that read element spans (Title starts)
_COLUMNS = "d.document_id, d.source_id, d.content_hash, d.text, d.elements, d.metadata, d.source_uri"
_LACKS = (
    "NOT EXISTS (SELECT 1 FROM indexed_documents i WHERE i.document_id = d.document_id AND i.index_id = %(index)s "
    "AND i.content_hash = d.content_hash) AND NOT (d.document_id = ANY(%(skip)s))"
)


@dataclass(frozen=True)
class StoredDocument:
    document_id: int
    source_id: str
    content_hash: str
    text: str
    elements: list | None
    metadata: dict[str, Any]
    source_uri: str | None


def lacking(conn, index_id: str, after: int = 0, limit: int = 32, skip: list[int] | None = None) -> list:
    """The tenant's documents (by id, after `after`) that `index_id` lacks or holds an older version of."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM documents d WHERE d.document_id > %(after)s AND {_LACKS} "  # noqa: S608 - constants
        "ORDER BY d.document_id LIMIT %(limit)s",
        {"index": index_id, "after": after, "limit": limit, "skip": skip or []},
    ).fetchall()
    return [StoredDocument(*r) for r in rows]


def count_lacking(conn, index_id: str, skip: list[int] | None = None) -> int:
    """How many of the tenant's documents `index_id` still lacks (those in `skip` aside)."""
    sql = f"SELECT count(*) FROM documents d WHERE {_LACKS}"  # noqa: S608 - constants
    return conn.execute(sql, {"index": index_id, "skip": skip or []}).fetchone()[0]


@dataclass
class Builder:
    """Builds stored documents into `target`'s index for one tenant."""

    db: Database
    tenant: str
    target: PipelineConfig
    embedder: Embedder
    reparse: bool  # the parser changed: every document is parsed again from its original bytes
    limits: ParseLimits
    max_bytes: int
    failures: dict[int, DocumentError] = field(default_factory=dict)

    def build(self, docs: list[StoredDocument]) -> int:
        """Chunk, embed (cache first) and store each document; return how many were stored."""
        ready: list[tuple[StoredDocument, list[Chunk]]] = []
        for doc in docs:
            try:
                ready.append((doc, self.chunks(doc)))
            except DocumentError as err:
                self.failures[doc.document_id] = err
        texts = [c.embed_text for _, chunks in ready for c in chunks]
        vectors, fresh = embed_texts(self.db, self.tenant, self.embedder, texts)
        if fresh:  # own transaction: a cache row is valid whatever happens to the documents
            with self.db.tenant(self.tenant) as conn:
                cache_embeddings(conn, self.embedder.identity.key, fresh)
        return sum(self._store(doc, chunks, vectors) for doc, chunks in ready)

    def chunks(self, stored: StoredDocument) -> list[Chunk]:
        """The target chunker's chunks of a stored document."""
        doc = self.parsed(stored)
        try:
            chunks = make_chunker(self.target.chunker, CachedEncoder(self.db, self.tenant, self.embedder)).split(doc)
        except Exception as exc:
            raise DocumentError(stored.source_id, "rollout", f"chunk: {type(exc).__name__}: {exc}") from exc
        if not chunks:
            raise DocumentError(stored.source_id, "rollout", "the chunker produced no chunks")
        return chunks

    def parsed(self, stored: StoredDocument) -> ParsedDocument:
        """The document as the chunker needs it: from storage, or parsed again from the original file."""
        needs_elements = stored.elements is None and self.target.chunker.kind in NEEDS_ELEMENTS
        if not self.reparse and not needs_elements:
            spans = stored.elements or [["NarrativeText", 0, len(stored.text)]]
            elements = tuple(Element(kind, start, end) for kind, start, end in spans)
            return ParsedDocument(stored.source_id, stored.text, elements, stored.content_hash, stored.metadata)
        path, data = Path(stored.source_uri or ""), self._bytes(stored)
        doc = parse_bounded(path, stored.source_id, self.target.parser, data, self.limits)
        if doc.text != stored.text:
            raise DocumentError(
                stored.source_id,
                "rollout",
                "the new parser gives another text than the stored one (stored chunk spans point into it): "
                "re-ingest the file to store the new text, then run the rollout again",
            )
        return doc

    def _bytes(self, stored: StoredDocument) -> bytes:
        path = Path(stored.source_uri) if stored.source_uri else None
        if path is None or not path.is_file():
            where = f"its file {stored.source_uri} is gone" if path else "no file was recorded (an upload or text)"
            raise DocumentError(
                stored.source_id, "rollout", f"the parser changed and {where}: upload or ingest it again"
            )
        if path.stat().st_size > self.max_bytes:
            raise DocumentError(stored.source_id, "rollout", f"{path} is above SLUICE_MAX_FILE_BYTES now")
        data = path.read_bytes()
        if content_hash(data) != stored.content_hash:
            raise DocumentError(
                stored.source_id, "rollout", f"{path} changed since it was ingested: ingest it again, then roll out"
            )
        return data

    def _store(self, doc: StoredDocument, chunks: list[Chunk], vectors: dict[str, np.ndarray]) -> int:
        matrix = np.vstack([vectors[text_hash(c.embed_text)] for c in chunks])
        with self.db.tenant(self.tenant) as conn:
            hold_store_lock(conn)  # first, before any row lock (see tasks/indexes.py)
            now = conn.execute(
                "SELECT content_hash FROM documents WHERE document_id = %s FOR SHARE", (doc.document_id,)
            ).fetchone()
            if now is None or now[0] != doc.content_hash:
                return 0  # deleted or changed meanwhile: the catch-up pass builds the new version
            replace_chunks(conn, doc.document_id, self.target.index_id, doc.content_hash, chunks, matrix)
        self.failures.pop(doc.document_id, None)
        return 1
