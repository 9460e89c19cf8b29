"""Retrieval over one tenant's index: dense (pgvector HNSW), lexical (full-text) and hybrid (RRF).

Every function runs in the caller's tenant transaction, so RLS decides which rows exist.

Filtered dense search never under-returns: HNSW runs with `hnsw.iterative_scan = relaxed_order`
and, if it still yields fewer than k rows (a very selective filter can exhaust
`hnsw.max_scan_tuples`), the query is answered by an exact scan over the filtered rows, which
returns min(k, matching rows) by construction.

Lexical search cannot use the GIN index on `chunks.tsv` under RLS: `@@` is not leakproof, so the
planner must apply the tenant policy first; it reads the tenant's rows through the
(tenant_id, index_id) btree and tests `@@` on each (measured in docs/benchmarks.md, "## Retrieval").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from sluice.config import RetrievalConfig
from sluice.errors import QueryError
from sluice.filters import compile_filter
from sluice.registry import Registry


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    document_id: str  # the document's public id (a random UUID); the internal integer key stays in the database
    source_id: str
    start: int
    end: int
    text: str
    score: float
    index_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    mode: str = "dense"
    config_id: str = ""
    # parent_child: `text`/`start`/`end` are the parent section, and this the retrieved child's span inside it
    cite: tuple[int, int] | None = None

    @property
    def citation(self) -> tuple[int, int]:
        """The span an answer built from this hit cites: the child that matched, else the hit itself."""
        return self.cite or (self.start, self.end)


# A contextual chunk is stored (and so indexed lexically) as header + text: hits carry the text alone.
_TEXT = "substr(c.text, coalesce((c.metadata->>'context_chars')::int, 0) + 1) AS text"
_COLUMNS = f"c.chunk_id, d.public_id::text AS document_id, d.source_id, c.char_start, c.char_end, {_TEXT}, c.metadata"
_FROM = "FROM chunks c JOIN documents d ON d.document_id = c.document_id"
_WHERE = "WHERE c.index_id = %(index_id)s AND {filter}"

# ORDER BY the indexed expression (embedding::vector(dim)) lets the planner use the HNSW index.
_SIMILARITY = "1 - (c.embedding::vector({dim}) <=> %(q)s::vector({dim}))"
_DENSE = f"SELECT {_COLUMNS}, {_SIMILARITY} {_FROM} {_WHERE} AND c.dim = {{dim}} "
_DENSE_ANN = _DENSE + "ORDER BY c.embedding::vector({dim}) <=> %(q)s::vector({dim}) LIMIT %(fetch)s"
# ORDER BY the raw column matches no index: an exact scan over the (filtered) rows of the tenant.
# OFFSET 0 keeps the subquery apart, so filters and the documents join run before distances are sorted.
_EXACT_OUTER = "SELECT s.chunk_id, s.document_id, s.source_id, s.char_start, s.char_end, s.text, s.metadata, 1 - s.dist"
_DENSE_EXACT = (
    f"{_EXACT_OUTER} FROM (SELECT {_COLUMNS}, c.embedding <=> %(q)s::vector({{dim}}) AS dist "
    f"{_FROM} {_WHERE} AND c.dim = {{dim}} OFFSET 0) s ORDER BY s.dist, s.chunk_id LIMIT %(k)s"
)

_TSQUERY = {
    # OR of the stemmed terms: natural-language questions rarely contain every term of the answer.
    "any": "replace(plainto_tsquery('english', %(text)s)::text, ' & ', ' | ')::tsquery",
    "websearch": "websearch_to_tsquery('english', %(text)s)",
}
_LEXICAL = (
    f"SELECT {_COLUMNS}, ts_rank_cd(c.tsv, tq.q) AS score {_FROM} CROSS JOIN (SELECT {{tsq}} AS q) tq "
    f"{_WHERE} AND c.tsv @@ tq.q ORDER BY score DESC, c.chunk_id LIMIT %(k)s"
)


# Past this many visited tuples a filtered HNSW scan gives up and the exact scan answers instead.
# With OVERFETCH below, filters matching under ~5% of the table take the exact scan: at 100k chunks a
# 1% filter gave recall@10 0.56 with 4k candidates and 0.89-0.92 with 10k (and was slower than the
# exact scan); see docs/benchmarks.md "## Retrieval".
MAX_SCAN_TUPLES = 2000
# A filtered scan reaches matches far from the query, where HNSW's order is loose: re-rank this many times k.
OVERFETCH = 10


def set_search_params(conn: psycopg.Connection, ef_search: int) -> None:
    """Per-transaction HNSW settings: a wide candidate list, and iterative scans so filters never under-return."""
    conn.execute(
        "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true), "
        "set_config('hnsw.max_scan_tuples', %s, true)",
        (str(ef_search), str(max(MAX_SCAN_TUPLES, ef_search))),
    )


def _hits(rows: list[tuple], index_id: str, mode: str) -> list[Hit]:
    return [Hit(r[0], r[1], r[2], r[3], r[4], r[5], float(r[7]), index_id, r[6], mode) for r in rows]


def _run(conn: psycopg.Connection, template: str, params: dict[str, Any], filters: dict | None, **fmt: Any) -> list:
    compiled = compile_filter(filters)
    clash = set(compiled.params) & set(params)
    assert not clash, clash  # filter placeholders are prefixed, query ones are not
    query = sql.SQL(template).format(filter=compiled.clause, **fmt)
    return conn.execute(query, {**params, **compiled.params}).fetchall()


def _dim(query_vector: np.ndarray) -> int:
    if query_vector.ndim != 1 or not 1 <= query_vector.shape[0] <= 16000:
        raise QueryError(f"query vector has shape {query_vector.shape}: pass one 1-d embedding")
    return int(query_vector.shape[0])


def dense_search(
    conn: psycopg.Connection,
    index_id: str,
    query_vector: np.ndarray,
    config: RetrievalConfig,
    filters: dict | None = None,
    k: int | None = None,
) -> list[Hit]:
    """Top-k chunks of `index_id` by cosine similarity; k rows whenever at least k rows match."""
    k = k or config.k
    set_search_params(conn, max(config.ef_search, k))
    params = {"q": query_vector, "index_id": index_id, "k": k, "fetch": k * (OVERFETCH if filters else 1)}
    dim = sql.Literal(_dim(query_vector))
    rows = _run(conn, _DENSE_ANN, params, filters, dim=dim)
    if len(rows) < params["fetch"]:
        # The scan hit max_scan_tuples before `fetch` matches: the filter is selective, and an exact
        # scan over its few rows is both complete and cheap.
        rows = _run(conn, _DENSE_EXACT, params, filters, dim=dim)
    # relaxed_order yields candidates slightly out of order: re-sort by similarity, keep k.
    rows = sorted(rows, key=lambda r: (-r[7], r[0]))[:k]
    return _hits(rows, index_id, "dense")


def exact_search(
    conn: psycopg.Connection, index_id: str, query_vector: np.ndarray, k: int, filters: dict | None = None
) -> list[Hit]:
    """Top-k by an exact scan (no vector index): the reference dense search is measured against."""
    params = {"q": query_vector, "index_id": index_id, "k": k}
    rows = _run(conn, _DENSE_EXACT, params, filters, dim=sql.Literal(_dim(query_vector)))
    return _hits(rows, index_id, "exact")


def lexical_search(
    conn: psycopg.Connection,
    index_id: str,
    query_text: str,
    config: RetrievalConfig,
    filters: dict | None = None,
    k: int | None = None,
) -> list[Hit]:
    """Top-k chunks by full-text rank (ts_rank_cd) among chunks matching the query's terms."""
    params = {"text": query_text, "index_id": index_id, "k": k or config.k}
    tsq = sql.SQL(_TSQUERY[config.lexical_query])
    rows = _run(conn, _LEXICAL, params, filters, tsq=tsq)
    return _hits(rows, index_id, "lexical")


