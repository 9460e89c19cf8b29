"""HNSW graphs are built on `halfvec` (16-bit floats), up to 4,000 dimensions (was `vector`, up to 2,000).

The graph keeps a copy of every vector beside its neighbour lists. On `halfvec` that copy is half as large,
so the graph is 43% smaller at 384-d (240k rows: 268 MB against 469), and the build moves half the vector bytes
(docs/benchmarks.md, "HNSW graph type"). The rows keep their float32 vectors: the exact scan and the
similarity a search returns read them, so only the graph's candidate order is 16-bit (recall measured
against the float32 exact scan). `halfvec` also lifts pgvector's HNSW limit from 2,000 dimensions to
4,000, so 3,072-d hosted embeddings get a graph.

Only `ensure_index_hnsw` changes (0020's function with the halfvec cast and operator class). Graphs built
before keep their type: a search reads the graph's operator class and orders by the same cast
(tasks/retrieve.py, `set_search_params`), so both kinds are used until a graph is dropped and rebuilt.
The downgrade restores 0020's function but leaves graphs built on halfvec in place: code before 0021 orders
by the vector cast and would sort such an index's rows exactly, so drop those graphs
(`DROP INDEX chunks_hnsw_<index_id>`) and let the next ingest build them again.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import migration, run_as_owner

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

VECTOR = "USING hnsw ((embedding::vector(%s)) vector_cosine_ops)"
HALFVEC = "USING hnsw ((embedding::halfvec(%s)) halfvec_cosine_ops)"
OLD_LIMIT = """IF d > 2000 THEN
        RAISE EXCEPTION 'embedding dimension % is outside 1..2000 (HNSW limit)', d;"""
NEW_LIMIT = """IF d > 4000 THEN
        RAISE EXCEPTION 'embedding dimension % is outside 1..4000 (the HNSW limit on halfvec)', d;"""


def _function(halfvec: bool) -> str:
    """0020's `ensure_index_hnsw`, or with this migration's graph type and dimension limit."""
    m0020 = migration("0020")
    m0017 = m0020._previous()
    body = m0017.FUNCTION.replace("@CREATE@", m0017.GUARDED.replace(m0020.OLD, m0020.NEW))  # as 0020's upgrade
    if not halfvec:
        return body
    assert VECTOR in body and OLD_LIMIT in body, "0020's ensure_index_hnsw changed: update 0021's replacements"
    return body.replace(VECTOR, HALFVEC).replace(OLD_LIMIT, NEW_LIMIT)


def upgrade() -> None:
    run_as_owner(context, op, _function(halfvec=True))


def downgrade() -> None:
    run_as_owner(context, op, _function(halfvec=False))
