"""Initial schema: roles, tenant tables under forced RLS, pgvector and full-text indexes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Every table that holds a tenant's data; each gets ENABLE + FORCE RLS and one policy.
TENANT_TABLES = ("tenants", "documents", "chunks", "indexed_documents", "embedding_cache", "ingest_errors")

SCHEMA = """
CREATE TABLE tenants (
    tenant_id   text PRIMARY KEY CHECK (tenant_id <> '' AND tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Configs are shared definitions, not tenant data: a config id means the same everywhere.
CREATE TABLE pipeline_configs (
    config_id   text PRIMARY KEY,
    index_id    text NOT NULL,
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per embedding space: the stages that shape stored vectors, and the embedder's identity.
CREATE TABLE indexes (
    index_id        text PRIMARY KEY,
    body            jsonb NOT NULL,
    embedder_model  text NOT NULL,
    weights_hash    text NOT NULL,
    dim             integer NOT NULL CHECK (dim > 0),
    normalize       boolean NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE documents (
    document_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (tenant_id) CHECK (tenant_id <> ''),
    source_id     text NOT NULL,
    content_hash  text NOT NULL,
    status        text NOT NULL DEFAULT 'ingested' CHECK (status IN ('ingested', 'failed')),
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    text          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, source_id)
);

-- Which version of a document each index holds: lets re-ingest skip unchanged documents.
CREATE TABLE indexed_documents (
    tenant_id     text NOT NULL CHECK (tenant_id <> ''),
    document_id   bigint NOT NULL REFERENCES documents (document_id) ON DELETE CASCADE,
    index_id      text NOT NULL REFERENCES indexes (index_id),
    content_hash  text NOT NULL,
    chunk_count   integer NOT NULL,
    indexed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, document_id, index_id)
);

CREATE TABLE chunks (
    chunk_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    text NOT NULL CHECK (tenant_id <> ''),
    document_id  bigint NOT NULL REFERENCES documents (document_id) ON DELETE CASCADE,
    index_id     text NOT NULL REFERENCES indexes (index_id),
    ordinal      integer NOT NULL CHECK (ordinal >= 0),
    char_start   integer NOT NULL CHECK (char_start >= 0),
    char_end     integer NOT NULL,
    text         text NOT NULL,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    dim          integer NOT NULL,
    embedding    vector NOT NULL,
    tsv          tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    CHECK (char_end >= char_start),
    CHECK (vector_dims(embedding) = dim),
    UNIQUE (tenant_id, document_id, index_id, ordinal)
);
CREATE INDEX chunks_tenant_index ON chunks (tenant_id, index_id, document_id);
CREATE INDEX chunks_metadata ON chunks USING gin (metadata jsonb_path_ops);
CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
CREATE INDEX documents_metadata ON documents USING gin (metadata jsonb_path_ops);

CREATE TABLE embedding_cache (
    tenant_id   text NOT NULL CHECK (tenant_id <> ''),
    model_key   text NOT NULL,
    text_hash   text NOT NULL,
    embedding   vector NOT NULL,
    PRIMARY KEY (tenant_id, model_key, text_hash)
);

CREATE TABLE ingest_errors (
    error_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text NOT NULL CHECK (tenant_id <> ''),
    source_id   text NOT NULL,
    stage       text NOT NULL,
    reason      text NOT NULL,
    run_id      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_errors_tenant ON ingest_errors (tenant_id, created_at DESC);

-- HNSW indexes are per dimension: an expression index over embedding::vector(d), partial on dim = d.
-- The app role owns nothing, so it asks the owner to build one through this definer function.
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
SELECT ensure_vector_index(384);
"""


def _policies() -> str:
    statements = []
    for table in TENANT_TABLES:
        statements.append(
            f"""
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON {table}
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
"""
        )
    return "\n".join(statements)


def upgrade() -> None:
    owner = context.config.attributes["owner_role"]
    app = context.config.attributes["app_role"]
    # The extension needs the admin role; every object after it is created by (so owned by) the owner role.
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(SCHEMA)
    op.execute(_policies())
    grants = f"""
GRANT USAGE ON SCHEMA public TO "{app}";
GRANT SELECT, INSERT, UPDATE, DELETE ON {", ".join(TENANT_TABLES)} TO "{app}";
GRANT SELECT, INSERT ON pipeline_configs, indexes TO "{app}";
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{app}";
REVOKE ALL ON FUNCTION ensure_vector_index(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_vector_index(integer) TO "{app}";
"""
    op.execute(grants)
    op.execute("RESET ROLE")


def downgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(
        "DROP FUNCTION IF EXISTS ensure_vector_index(integer);"
        "DROP TABLE IF EXISTS ingest_errors, embedding_cache, chunks, indexed_documents, documents, "
        "indexes, pipeline_configs, tenants CASCADE;"
    )
    op.execute("RESET ROLE")
