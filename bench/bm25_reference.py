"""The reference Sluice's BM25 is checked against: bm25s (Lucene variant) over Sluice's own analyzer.

The analyzer is PostgreSQL's `to_tsvector('english')`; a document's tokens here are its lexemes, each
repeated as often as it occurs, so bm25s sees exactly the term frequencies and lengths Sluice stores.
Used by tests/test_bm25.py (a small slice) and bench/bm25_equivalence.py (the whole covid_qa set).
"""

from __future__ import annotations

import bm25s
import numpy as np
import psycopg

_ANALYZE = (
    "SELECT t.ord, l.lexeme, cardinality(l.positions) FROM unnest(%s::text[]) WITH ORDINALITY t(text, ord) "
    "CROSS JOIN LATERAL unnest(to_tsvector('english', t.text)) l"
)


def analyze(conn: psycopg.Connection, texts: list[str]) -> list[list[str]]:
    """Each text's tokens by Sluice's analyzer (lexemes repeated by their frequency, in lexeme order)."""
    tokens: list[list[str]] = [[] for _ in texts]
    for ord_, lexeme, tf in conn.execute(_ANALYZE, (texts,)).fetchall():
        tokens[ord_ - 1].extend([lexeme] * tf)
    return tokens


class ReferenceBM25:
    """bm25s over chunks given in chunk-id order; ties broken by the smaller chunk id, as Sluice does."""

    def __init__(self, conn: psycopg.Connection, chunk_ids: list[int], texts: list[str], k1: float, b: float):
        self.chunk_ids = np.asarray(chunk_ids)
        self.conn = conn
        self.model = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
        self.model.index(analyze(conn, texts), show_progress=False)

    def top_scored(self, query: str, k: int) -> list[tuple[int, float]]:
        """(chunk id, score) of the k best-scoring chunks that share a term with the query."""
        terms = sorted(set(analyze(self.conn, [query])[0]))
        ids = self.model.get_tokens_ids(terms)
        if not ids:
            return []
        scores = self.model.get_scores(ids)
        order = np.lexsort((self.chunk_ids, -scores))  # score descending, then chunk id
        return [(int(self.chunk_ids[i]), float(scores[i])) for i in order[:k] if scores[i] > 0]

    def top(self, query: str, k: int) -> list[int]:
        """Chunk ids of the k best-scoring chunks that share a term with the query."""
        return [cid for cid, _ in self.top_scored(query, k)]


def position_agreement(ours: list[list[int]], theirs: list[list[int]], k: int) -> float:
    """Share of rank positions 1..k, over all queries, holding the same chunk in both rankings."""
    same = total = 0
    for a, b in zip(ours, theirs, strict=True):
        for i in range(k):
            left, right = a[i] if i < len(a) else None, b[i] if i < len(b) else None
            total += 1
            same += left == right
    return same / total if total else 1.0
