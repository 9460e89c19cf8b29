"""Documents get a random public id: the only document id the API, the CLI and citations show.

`document_id` is one sequence over all tenants, so the first id a new tenant saw told it how many
documents every other tenant had ingested. It stays the internal key (chunks and indexed_documents
reference it; joins and indexes are unchanged) and never leaves the database; `public_id` (a random
UUID, drawn per row by Postgres) is what callers see. Cached answers quote the old integer ids, so
the answer cache is emptied (it refills on the next queries).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import context, op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    # A volatile default: every existing row gets its own id as the column is added.
    op.execute("ALTER TABLE documents ADD COLUMN public_id uuid NOT NULL DEFAULT gen_random_uuid()")
    op.execute("ALTER TABLE documents ADD CONSTRAINT documents_public_id_key UNIQUE (public_id)")
    op.execute("TRUNCATE answer_cache")  # TRUNCATE is not subject to row security: every tenant's entries
    op.execute("RESET ROLE")


def downgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute("ALTER TABLE documents DROP COLUMN public_id")
    op.execute("TRUNCATE answer_cache")
    op.execute("RESET ROLE")
