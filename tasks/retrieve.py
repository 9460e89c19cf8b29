"""Retrieval over one tenant's index: dense (pgvector HNSW), lexical (Okapi BM25) and hybrid (fused).

Every function runs in the caller's tenant transaction, so RLS decides which rows exist.

Filtered dense search never under-returns. A filter an index can bound (a condition on a promoted
document key, `sluice/filter_columns.py`) whose planner estimate is at most PREFILTER_ROWS matching
chunks is answered by an exact scan over just those rows, found through the key's btree index:
complete (recall 1.0) and proportional to the matches, not to the tenant. Any other filter runs HNSW
with `hnsw.iterative_scan = relaxed_order` and, if that still yields fewer than k rows (a very
selective filter can exhaust `hnsw.max_scan_tuples`), the exact scan over the filtered rows, which
returns min(k, matching rows) by construction (a scan of the tenant's rows for a jsonb-only filter).

Lexical search is BM25 over `lexical_postings` (migration 0010): the query's lexemes are looked up by
equality on the postings btree, which RLS allows (`=` on text is leakproof, `@@` is not), and scored
with the tenant index's chunk count and average length from `lexical_stats` (docs/retrieval.md).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from sluice import filter_columns
from sluice.config import RetrievalConfig
from sluice.errors import QueryError
from sluice.filters import CompiledFilter, compile_filter
from sluice.registry import Registry
from tasks.fusion import fuse


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
    doc_metadata: dict[str, Any] = field(default_factory=dict)  # the metadata the user gave the document

    @property
    def citation(self) -> tuple[int, int]:
        """The span an answer built from this hit cites: the child that matched, else the hit itself."""
        return self.cite or (self.start, self.end)


# A contextual chunk is stored (and so indexed lexically) as header + text: hits carry the text alone.
_TEXT = "substr(c.text, coalesce((c.metadata->>'context_chars')::int, 0) + 1) AS text"
_COLUMNS = f"c.chunk_id, d.public_id::text AS document_id, d.source_id, c.char_start, c.char_end, {_TEXT}, c.metadata"
_FROM = "FROM chunks c JOIN documents d ON d.document_id = c.document_id"
# The index id as a literal: each index has its own partial HNSW index (migration 0014), which the planner
# uses only when it can prove `index_id = '<id>'` from the query's text.
_WHERE = "WHERE c.index_id = {index_id} AND {filter}"

# ORDER BY the indexed expression (embedding::<cast>(dim)) lets the planner use the HNSW index. A graph is
# built on halfvec (migration 0021; on vector before it): the candidates come in the graph's order, and the
# similarity returned (and re-sorted by) is the stored float32 vector's.
_SIMILARITY = "1 - (c.embedding::vector({dim}) <=> %(q)s::vector({dim}))"
_DENSE = f"SELECT {_COLUMNS}, {_SIMILARITY}, d.user_metadata {_FROM} {_WHERE} AND c.dim = {{dim}} "
# `{scope}` names the graph's rows (tasks/graph.py, migration 0022): the tenant's literal for a tenant with a
# graph of its own (only that graph's predicate follows from it), NOT c.own_graph for the shared graph's.
_DENSE_ANN = _DENSE + "AND {scope} ORDER BY c.embedding::{cast}({dim}) <=> %(q)s::{cast}({dim}) LIMIT %(fetch)s"
SHARED_SCOPE = "NOT c.own_graph"
# The types a graph may be built on (its operator class's input type), and the one of an index with no graph.
GRAPH_CASTS = ("halfvec", "vector")
NO_GRAPH_CAST = "vector"
# ORDER BY the raw column matches no index: an exact scan over the (filtered) rows of the tenant. The inner
# query (OFFSET 0 keeps it apart, so filters and the documents join run before distances are sorted) reads
# each matching chunk's id and vector only; text, metadata and the document's columns are read for the k
# kept (a chunk's text and tsvector may live in TOAST, its vector in the row: migration 0019). A filter that
# reads no document column (`{source}` = _CHUNKS_ONLY: promoted keys, chunk keys) reads chunks alone, so a
# promoted key's covering btree answers it in one index-only scan (sluice/filter_columns.py, `carry`).
_CHUNKS_ONLY = "FROM chunks c"
_DENSE_EXACT = (
    f"SELECT {_COLUMNS}, 1 - top.dist, d.user_metadata FROM (SELECT s.chunk_id, s.dist FROM (SELECT c.chunk_id, "  # noqa: S608 (constants only)
    f"c.embedding <=> %(q)s::vector({{dim}}) AS dist {{source}} {_WHERE} AND c.dim = {{dim}} OFFSET 0) s "
    "ORDER BY s.dist, s.chunk_id LIMIT %(k)s) top "
    "JOIN chunks c ON c.chunk_id = top.chunk_id JOIN documents d ON d.document_id = c.document_id "
    "ORDER BY top.dist, c.chunk_id"
)

# The analyzer: `to_tsvector('english')` (the default parser, English stop words, Snowball stemmer), as
# stored in `chunks.tsv` and so in the postings; a tsvector's lexemes are distinct.
_TERMS = "ARRAY(SELECT lexeme FROM unnest(to_tsvector('english', %(text)s)))"
# Okapi BM25 with Lucene's idf, ln(1 + (N - df + 0.5) / (df + 0.5)); df = the length of a term's posting list.
_BM25 = (
    "SELECT p.chunk_id, sum(ln(1 + (s.n - p.df + 0.5) / (p.df + 0.5)) * p.tf "  # noqa: S608 (constants only)
    "/ (p.tf + %(k1)s * (1 - %(b)s + %(b)s * p.dl / s.avgdl))) AS score "
    "FROM (SELECT term, chunk_id, tf, dl, count(*) OVER (PARTITION BY term)::float8 AS df FROM lexical_postings "
    f"WHERE index_id = %(index_id)s AND term = ANY({_TERMS})) p "
    "CROSS JOIN (SELECT chunks::float8 AS n, total_length::float8 / greatest(chunks, 1) AS avgdl "
    "FROM lexical_stats WHERE index_id = %(index_id)s) s GROUP BY p.chunk_id"
)
# Without a filter only the top k scores need their chunk rows; with one, every scored chunk is tested.
_BM25_TOP = _BM25 + " ORDER BY score DESC, p.chunk_id LIMIT %(k)s"
_LEXICAL = (
    f"SELECT {_COLUMNS}, sc.score, d.user_metadata FROM ({{scored}}) sc JOIN chunks c ON c.chunk_id = sc.chunk_id "  # noqa: S608
    f"JOIN documents d ON d.document_id = c.document_id {_WHERE} AND {{match}} "
    "ORDER BY sc.score DESC, c.chunk_id LIMIT %(k)s"
)
# `websearch`: BM25 ranks the chunks that also match the query's websearch syntax (phrases, -term, AND).
_WEBSEARCH = "c.tsv @@ websearch_to_tsquery('english', %(text)s)"


# Past this many visited tuples a filtered HNSW scan gives up and the exact scan answers instead.
# With OVERFETCH below, filters matching under ~5% of the table take the exact scan: at 100k chunks a
# 1% filter gave recall@10 0.56 with 4k candidates and 0.89-0.92 with 10k (and was slower than the
# exact scan); see docs/benchmarks.md "## Retrieval".
MAX_SCAN_TUPLES = 2000
# A filtered scan reaches matches far from the query, where HNSW's order is loose: re-rank this many times k.
OVERFETCH = 10


# An index's shared HNSW graph holds its tenants' rows, and RLS drops the other tenants' after the scan, so
# a beam of ef_search candidates holds about ef_search x share of the tenant's own. On clustered vectors
# a narrow beam can miss the query's neighbourhood altogether: the search returns k rows of the tenant
# from elsewhere (recall@10 0.0; docs/retrieval.md, "Dense search in a shared graph"). The beam is
# therefore widened by graph rows / tenant rows, at most SHARE_FACTOR_MAX times (latency grows with it)
# and to pgvector's limit of 1000: a tenant holding a third of a graph gets the beam of its own graph.
# A tenant with a graph of its own (Settings.own_graph_rows) holds all of it: a share of 1, no widening.
SHARE_FACTOR_MAX = 4
MAX_EF_SEARCH = 1000
# The graph the tenant searches (`index_graph`, migration 0022: its own or the shared one), its size from its
# reltuples (set by the build, kept by autovacuum); the tenant's rows in the index from lexical_stats (kept
# per tenant and index by the chunks trigger, migration 0010; RLS).
_GRAPH = "to_regclass(quote_ident(index_graph(%(index_id)s)))"
_SHARE = (
    f"coalesce((SELECT c.reltuples FROM pg_class c WHERE c.oid = {_GRAPH}) "  # noqa: S608 (constants only)
    "/ nullif((SELECT s.chunks FROM lexical_stats s WHERE s.index_id = %(index_id)s), 0), 1)"
)
# The type that graph is built on, from its operator class (NULL when it is not built), and its rows' scope.
_GRAPH_CAST = (
    "(SELECT t.typname::text FROM pg_index i JOIN pg_opclass o ON o.oid = i.indclass[0] JOIN pg_type t "  # noqa: S608
    f"ON t.oid = o.opcintype WHERE i.indexrelid = {_GRAPH}), own_graph(%(index_id)s), "
    "current_setting('app.tenant_id', true)"
)
_SEARCH_PARAMS = (
    "SELECT set_config('hnsw.ef_search', least(%(max)s, greatest(%(ef)s, "  # noqa: S608 (constants only)
    f"ceil(%(ef)s * least(%(factor)s, {_SHARE}))))::int::text, true), "
    "set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('hnsw.max_scan_tuples', %(tuples)s, true), "
    f"{_GRAPH_CAST}"
)


@dataclass(frozen=True)
class Beam:
    """The HNSW search a transaction is set up for: its ef_search, the cast its ORDER BY must use, and the
    rows of the graph it reads."""

    ef_search: int
    cast: str  # the type the index's graph is built on (GRAPH_CASTS); NO_GRAPH_CAST without a graph
    scope: sql.Composable  # which rows the graph holds: the tenant's literal for its own graph, else SHARED_SCOPE


def set_search_params(conn: psycopg.Connection, ef_search: int, index_id: str | None = None) -> Beam:
    """Per-transaction HNSW settings: a beam widened by the tenant's share of `index_id`'s graph, and
    iterative scans so filters never under-return; the ef_search set and the graph's type, in one round trip."""
    params = {
        "ef": ef_search,
        "index_id": index_id or "",
        "factor": SHARE_FACTOR_MAX if index_id else 1,
        "max": max(MAX_EF_SEARCH, ef_search),
        "tuples": str(max(MAX_SCAN_TUPLES, ef_search)),
    }
    ef, _, _, cast, own, tenant = conn.execute(_SEARCH_PARAMS, params).fetchone()
    return _beam(int(ef), cast, own, tenant)


