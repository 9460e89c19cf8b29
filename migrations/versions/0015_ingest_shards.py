"""Distributed ingestion: a run split into shards, each a Celery task on the `ingest` queue, and its ledger.

`ingest_shards` is one row per shard of a run: the files it names, the attempt that holds it (a fencing
token: a redelivered shard takes the row over, and the attempt it replaced can no longer store), its
state and the index it wrote. `ingest_run_documents` is one row per document a run has settled, written
in the same transaction as the document itself (or its error): a redelivered shard skips the documents
already there, so a document is stored once per run, and the run's summary is counted from these rows.
Both are tenant data under the tenant policy.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import run_as_owner, tenant_isolated

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE ingest_shards (
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    run_id      text NOT NULL CHECK (length(run_id) BETWEEN 1 AND 64),
    shard       integer NOT NULL CHECK (shard >= 0),
    files       jsonb NOT NULL,  -- [[path, source_id], ...] as the parent listed them
    state       text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done')),
    attempt     integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    worker      text,
    index_id    text,
    embedded    integer NOT NULL DEFAULT 0 CHECK (embedded >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (tenant_id, run_id, shard)
);
CREATE TABLE ingest_run_documents (
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    run_id      text NOT NULL,
    source_id   text NOT NULL,
    shard       integer NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('ingested', 'updated', 'unchanged', 'failed')),
    chunks      integer NOT NULL DEFAULT 0 CHECK (chunks >= 0),
    truncated   integer NOT NULL DEFAULT 0 CHECK (truncated >= 0),
    error       text,
    attempt     integer NOT NULL,
    settled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, run_id, source_id),
    FOREIGN KEY (tenant_id, run_id, shard) REFERENCES ingest_shards ON DELETE CASCADE
);
CREATE INDEX ingest_run_documents_shard ON ingest_run_documents (tenant_id, run_id, shard);
"""
TABLES = ("ingest_shards", "ingest_run_documents")


def upgrade() -> None:
    policies = "".join(tenant_isolated(table) for table in TABLES)
    run_as_owner(context, op, SCHEMA + policies, {table: "SELECT, INSERT, UPDATE, DELETE" for table in TABLES})


def downgrade() -> None:
    run_as_owner(context, op, "DROP TABLE IF EXISTS ingest_run_documents; DROP TABLE IF EXISTS ingest_shards;")
