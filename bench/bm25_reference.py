"""The reference Sluice's BM25 is checked against: bm25s (Lucene variant) over Sluice's own analyzer.

The analyzer is PostgreSQL's `to_tsvector('english')`; a document's tokens here are its lexemes, each
repeated as often as it occurs, so bm25s sees exactly the term frequencies and lengths Sluice stores.
Used by tests/test_bm25.py (a small slice) and bench/bm25_equivalence.py (the whole covid_qa set).
"""

from __future__ import annotations

from dataclasses import dataclass

import bm25s
import numpy as np
import psycopg

from evals.gold import GoldItem
from evals.metrics import RetrievedSpan, ndcg_at_k
from sluice.config import RetrievalConfig
from tasks.retrieve import lexical_search

# Sluice's lexical search before BM25 (the baseline of bench/retrieval.py and bench/bm25_equivalence.py):
# ts_rank_cd over an OR of the query's stemmed terms; under RLS it reads every row of the tenant's index.
TS_RANK = (
    "SELECT c.chunk_id, ts_rank_cd(c.tsv, tq.q) AS score FROM chunks c CROSS JOIN "
    "(SELECT replace(plainto_tsquery('english', %(text)s)::text, ' & ', ' | ')::tsquery AS q) tq "
    "WHERE c.index_id = %(index_id)s AND c.tsv @@ tq.q ORDER BY score DESC, c.chunk_id LIMIT %(k)s"
)
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


@dataclass(frozen=True)
class Comparison:
    agreement: float  # top-k position agreement
    max_score_diff: float  # largest |Sluice score - reference score| over chunks both rank
    ndcg_ours: float  # mean nDCG@k over the gold items (0 when none are given)
    ndcg_reference: float
    queries: int


def compare(
    conn: psycopg.Connection, index_id: str, questions: list[str], config: RetrievalConfig, items: list[GoldItem] = ()
) -> Comparison:
    """Sluice's lexical search against the reference on the index's chunks, for `questions` (or the items')."""
    rows = conn.execute(
        "SELECT c.chunk_id, c.text, d.source_id, c.char_start, c.char_end FROM chunks c JOIN documents d "
        "USING (document_id) WHERE c.index_id = %s ORDER BY c.chunk_id",
        (index_id,),
    ).fetchall()
    spans = {r[0]: RetrievedSpan(r[2], r[3], r[4]) for r in rows}
    reference = ReferenceBM25(conn, [r[0] for r in rows], [r[1] for r in rows], config.k1, config.b)
    ours, theirs, worst, gains = [], [], 0.0, ([], [])
    for n, question in enumerate([i.question for i in items] or questions):
        hits = lexical_search(conn, index_id, question, config)
        expected = dict(reference.top_scored(question, config.k))
        ours.append([h.chunk_id for h in hits])
        theirs.append(list(expected))
        worst = max([worst, *(abs(h.score - expected[h.chunk_id]) for h in hits if h.chunk_id in expected)])
        if items:
            gains[0].append(ndcg_at_k([spans[c] for c in ours[-1]], items[n], config.k))
            gains[1].append(ndcg_at_k([spans[c] for c in theirs[-1]], items[n], config.k))
    mean = [float(np.mean(g)) if g else 0.0 for g in gains]
    return Comparison(position_agreement(ours, theirs, config.k), worst, mean[0], mean[1], len(ours))
