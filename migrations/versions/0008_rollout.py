"""Rollout: tenant-scoped champions, the served config per tenant, clean switches, rollout progress.

- `champion_history.tenant_scope`: NULL = a global promotion, else the one tenant it applies to.
- `active_indexes.config_id`: the config a tenant's collection is served with (its index is `index_id`);
  a row pins what a tenant is served, so a promotion changes nothing until a rollout switches it.
  Any change of a row bumps the tenant's corpus version (the answer cache's key), in the same transaction.
- `documents.elements` / `documents.source_uri`: what a rollout needs to re-chunk without re-parsing
  (element spans) and to re-parse when the parser changed (the original file, re-read and hash-checked).
- `list_tenants()`: a rollout must reach every tenant. It returns tenant ids only (no data), through
  the owner, which reads `tenants` by a SELECT-only policy of its own; every other table stays closed to it.
- `rollouts` (shared: one row per rollout, scope and cancel flag) and `rollout_tenants` (per tenant, under
  RLS: documents done/total, failures, state).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import context, op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCHEMA = """
ALTER TABLE champion_history ADD COLUMN tenant_scope text CHECK (tenant_scope <> '');
CREATE INDEX champion_history_scope ON champion_history (tenant_scope, event_id);

ALTER TABLE active_indexes ADD COLUMN config_id text REFERENCES pipeline_configs (config_id);
ALTER TABLE active_indexes ADD COLUMN previous_config text REFERENCES pipeline_configs (config_id);
CREATE TRIGGER active_indexes_bump_corpus_version AFTER INSERT OR UPDATE OR DELETE ON active_indexes
    FOR EACH ROW EXECUTE FUNCTION bump_corpus_version();

-- What the chunks trigger does, callable: a tenant-scoped promotion or rollback invalidates that tenant's answers.
CREATE FUNCTION bump_corpus() RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE t text := current_setting('app.tenant_id', true);
BEGIN
    IF coalesce(t, '') = '' THEN
        RAISE EXCEPTION 'bump_corpus needs app.tenant_id set on the transaction';
    END IF;
    INSERT INTO corpus_versions (tenant_id, version) VALUES (t, 1)
    ON CONFLICT (tenant_id) DO UPDATE SET version = corpus_versions.version + 1;
    DELETE FROM answer_cache WHERE tenant_id = t;
END
$fn$;

ALTER TABLE documents ADD COLUMN elements jsonb;
ALTER TABLE documents ADD COLUMN source_uri text;

CREATE POLICY owner_lists_tenants ON tenants AS PERMISSIVE FOR SELECT TO {owner} USING (true);
CREATE FUNCTION list_tenants() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
    SELECT tenant_id FROM tenants ORDER BY tenant_id
$fn$;

CREATE TABLE rollouts (
    rollout_id        text PRIMARY KEY,
    tenant_scope      text CHECK (tenant_scope <> ''),
    target_config     text NOT NULL REFERENCES pipeline_configs (config_id),
    status            text NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'completed', 'partial', 'cancelled', 'failed')),
    cancel_requested  boolean NOT NULL DEFAULT false,
    reason            text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rollout_tenants (
    tenant_id      text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    rollout_id     text NOT NULL REFERENCES rollouts (rollout_id) ON DELETE CASCADE,
    from_index     text,
    target_config  text NOT NULL REFERENCES pipeline_configs (config_id),
    target_index   text NOT NULL,
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'building', 'switched', 'blocked', 'failed', 'cancelled')),
    docs_total     integer NOT NULL DEFAULT 0,
    docs_done      integer NOT NULL DEFAULT 0,
    docs_failed    integer NOT NULL DEFAULT 0,
    error          text NOT NULL DEFAULT '',
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rollout_id)
);
ALTER TABLE rollout_tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE rollout_tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rollout_tenants
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
"""


def upgrade() -> None:
    owner = context.config.attributes["owner_role"]
    app = context.config.attributes["app_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(SCHEMA.replace("{owner}", f'"{owner}"'))
    op.execute(
        f'REVOKE ALL ON FUNCTION list_tenants() FROM PUBLIC; GRANT EXECUTE ON FUNCTION list_tenants() TO "{app}"'
    )
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON rollouts TO "{app}"')
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON rollout_tenants TO "{app}"')
    op.execute("RESET ROLE")


def downgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(
        "DROP TABLE IF EXISTS rollout_tenants, rollouts;"
        "DROP FUNCTION IF EXISTS list_tenants(), bump_corpus();"
        "DROP POLICY IF EXISTS owner_lists_tenants ON tenants;"
        "ALTER TABLE documents DROP COLUMN IF EXISTS elements, DROP COLUMN IF EXISTS source_uri;"
        "DROP TRIGGER IF EXISTS active_indexes_bump_corpus_version ON active_indexes;"
        "ALTER TABLE active_indexes DROP COLUMN IF EXISTS config_id, DROP COLUMN IF EXISTS previous_config;"
        "DROP INDEX IF EXISTS champion_history_scope;"
        "ALTER TABLE champion_history DROP COLUMN IF EXISTS tenant_scope;"
    )
    op.execute("RESET ROLE")
