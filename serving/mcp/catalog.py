"""What a tenant can browse: its collections, its documents (paged) and a document's text.

Every read runs under the tenant's row-level security (`Database.execute_as`): another tenant's
document is not found, exactly like one that never existed.
"""

from __future__ import annotations

import uuid

from sluice.db import Database
from sluice.errors import SluiceError

MAX_READ_CHARS = 20_000  # one read_document call; longer documents are read span by span


class NotFound(SluiceError):
    """An id this tenant has no document (or job) for; another tenant's id reads the same."""


def collections(db: Database, tenant: str) -> list[dict]:
    """The tenant's collections with their document counts."""
    rows = db.execute_as(tenant, "SELECT collection, count(*) FROM documents GROUP BY collection ORDER BY collection")
    return [{"collection": name, "documents": count} for name, count in rows]


def documents(
    db: Database, tenant: str, collection: str | None, source_prefix: str | None, offset: int, limit: int
) -> dict:
    """One page of the tenant's documents, by source name, optionally within a collection or under a prefix."""
    like = None if source_prefix is None else _escape_like(source_prefix) + "%"
    rows = db.execute_as(
        tenant,
        "SELECT public_id::text, source_id, collection, status, length(text), updated_at FROM documents "
        "WHERE (%(c)s::text IS NULL OR collection = %(c)s) AND (%(p)s::text IS NULL OR source_id LIKE %(p)s) "
        "ORDER BY source_id, public_id OFFSET %(o)s LIMIT %(n)s",
        {"c": collection, "p": like, "o": offset, "n": limit + 1},
    )
    page = [_document_row(r) for r in rows[:limit]]
    return {"documents": page, "next_offset": offset + limit if len(rows) > limit else None}


def _document_row(row: tuple) -> dict:
    doc_id, source, collection, status, chars, updated = row
    return {
        "document_id": doc_id,
        "document": source,
        "collection": collection,
        "status": status,
        "chars": chars,
        "updated_at": updated.isoformat(),
    }


def read(db: Database, tenant: str, document_id: str, start: int | None, end: int | None) -> dict:
    """A document's text, or the span [start, end) of it (at most MAX_READ_CHARS characters a call)."""
    public_id = _document_uuid(document_id)
    first = start or 0
    last = first + MAX_READ_CHARS if end is None else min(end, first + MAX_READ_CHARS)
    if last <= first:
        raise SluiceError(f"span [{start}, {end}) is empty: give end > start")
    rows = db.execute_as(
        tenant,
        "SELECT source_id, collection, length(text), substr(text, %s, %s) FROM documents WHERE public_id = %s",
        (first + 1, last - first, public_id),
    )
    if not rows:
        raise NotFound(f"no document {document_id!r} for this API key: ids come from search or list_documents")
    source, collection, chars, text = rows[0]
    stop = min(last, chars)
    more = stop < chars and (end is None or end > stop)
    return {
        "document_id": document_id,
        "document": source,
        "collection": collection,
        "chars": chars,
        "span": [min(first, chars), stop],
        "text": text,
        "next_start": stop if more else None,
    }


def _document_uuid(document_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(document_id)
    except ValueError:
        raise NotFound(
            f"no document {document_id!r} for this API key: a document id is a UUID from search or list_documents"
        ) from None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
