"""One HNSW index per embedding space (index_id), so a bulk load builds it after the rows are in.

Until now one HNSW index per dimension (`chunks_hnsw_<dim>`, migration 0001) covered every index's
rows, so every stored chunk was inserted into a live graph one row at a time (~106 rows/s at 100k
chunks). Now each index_id has its own partial HNSW index, `chunks_hnsw_<index_id>`
(`WHERE index_id = '<id>' AND dim = <dim>`): rows of an index without one cost no graph insert, and
`ensure_index_hnsw(index_id)` builds it afterwards in one pass, with the caller's
`maintenance_work_mem` and `max_parallel_maintenance_workers` (tasks/bulk.py). Retrieval names the
index id as a literal so the planner can match the partial index (tasks/retrieve.py). The lexical
trigger inserts a statement's postings in key order (most of a bulk insert's time was those inserts).

The app role owns nothing, so it asks the owner through this definer function, which takes the
dimension from the registered index (not from the caller) and serialises builders of one index.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import run_as_owner

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE FUNCTION ensure_index_hnsw(p_index_id text) RETURNS boolean
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
    EXECUTE format(
        'CREATE INDEX %I ON chunks USING hnsw ((embedding::vector(%s)) vector_cosine_ops) '
        'WITH (m = 16, ef_construction = 64) WHERE index_id = %L AND dim = %s',
        name, d, p_index_id, d);
    RETURN true;
END
$fn$;

-- Every registered index gets its own graph; then the per-dimension ones go.
DO $do$
DECLARE r record;
BEGIN
    FOR r IN SELECT index_id FROM indexes ORDER BY index_id LOOP
        PERFORM ensure_index_hnsw(r.index_id);
    END LOOP;
    FOR r IN SELECT indexname FROM pg_indexes WHERE tablename = 'chunks' AND indexname ~ '^chunks_hnsw_[0-9]+$' LOOP
        EXECUTE format('DROP INDEX %I', r.indexname);
    END LOOP;
END
$do$;
DROP FUNCTION ensure_vector_index(integer);
"""

# Migration 0010's trigger function, with the new postings inserted in their btree's key order: a
# statement of thousands of chunks (a bulk load's batch) then appends to pages in order instead of
# touching them at random (~1.5x faster for a batch of 5,000 chunks here).
SORTED_POSTINGS = r"""
CREATE OR REPLACE FUNCTION lexical_sync() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    -- Chunk count and total length of a transition table's rows, per tenant and index.
    delta text := 'SELECT r.tenant_id, r.index_id, count(*) AS chunks, '
        'coalesce(sum((SELECT sum(cardinality(l.positions)) FROM unnest(r.tsv) l)), 0) AS total_length '
        'FROM %I r GROUP BY r.tenant_id, r.index_id ORDER BY r.tenant_id, r.index_id';
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        DELETE FROM lexical_postings p
        USING (SELECT r.tenant_id, r.index_id, r.chunk_id, (unnest(r.tsv)).lexeme AS term FROM old_rows r) o
        WHERE p.tenant_id = o.tenant_id AND p.index_id = o.index_id AND p.term = o.term AND p.chunk_id = o.chunk_id;
        EXECUTE format('UPDATE lexical_stats s SET chunks = s.chunks - o.chunks, '
            'total_length = s.total_length - o.total_length FROM (' || delta || ') o '
            'WHERE s.tenant_id = o.tenant_id AND s.index_id = o.index_id', 'old_rows');
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO lexical_postings (tenant_id, index_id, term, chunk_id, tf, dl)
        SELECT r.tenant_id, r.index_id, t.term, r.chunk_id, t.tf, t.dl FROM new_rows r, lexical_terms(r.tsv) t
        ORDER BY r.tenant_id, r.index_id, t.term, r.chunk_id;
        EXECUTE format('INSERT INTO lexical_stats AS s (tenant_id, index_id, chunks, total_length) ' || delta
            || ' ON CONFLICT (tenant_id, index_id) DO UPDATE SET chunks = s.chunks + EXCLUDED.chunks, '
            'total_length = s.total_length + EXCLUDED.total_length', 'new_rows');
    END IF;
    RETURN NULL;
END
$fn$;
"""

# Migration 0010's function as it was (for downgrade): the same without the ORDER BY.
UNSORTED_POSTINGS = SORTED_POSTINGS.replace("\n        ORDER BY r.tenant_id, r.index_id, t.term, r.chunk_id;", ";")
assert UNSORTED_POSTINGS != SORTED_POSTINGS

DOWNGRADE = r"""
CREATE FUNCTION ensure_vector_index(d integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
BEGIN
    IF d < 1 OR d > 2000 THEN
        RAISE EXCEPTION 'embedding dimension % is outside 1..2000 (HNSW limit)', d;
    END IF;
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS %I ON chunks USING hnsw ((embedding::vector(%s)) vector_cosine_ops) '
        'WITH (m = 16, ef_construction = 64) WHERE dim = %s',
        'chunks_hnsw_' || d, d, d);
END
$fn$;
DO $do$
DECLARE r record;
BEGIN
    FOR r IN SELECT DISTINCT dim FROM indexes WHERE dim <= 2000 LOOP
        PERFORM ensure_vector_index(r.dim);
    END LOOP;
    PERFORM ensure_vector_index(384);
    FOR r IN SELECT indexname FROM pg_indexes WHERE tablename = 'chunks' AND indexname ~ '^chunks_hnsw_.*[^0-9].*$' LOOP
        EXECUTE format('DROP INDEX %I', r.indexname);
    END LOOP;
END
$do$;
DROP FUNCTION IF EXISTS ensure_index_hnsw(text);
"""


def upgrade() -> None:
    fn = "ensure_index_hnsw(text)"
    grant = f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC; GRANT EXECUTE ON FUNCTION {fn} TO {{app}};"
    run_as_owner(context, op, SCHEMA + SORTED_POSTINGS + grant)


def downgrade() -> None:
    fn = "ensure_vector_index(integer)"
    grant = f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC; GRANT EXECUTE ON FUNCTION {fn} TO {{app}};"
    run_as_owner(context, op, DOWNGRADE + UNSORTED_POSTINGS + grant)