def rrf_fuse(rankings: list[tuple[list[Hit], float]], rrf_k: int, k: int) -> list[Hit]:
    """Reciprocal-rank fusion: score = sum of weight / (rrf_k + rank) over the rankings a chunk appears in."""
    scores: dict[int, float] = {}
    first: dict[int, Hit] = {}
    for hits, weight in rankings:
        for rank, hit in enumerate(hits, 1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight / (rrf_k + rank)
            first.setdefault(hit.chunk_id, hit)
    order = sorted(scores, key=lambda cid: (-scores[cid], cid))[:k]
    return [_rescored(first[cid], scores[cid]) for cid in order]


def _rescored(hit: Hit, score: float) -> Hit:
    return replace(hit, score=score, mode="hybrid")


def hybrid_search(
    conn: psycopg.Connection,
    index_id: str,
    query_text: str,
    query_vector: np.ndarray,
    config: RetrievalConfig,
    filters: dict | None = None,
) -> list[Hit]:
    """Fuse dense and lexical rankings of `config.candidates` rows each with weighted RRF."""
    n = max(config.candidates, config.k)
    dense = dense_search(conn, index_id, query_vector, config, filters, k=n)
    lexical = lexical_search(conn, index_id, query_text, config, filters, k=n)
    return rrf_fuse([(dense, config.dense_weight), (lexical, config.lexical_weight)], config.rrf_k, config.k)


class RetrievalMode(ABC):
    """One way to rank an index's chunks for a query (`retrieval.mode`)."""

    def __init__(self, config: RetrievalConfig):
        self.config = config

    @abstractmethod
    def search(
        self, conn: psycopg.Connection, index_id: str, query_text: str, query_vector: np.ndarray, filters: dict | None
    ) -> list[Hit]:
        """Top `config.k` chunks of `index_id` for the query, restricted by an optional metadata filter."""


MODES: Registry[type[RetrievalMode]] = Registry("retrieval mode", key="mode")


@MODES.register("dense")
class DenseMode(RetrievalMode):
    """Cosine similarity of the query embedding (pgvector HNSW, exact scan under selective filters)."""

    def search(self, conn, index_id, query_text, query_vector, filters) -> list[Hit]:
        return dense_search(conn, index_id, query_vector, self.config, filters)


@MODES.register("lexical")
class LexicalMode(RetrievalMode):
    """PostgreSQL full-text rank of the query's terms."""

    def search(self, conn, index_id, query_text, query_vector, filters) -> list[Hit]:
        return lexical_search(conn, index_id, query_text, self.config, filters)


@MODES.register("hybrid")
class HybridMode(RetrievalMode):
    """Dense and lexical rankings fused by weighted reciprocal rank."""

    def search(self, conn, index_id, query_text, query_vector, filters) -> list[Hit]:
        return hybrid_search(conn, index_id, query_text, query_vector, self.config, filters)


def retrieve(
    conn: psycopg.Connection,
    index_id: str,
    query_text: str,
    query_vector: np.ndarray,
    config: RetrievalConfig,
    filters: dict | None = None,
) -> list[Hit]:
    """Top-k chunks of `index_id` for a query, by the config's mode, restricted by an optional metadata filter."""
    return MODES.build(config).search(conn, index_id, query_text, query_vector, filters)