def graph_beam(conn: psycopg.Connection, index_id: str) -> Beam:
    """The graph the calling tenant searches in `index_id`, the transaction's settings untouched: its type
    (GRAPH_CASTS; NO_GRAPH_CAST when it has none) and the scope of its rows (ef_search 0: not set)."""
    return _beam(0, *conn.execute(f"SELECT {_GRAPH_CAST}", {"index_id": index_id}).fetchone())  # noqa: S608


def _beam(ef_search: int, opclass_type: str | None, own: bool, tenant: str | None) -> Beam:
    cast = opclass_type if opclass_type in GRAPH_CASTS else NO_GRAPH_CAST
    scope = sql.SQL("c.tenant_id = {}").format(sql.Literal(tenant)) if own else sql.SQL(SHARED_SCOPE)
    return Beam(ef_search, cast, scope)


def ann_query(cast: str) -> str:
    """The dense HNSW query ordering by `cast` (one of GRAPH_CASTS: the graph's type, `Beam.cast`); its
    `{scope}` is the beam's (`Beam.scope`), formatted as its other placeholders are."""
    if cast not in GRAPH_CASTS:
        raise QueryError(f"graph type {cast!r} is not one of {', '.join(GRAPH_CASTS)}")
    return _DENSE_ANN.replace("{cast}", cast)


