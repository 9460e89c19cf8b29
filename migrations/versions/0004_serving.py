"""Serving: API keys, idempotency keys, jobs, answer cache, corpus versions, rate-limit buckets.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TENANT_TABLES = ("idempotency_keys", "jobs", "answer_cache", "corpus_versions", "rate_buckets")

SCHEMA = """
-- API keys are looked up before any tenant is known, so they cannot sit behind the tenant policy.
-- The table holds only sha256 hashes -> tenant ids, and the app role has NO privilege on it: it can
-- neither list keys nor learn which tenants exist. Three SECURITY DEFINER functions (owned by the
-- owner role, which owns the table and so is not subject to RLS here) are the only way in:
-- resolve a hash to one tenant, create a key for the tenant of the current transaction, revoke by id.
CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    key_hash    text NOT NULL UNIQUE CHECK (length(key_hash) = 64),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE FUNCTION resolve_api_key(p_hash text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
    SELECT tenant_id FROM api_keys WHERE key_hash = p_hash AND revoked_at IS NULL
$fn$;

-- Creation is bound to the tenant set on the transaction (Database.tenant), so code acting for one
-- tenant cannot mint keys for another.
CREATE FUNCTION create_api_key(p_key_id text, p_hash text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
DECLARE t text := current_setting('app.tenant_id', true);
BEGIN
    IF coalesce(t, '') = '' THEN
        RAISE EXCEPTION 'create_api_key needs app.tenant_id set on the transaction';
    END IF;
    INSERT INTO api_keys (key_id, tenant_id, key_hash) VALUES (p_key_id, t, p_hash);
    RETURN t;
END
$fn$;

CREATE FUNCTION revoke_api_key(p_key_id text) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
    UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = p_key_id RETURNING tenant_id
$fn$;

CREATE TABLE idempotency_keys (
    tenant_id     text NOT NULL CHECK (tenant_id <> ''),
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  text NOT NULL,
    task_id       text,
    status_code   integer,
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (tenant_id, expires_at);

CREATE TABLE jobs (
    job_id      text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    kind        text NOT NULL CHECK (kind IN ('query', 'ingest')),
    request     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_tenant ON jobs (tenant_id, created_at DESC);

CREATE TABLE answer_cache (
    tenant_id   text NOT NULL CHECK (tenant_id <> ''),
    cache_key   text NOT NULL,
    response    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, cache_key)
);

-- Bumped by a trigger on every change to a tenant's chunks: answer-cache keys include it, so any
-- ingestion (API, CLI or flow) invalidates that tenant's cached answers and nobody else's. The
-- trigger runs as the invoker (the app role), under the same tenant policy as the ingestion.
CREATE TABLE corpus_versions (
    tenant_id   text PRIMARY KEY CHECK (tenant_id <> ''),
    version     bigint NOT NULL DEFAULT 0
);

CREATE FUNCTION bump_corpus_version() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE t text := current_setting('app.tenant_id', true);
BEGIN
    IF coalesce(t, '') <> '' THEN
        INSERT INTO corpus_versions (tenant_id, version) VALUES (t, 1)
        ON CONFLICT (tenant_id) DO UPDATE SET version = corpus_versions.version + 1;
        -- Entries keyed by older versions are unreachable now; drop them rather than let them pile up.
        DELETE FROM answer_cache WHERE tenant_id = t;
    END IF;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER chunks_bump_corpus_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON chunks
    FOR EACH STATEMENT EXECUTE FUNCTION bump_corpus_version();

CREATE TABLE rate_buckets (
    tenant_id     text PRIMARY KEY CHECK (tenant_id <> ''),
    tokens        double precision NOT NULL,
    allowed       boolean NOT NULL,
    updated_at    timestamptz NOT NULL
);
"""


def _policies() -> str:
    return "\n".join(
        f"""
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON {table}
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
"""
        for table in TENANT_TABLES
    )


def upgrade() -> None:
    owner = context.config.attributes["owner_role"]
    app = context.config.attributes["app_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(SCHEMA)
    op.execute(_policies())
    functions = ("resolve_api_key(text)", "create_api_key(text, text)", "revoke_api_key(text)")
    grants = [f'REVOKE ALL ON api_keys FROM PUBLIC, "{app}";']
    grants.append(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {", ".join(TENANT_TABLES)} TO "{app}";')
    for fn in functions:
        grants.append(f'REVOKE ALL ON FUNCTION {fn} FROM PUBLIC; GRANT EXECUTE ON FUNCTION {fn} TO "{app}";')
    op.execute("\n".join(grants))
    op.execute("RESET ROLE")


def downgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(
        "DROP TRIGGER IF EXISTS chunks_bump_corpus_version ON chunks;"
        "DROP FUNCTION IF EXISTS bump_corpus_version(), resolve_api_key(text), create_api_key(text, text),"
        " revoke_api_key(text);"
        "DROP TABLE IF EXISTS rate_buckets, corpus_versions, answer_cache, jobs, idempotency_keys, api_keys;"
    )
    op.execute("RESET ROLE")
