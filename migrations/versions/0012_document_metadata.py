"""User metadata per document, and the registry of promoted (typed, indexed) metadata keys.

- `documents.user_metadata`: the metadata the user gave a document (front matter, sidecar, folder
  manifest, API upload field, flow parameter; docs/retrieval.md "Document metadata"), already merged
  into `documents.metadata` (what `doc.*` filters read) and kept apart so a later change of it replaces
  exactly those keys. An object of at most 64 KiB here (`tasks/metadata.py` refuses over 16 KiB first).
- `filter_columns`: the document keys promoted to typed columns `documents.meta_<key>` with a btree index
  each (`sluice/filter_columns.py` adds them at `sluice db up` from SLUICE_FILTER_COLUMNS). `=`/`<` on
  bigint, text and boolean are leakproof, so under RLS such a filter is an index condition, where the
  jsonb expressions of other keys are evaluated row by row. Shared (not tenant data: key names and types),
  read-only for the app role.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import run_as_owner

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

DOWNGRADE = """
DO $do$
DECLARE k text;
BEGIN
    FOR k IN SELECT key FROM filter_columns LOOP
        EXECUTE format('ALTER TABLE documents DROP COLUMN IF EXISTS %I', 'meta_' || k);
        EXECUTE format('ALTER TABLE documents DROP CONSTRAINT IF EXISTS %I', 'documents_meta_' || k || '_check');
    END LOOP;
END
$do$;
DROP TABLE IF EXISTS filter_columns;
ALTER TABLE documents DROP COLUMN IF EXISTS user_metadata;
"""

SCHEMA = """
ALTER TABLE documents ADD COLUMN user_metadata jsonb NOT NULL DEFAULT '{}'::jsonb
    CHECK (jsonb_typeof(user_metadata) = 'object' AND octet_length(user_metadata::text) <= 65536);
CREATE TABLE filter_columns (
    key         text PRIMARY KEY CHECK (key ~ '^[a-z][a-z0-9_]{0,39}$'),
    type        text NOT NULL CHECK (type IN ('text', 'integer', 'boolean')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
"""


def upgrade() -> None:
    run_as_owner(context, op, SCHEMA, grants={"filter_columns": "SELECT"})


def downgrade() -> None:
    run_as_owner(context, op, DOWNGRADE)