# A bounded filter estimated to match at most this many chunks is answered by the exact scan over them
# (found by index): recall 1.0 at a cost that grows with the matches. At 10k matches it was 7.6x slower than
# the iterative HNSW scan, which had recall 0.79 there (docs/benchmarks.md, Run 5): recall first; not tuned idle.
PREFILTER_ROWS = 20_000
_COUNT = f"SELECT 1 {{source}} {_WHERE} AND c.dim = {{dim}}"


def source(compiled: CompiledFilter) -> sql.SQL:
    """The FROM of a filtered scan: chunks joined to their documents only when the filter reads a document column."""
    return sql.SQL(_FROM if compiled.uses_doc else _CHUNKS_ONLY)


_INDEX_ID = re.compile(r"[0-9a-f]{16}")  # sluice.config: the first 16 hex digits of a sha256


def index_literal(index_id: str) -> sql.Literal:
    """The index id as an SQL literal, once it is an index id; QueryError naming it otherwise."""
    if not isinstance(index_id, str) or not _INDEX_ID.fullmatch(index_id):
        raise QueryError(f"index id {index_id!r} is not 16 lowercase hex digits: name an index by its id")
    return sql.Literal(index_id)


def _hits(rows: list[tuple], index_id: str, mode: str) -> list[Hit]:
    return [Hit(r[0], r[1], r[2], r[3], r[4], r[5], float(r[7]), index_id, r[6], mode, doc_metadata=r[8]) for r in rows]


def compile_for(
    conn: psycopg.Connection, filters: dict | None, promoted: Mapping[str, str] | None = None
) -> CompiledFilter:
    """Compile a filter against the database's promoted keys (`promoted` overrides them; {} = jsonb only)."""
    if promoted is None:
        promoted = filter_columns.promoted(conn) if filters else {}
    return compile_filter(filters, promoted=promoted)


