"""What the console shows from the database, read in the signed-in tenant's transaction (RLS applies)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from serving.api.state import ApiState

PAGE_SIZE = 20
CONTEXT_CHARS = 1500  # characters shown either side of a cited span

_DOCUMENTS = """
SELECT d.public_id::text, d.source_id, d.collection, d.status, d.metadata, d.updated_at,
       i.index_id, coalesce(i.chunk_count, 0), count(*) OVER ()
FROM documents d
LEFT JOIN LATERAL (
    -- the index the collection is served from (its row, else the tenant's default row), else the newest
    SELECT x.index_id, x.chunk_count FROM indexed_documents x
    WHERE x.document_id = d.document_id
    ORDER BY x.index_id = (SELECT a.index_id FROM active_indexes a WHERE a.collection IN (d.collection, 'default')
                           ORDER BY a.collection = d.collection DESC LIMIT 1) DESC NULLS LAST, x.indexed_at DESC
    LIMIT 1
) i ON true
WHERE (%(collection)s::text IS NULL OR d.collection = %(collection)s)
  AND (%(q)s::text IS NULL OR d.source_id ILIKE '%%' || %(q)s || '%%' OR d.metadata::text ILIKE '%%' || %(q)s || '%%')
ORDER BY d.updated_at DESC, d.document_id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""
_DOC_FIELDS = ("id", "source", "collection", "status", "metadata", "updated", "index_id", "chunks")


@dataclass(frozen=True)
class Passage:
    """A cited span of a document with the text around it."""

    document_id: str
    source: str
    collection: str
    before: str
    cited: str
    after: str
    clipped: tuple[bool, bool]  # text left out before / after the context


def collections(state: ApiState, tenant: str) -> list[tuple[str, int]]:
    """The tenant's collections and how many documents each holds."""
    sql = "SELECT collection, count(*) FROM documents GROUP BY collection ORDER BY collection"
    return [(c, int(n)) for c, n in state.db.execute_as(tenant, sql)]


def documents(state: ApiState, tenant: str, collection: str | None, q: str | None, page: int) -> tuple[list, int]:
    """One page of documents (newest first) with chunk count in the served index, and the total matching."""
    like = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") if q else None  # literal text
    params = {"collection": collection, "q": like, "limit": PAGE_SIZE, "offset": (page - 1) * PAGE_SIZE}
    rows = state.db.execute_as(tenant, _DOCUMENTS, params)
    total = int(rows[0][8]) if rows else 0
    return [dict(zip(_DOC_FIELDS, r[:8], strict=True)) for r in rows], total


def ingest_errors(state: ApiState, tenant: str, limit: int = 50) -> list[dict[str, Any]]:
    """The tenant's newest per-document ingestion errors."""
    sql = "SELECT source_id, stage, reason, created_at FROM ingest_errors ORDER BY created_at DESC LIMIT %s"
    rows = state.db.execute_as(tenant, sql, (limit,))
    return [dict(zip(("source", "stage", "reason", "at"), r, strict=True)) for r in rows]


def passage(state: ApiState, tenant: str, document_id: str, start: int, end: int) -> Passage | None:
    """The cited span of one of this tenant's documents in its context; None if the tenant has no such document."""
    try:
        uuid.UUID(document_id)
    except ValueError:
        return None
    sql = "SELECT source_id, collection, text FROM documents WHERE public_id = %s"
    rows = state.db.execute_as(tenant, sql, (document_id,))
    if not rows:
        return None
    source, collection, text = rows[0]
    start, end = max(0, min(start, len(text))), max(0, min(end, len(text)))
    start, end = min(start, end), max(start, end)
    lo, hi = max(0, start - CONTEXT_CHARS), min(len(text), end + CONTEXT_CHARS)
    return Passage(
        document_id, source, collection, text[lo:start], text[start:end], text[end:hi], (lo > 0, hi < len(text))
    )
