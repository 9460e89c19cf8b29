"""Uploaded files wait for a worker in the database (or an object store), never on one host's disk.

`uploads` has one row per uploaded file of an ingest job: its name, size and where its bytes are —
in `upload_parts` (the default: pieces of at most 4 MiB, so no value nears bytea's 1 GB and neither
side holds a whole file in one buffer) or, with `location` set, at an object-store URL. Both tables
are tenant data under the tenant policy. The worker that ingests the job deletes its rows; rows that
no job ever removed (an API that died between writing and enqueueing, a dead-lettered job never
replayed) are deleted by `expire_uploads`, swept by every worker node like `expire_jobs`. It is the
only cross-tenant access: it runs as the owner, which two owner-only policies let read and delete.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import run_as_owner, tenant_isolated

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE uploads (
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    upload_id   uuid NOT NULL,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    size        bigint NOT NULL CHECK (size >= 0),
    -- NULL: the bytes are in upload_parts; else the object-store URL that holds them.
    location    text CHECK (length(location) BETWEEN 1 AND 2048),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, upload_id),
    -- The database holds files up to 256 MiB (SLUICE_UPLOAD_STORE=s3://... for larger ones).
    CONSTRAINT uploads_size_in_database CHECK (location IS NOT NULL OR size <= 268435456)
);
CREATE INDEX uploads_created ON uploads (created_at);
CREATE TABLE upload_parts (
    tenant_id   text NOT NULL CHECK (tenant_id <> ''),
    upload_id   uuid NOT NULL,
    part        integer NOT NULL CHECK (part >= 0),
    data        bytea NOT NULL CHECK (octet_length(data) <= 4194304),
    PRIMARY KEY (tenant_id, upload_id, part),
    FOREIGN KEY (tenant_id, upload_id) REFERENCES uploads (tenant_id, upload_id) ON DELETE CASCADE
);

-- Deletes uploads older than the age across tenants (their parts go by cascade) and returns the
-- object-store URLs among them, for the caller to delete.
CREATE FUNCTION expire_uploads(p_age_s double precision, p_batch integer DEFAULT 1000)
RETURNS TABLE (location text)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
    WITH gone AS (
        DELETE FROM uploads WHERE (tenant_id, upload_id) IN (
            SELECT tenant_id, upload_id FROM uploads
            WHERE created_at < now() - make_interval(secs => greatest(p_age_s, 60))
            LIMIT greatest(p_batch, 1)
        )
        RETURNING uploads.location
    )
    SELECT gone.location FROM gone WHERE gone.location IS NOT NULL
$fn$;
"""
OWNER_SWEEPS = """
CREATE POLICY owner_reads_old ON uploads FOR SELECT TO {owner} USING (true);
CREATE POLICY owner_expires_old ON uploads FOR DELETE TO {owner} USING (true);
REVOKE ALL ON FUNCTION expire_uploads(double precision, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION expire_uploads(double precision, integer) TO {app};
"""


def upgrade() -> None:
    policies = tenant_isolated("uploads") + tenant_isolated("upload_parts")
    run_as_owner(context, op, SCHEMA + policies + OWNER_SWEEPS, {"uploads, upload_parts": "SELECT, INSERT, DELETE"})


def downgrade() -> None:
    run_as_owner(
        context,
        op,
        "DROP FUNCTION IF EXISTS expire_uploads(double precision, integer);"
        "DROP TABLE IF EXISTS upload_parts;"
        "DROP TABLE IF EXISTS uploads;",
    )