def estimated_rows(conn: psycopg.Connection, params: dict[str, Any], compiled: CompiledFilter, dim: sql.Literal) -> int:
    """The planner's estimate of the chunks of `params['index_id']` a filter matches (one EXPLAIN, no execution)."""
    index_id = index_literal(params["index_id"])  # a literal, as the search names it (the partial HNSW indexes)
    query = sql.SQL("EXPLAIN (FORMAT JSON) " + _COUNT).format(
        filter=compiled.clause, index_id=index_id, dim=dim, source=source(compiled)
    )
    plan = conn.execute(query, compiled.params).fetchone()[0]
    return int(plan[0]["Plan"]["Plan Rows"])


def _run(
    conn: psycopg.Connection,
    template: str,
    params: dict[str, Any],
    filters: dict | CompiledFilter | None,
    **fmt: Any,
) -> list:
    compiled = filters if isinstance(filters, CompiledFilter) else compile_filter(filters)
    clash = set(compiled.params) & set(params)
    assert not clash, clash  # filter placeholders are prefixed, query ones are not
    query = sql.SQL(template).format(
        filter=compiled.clause, index_id=index_literal(params["index_id"]), source=source(compiled), **fmt
    )
    return conn.execute(query, {**params, **compiled.params}).fetchall()


def ann_rows(
    conn: psycopg.Connection,
    beam: Beam,
    params: dict[str, Any],
    filters: dict | CompiledFilter | None,
    dim: sql.Literal,
    prefix: str = "",
) -> list:
    """Run the dense HNSW statement over `beam`'s graph (`prefix` before it: "EXPLAIN ..." shows its plan)."""
    return _run(conn, prefix + ann_query(beam.cast), params, filters, dim=dim, scope=beam.scope)


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
    *,
    promoted: Mapping[str, str] | None = None,
) -> list[Hit]:
    """Top-k chunks of `index_id` by cosine similarity; k rows whenever at least k rows match.

    `promoted` overrides the database's promoted keys ({}: every filter on jsonb, the path before 0012).
    """
    k = k or config.k
    params = {"q": query_vector, "index_id": index_id, "k": k, "fetch": k * (OVERFETCH if filters else 1)}
    dim = sql.Literal(_dim(query_vector))
    compiled = compile_for(conn, filters, promoted)
    if compiled.bounded and estimated_rows(conn, params, compiled, dim) <= PREFILTER_ROWS:
        rows = _run(conn, _DENSE_EXACT, params, compiled, dim=dim)  # few rows, found by index: exact is cheap
        return _hits(rows, index_id, "dense")
    beam = set_search_params(conn, max(config.ef_search, k), index_id)
    rows = ann_rows(conn, beam, params, compiled, dim)
    if len(rows) < params["fetch"]:
        # The scan hit max_scan_tuples before `fetch` matches: the filter is selective, and an exact
        # scan over its few rows is complete (and cheap when an index finds them).
        rows = _run(conn, _DENSE_EXACT, params, compiled, dim=dim)
    # relaxed_order yields candidates slightly out of order: re-sort by similarity, keep k.
    rows = sorted(rows, key=lambda r: (-r[7], r[0]))[:k]
    return _hits(rows, index_id, "dense")


def exact_search(
    conn: psycopg.Connection, index_id: str, query_vector: np.ndarray, k: int, filters: dict | None = None
) -> list[Hit]:
    """Top-k by an exact scan (no vector index) with jsonb filters: the reference dense search is measured against."""
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
    """Top-k chunks by Okapi BM25 (`config.k1`, `config.b`) among chunks sharing a term with the query."""
    params = {"text": query_text, "index_id": index_id, "k": k or config.k, "k1": config.k1, "b": config.b}
    websearch = config.lexical_query == "websearch"
    scored = sql.SQL(_BM25 if filters or websearch else _BM25_TOP)
    match = sql.SQL(_WEBSEARCH if websearch else "TRUE")
    rows = _run(conn, _LEXICAL, params, compile_for(conn, filters), scored=scored, match=match)
    return _hits(rows, index_id, "lexical")


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
    """Okapi BM25 over the query's lexemes."""

    def search(self, conn, index_id, query_text, query_vector, filters) -> list[Hit]:
        return lexical_search(conn, index_id, query_text, self.config, filters)


@MODES.register("hybrid")
class HybridMode(RetrievalMode):
    """Dense and BM25 rankings fused by `config.fusion` (weighted reciprocal rank or a convex combination)."""

    def search(self, conn, index_id, query_text, query_vector, filters) -> list[Hit]:
        config = self.config
        n = max(config.candidates, config.k)  # each ranker's candidates
        dense = dense_search(conn, index_id, query_vector, config, filters, k=n)
        lexical = lexical_search(conn, index_id, query_text, config, filters, k=n)
        return fuse([(dense, config.dense_weight), (lexical, config.lexical_weight)], config, config.k)


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
