"""Two builders of one index's HNSW graph: the second finds the first's graph instead of failing.

0014's `ensure_index_hnsw` serialises builders of one index with a transaction-level advisory lock, then
checks `to_regclass` and runs CREATE INDEX. An advisory lock is not a relation lock: acquiring it does not
make the backend read the catalog invalidations the first builder's commit sent, so the second builder's
`to_regclass` could still see no index (a stale catalog cache), and its CREATE INDEX — which does read
them, on locking `chunks` — failed with `relation "chunks_hnsw_…" already exists`. Seen when a rollout
built one target index for two tenants at once (tests/test_rollout.py, intermittently).

The CREATE INDEX now runs in its own block: `duplicate_table` there means another builder committed the
graph meanwhile, and the function returns false (existed), as the check would have.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import run_as_owner

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION ensure_index_hnsw(p_index_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
DECLARE
    d integer;
    name text := 'chunks_hnsw_' || p_index_id;
BEGIN
    IF p_index_id IS NULL OR p_index_id !~ '^[A-Za-z0-9_-]{1,48}$' THEN
        RAISE EXCEPTION 'index id % is not 1-48 letters, digits, _ or -', p_index_id;
    END IF;
    SELECT i.dim INTO d FROM indexes i WHERE i.index_id = p_index_id;
    IF d IS NULL THEN
        RAISE EXCEPTION 'index % is not registered: register it before building its HNSW index', p_index_id;
    END IF;
    IF d > 2000 THEN
        RAISE EXCEPTION 'embedding dimension % is outside 1..2000 (HNSW limit)', d;
    END IF;
    -- Two builders of one index: the second waits for the first to commit, then finds its index.
    PERFORM pg_advisory_xact_lock(hashtext(name));
    IF to_regclass(quote_ident(name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    @CREATE@
    RETURN true;
END
$fn$;
"""

CREATE = """EXECUTE format(
        'CREATE INDEX %I ON chunks USING hnsw ((embedding::vector(%s)) vector_cosine_ops) '
        'WITH (m = 16, ef_construction = 64) WHERE index_id = %L AND dim = %s',
        name, d, p_index_id, d);"""

# The check above may have read a stale catalog (see the docstring): the index's name taken means built.
GUARDED = f"""BEGIN
        {CREATE}
    EXCEPTION WHEN duplicate_table THEN
        RETURN false;
    END;"""


def upgrade() -> None:
    run_as_owner(context, op, FUNCTION.replace("@CREATE@", GUARDED))


def downgrade() -> None:
    run_as_owner(context, op, FUNCTION.replace("@CREATE@", CREATE))
