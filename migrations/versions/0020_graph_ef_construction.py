"""HNSW graphs are built with `ef_construction = 200` (was 64).

At a million chunks in one tenant the graph built with pgvector's default beam (m 16, ef_construction 64)
lost one clustered query's neighbourhood in six: recall@10 0.82 at the default `ef_search` 100, and a
wider search beam did not reach 0.95 before 400 (21 ms p50). A graph of the same rows built with
`ef_construction = 200` gave recall@10 1.000 at `ef_search` 100, 8.3 ms p50 / 15.0 ms p99
(docs/benchmarks.md, "Run 9"). The price is the build: 4-5x as long at 140k graph rows, with the same
graph size (docs/benchmarks.md, "HNSW build parameters").

Only `ensure_index_hnsw` changes: the function is 0017's, with the wider beam. Graphs already built keep
their parameters until they are dropped and rebuilt (a rollout into a new index, or `DROP INDEX` of the
graph: the next ingest into the index builds it again, searched exactly until then).

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import migration, run_as_owner

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

OLD, NEW = "ef_construction = 64", "ef_construction = 200"


def _previous():
    """0017's module (its file name starts with a digit, so it is loaded by path, not imported)."""
    module = migration("0017")
    assert OLD in module.CREATE, "0017's CREATE INDEX no longer names ef_construction 64"
    return module


def upgrade() -> None:
    m = _previous()
    run_as_owner(context, op, m.FUNCTION.replace("@CREATE@", m.GUARDED.replace(OLD, NEW)))


def downgrade() -> None:
    m = _previous()
    run_as_owner(context, op, m.FUNCTION.replace("@CREATE@", m.GUARDED))
