"""Retrieval over one tenant's index: dense search with pgvector HNSW."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from sluice.config import RetrievalConfig


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    document_id: int
    source_id: str
    start: int
    end: int
    text: str
    score: float
    index_id: str
    metadata: dict[str, Any] = field(default_factory=dict)


_DENSE = """
WITH ranked AS MATERIALIZED (
    SELECT c.chunk_id, c.document_id, c.char_start, c.char_end, c.text, c.metadata,
           c.embedding::vector({dim}) <=> %(q)s::vector({dim}) AS distance
    FROM chunks c
    WHERE c.index_id = %(index_id)s AND c.dim = {dim}
    ORDER BY c.embedding::vector({dim}) <=> %(q)s::vector({dim})
    LIMIT %(k)s
)
SELECT r.chunk_id, r.document_id, d.source_id, r.char_start, r.char_end, r.text, 1 - r.distance, r.metadata
FROM ranked r JOIN documents d ON d.document_id = r.document_id
ORDER BY r.distance
"""


def set_search_params(conn: psycopg.Connection, ef_search: int) -> None:
    """Per-transaction HNSW settings: a wide candidate list, and iterative scans so filters never under-return."""
    conn.execute(
        "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)",
        (str(ef_search),),
    )


def dense_search(
    conn: psycopg.Connection, index_id: str, query_vector: np.ndarray, config: RetrievalConfig
) -> list[Hit]:
    """Top-k chunks of `index_id` by cosine similarity, in the caller's tenant transaction."""
    set_search_params(conn, max(config.ef_search, config.k))
    dim = int(query_vector.shape[0])
    query = sql.SQL(_DENSE).format(dim=sql.Literal(dim))
    rows = conn.execute(query, {"q": query_vector, "index_id": index_id, "k": config.k}).fetchall()
    return [Hit(r[0], r[1], r[2], r[3], r[4], r[5], float(r[6]), index_id, r[7]) for r in rows]
