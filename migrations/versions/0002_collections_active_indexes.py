"""Collections (a filterable namespace per tenant) and the active embedding space per collection.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = """
ALTER TABLE documents ADD COLUMN collection text NOT NULL DEFAULT 'default'
    CHECK (collection ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$');
CREATE INDEX documents_collection ON documents (tenant_id, collection);

-- Which embedding space serves a tenant's collection. Switching is one UPDATE in one transaction,
-- so a reader sees either the old or the new index, never neither.
CREATE TABLE active_indexes (
    tenant_id       text NOT NULL REFERENCES tenants (tenant_id) CHECK (tenant_id <> ''),
    collection      text NOT NULL,
    index_id        text NOT NULL REFERENCES indexes (index_id),
    previous_index  text REFERENCES indexes (index_id),
    switched_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, collection)
);
ALTER TABLE active_indexes ENABLE ROW LEVEL SECURITY;
ALTER TABLE active_indexes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON active_indexes
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
"""


def upgrade() -> None:
    owner = context.config.attributes["owner_role"]
    app = context.config.attributes["app_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(SCHEMA)
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON active_indexes TO "{app}"')
    op.execute("RESET ROLE")


def downgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute("DROP TABLE IF EXISTS active_indexes; ALTER TABLE documents DROP COLUMN IF EXISTS collection;")
    op.execute("RESET ROLE")
