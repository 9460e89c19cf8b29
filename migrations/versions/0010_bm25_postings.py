"""Okapi BM25 under row-level security: a postings table and per-index statistics, kept by triggers.

`@@` is not leakproof, so under RLS the GIN index on `chunks.tsv` is never used and lexical search
scanned the tenant's rows. BM25 needs only equality lookups, which are leakproof:

- `lexical_postings (tenant_id, index_id, term, chunk_id)` -> `tf` (occurrences of the lexeme in the
  chunk) and `dl` (the chunk's length in lexemes); its primary key is the btree a query term is
  looked up through, and a term's document frequency is the length of its posting list.
- `lexical_stats (tenant_id, index_id)` -> chunk count and total length (for N and the average length).

Both are written by statement-level triggers on `chunks` (transition tables), in the transaction that
writes the chunks, from the stored `tsv` column (`to_tsvector('english', text)`: the analyzer), so
every path that adds, replaces or deletes chunks (stores, re-ingests, cascades from documents, index
drops) keeps them exact. The GIN index on `tsv` is dropped: RLS made it unusable for the app role and
it cost every insert. Existing chunks are backfilled tenant by tenant (as the owner, under RLS).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import context, op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE lexical_postings (
    tenant_id  text NOT NULL CHECK (tenant_id <> ''),
    index_id   text NOT NULL,
    term       text NOT NULL,
    chunk_id   bigint NOT NULL,
    tf         integer NOT NULL CHECK (tf > 0),
    dl         integer NOT NULL CHECK (dl > 0),
    PRIMARY KEY (tenant_id, index_id, term, chunk_id) INCLUDE (tf, dl)
);
CREATE TABLE lexical_stats (
    tenant_id     text NOT NULL CHECK (tenant_id <> ''),
    index_id      text NOT NULL,
    chunks        bigint NOT NULL CHECK (chunks >= 0),
    total_length  bigint NOT NULL CHECK (total_length >= 0),
    PRIMARY KEY (tenant_id, index_id)
);

-- One posting row per lexeme of a chunk's tsvector: tf = its positions, dl = the chunk's lexeme count.
CREATE FUNCTION lexical_terms(rows_tsv tsvector) RETURNS TABLE (term text, tf integer, dl integer)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT l.lexeme, cardinality(l.positions), sum(cardinality(l.positions)) OVER ()::integer
    FROM unnest(rows_tsv) l
$fn$;

-- Add the new rows' postings and remove the old rows' (transition tables of the statement), and move the
-- statistics by the difference (new statistics rows are upserted in key order: concurrent stores do not deadlock).
CREATE FUNCTION lexical_sync() RETURNS trigger
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
        SELECT r.tenant_id, r.index_id, t.term, r.chunk_id, t.tf, t.dl FROM new_rows r, lexical_terms(r.tsv) t;
        EXECUTE format('INSERT INTO lexical_stats AS s (tenant_id, index_id, chunks, total_length) ' || delta
            || ' ON CONFLICT (tenant_id, index_id) DO UPDATE SET chunks = s.chunks + EXCLUDED.chunks, '
            'total_length = s.total_length + EXCLUDED.total_length', 'new_rows');
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER chunks_lexical_insert AFTER INSERT ON chunks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lexical_sync();
CREATE TRIGGER chunks_lexical_update AFTER UPDATE ON chunks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lexical_sync();
CREATE TRIGGER chunks_lexical_delete AFTER DELETE ON chunks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION lexical_sync();

-- TRUNCATE (an administrator's; the app role may not) empties chunks of every tenant: so go their postings.
CREATE FUNCTION lexical_truncate() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE lexical_postings, lexical_stats;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER chunks_lexical_truncate AFTER TRUNCATE ON chunks
    FOR EACH STATEMENT EXECUTE FUNCTION lexical_truncate();

DROP INDEX IF EXISTS chunks_tsv;
"""

POLICIES = """
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON {table}
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
"""

# Existing chunks, tenant by tenant: the owner is under forced RLS too, so it names each tenant in turn.
BACKFILL = """
DO $do$
DECLARE t text;
BEGIN
    FOR t IN SELECT list_tenants() LOOP
        PERFORM set_config('app.tenant_id', t, true);
        INSERT INTO lexical_postings (tenant_id, index_id, term, chunk_id, tf, dl)
        SELECT c.tenant_id, c.index_id, l.term, c.chunk_id, l.tf, l.dl FROM chunks c, lexical_terms(c.tsv) l;
        INSERT INTO lexical_stats (tenant_id, index_id, chunks, total_length)
        SELECT c.tenant_id, c.index_id, count(*),
               coalesce(sum((SELECT sum(cardinality(l.positions)) FROM unnest(c.tsv) l)), 0)
        FROM chunks c GROUP BY c.tenant_id, c.index_id;
    END LOOP;
    PERFORM set_config('app.tenant_id', '', true);
END
$do$;
"""


def upgrade() -> None:
    owner = context.config.attributes["owner_role"]
    app = context.config.attributes["app_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(SCHEMA)
    for table in ("lexical_postings", "lexical_stats"):
        op.execute(POLICIES.format(table=table))
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON lexical_postings, lexical_stats TO "{app}"')
    op.execute(BACKFILL)
    op.execute("RESET ROLE")


def downgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(
        "DROP TRIGGER IF EXISTS chunks_lexical_insert ON chunks;"
        "DROP TRIGGER IF EXISTS chunks_lexical_update ON chunks;"
        "DROP TRIGGER IF EXISTS chunks_lexical_delete ON chunks;"
        "DROP TRIGGER IF EXISTS chunks_lexical_truncate ON chunks;"
        "DROP FUNCTION IF EXISTS lexical_sync(), lexical_truncate(), lexical_terms(tsvector);"
        "DROP TABLE IF EXISTS lexical_postings, lexical_stats;"
        "CREATE INDEX IF NOT EXISTS chunks_tsv ON chunks USING gin (tsv);"
    )
    op.execute("RESET ROLE")
