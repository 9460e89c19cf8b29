"""Dead letters, bounded job requests and expiry of finished jobs.

`dead_letters` holds tasks the workers gave up on (a payload no pool process can take, a task that
killed its worker process or failed on every retry): acknowledged, never redelivered, kept here for
an operator. It is tenant data (a question, its filters), so it sits under the tenant policy like
`jobs`; operators read it with the admin role.

`jobs.finished_at` is written by the worker when a task ends; `expire_jobs` deletes jobs finished
longer ago than the retention, across tenants. It is the only cross-tenant access to `jobs`: the app
role cannot see other tenants' rows, so the function runs as the owner, and two owner-only
policies let the owner see and delete finished jobs (and nothing else) under FORCE ROW LEVEL SECURITY.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE dead_letters (
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    task_id     text NOT NULL CHECK (length(task_id) BETWEEN 1 AND 255),
    task_name   text NOT NULL,
    reason      text NOT NULL,
    -- The task's arguments with secret-looking keys removed, or a summary when they are too large,
    -- too deep or not storable as jsonb (the worker bounds them well below this).
    arguments   jsonb NOT NULL CHECK (octet_length(arguments::text) <= 65536),
    last_error  text NOT NULL,
    attempts    integer NOT NULL CHECK (attempts >= 1),
    first_at    timestamptz NOT NULL DEFAULT now(),
    last_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, task_id)
);
CREATE INDEX dead_letters_recent ON dead_letters (tenant_id, last_at DESC);
ALTER TABLE dead_letters ENABLE ROW LEVEL SECURITY;
ALTER TABLE dead_letters FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON dead_letters
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE jobs ADD COLUMN finished_at timestamptz;
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- The API refuses any request this large long before (filters and questions have their own limits);
-- NOT VALID: rows stored before this revision are not re-read.
ALTER TABLE jobs ADD CONSTRAINT jobs_request_size CHECK (octet_length(request::text) <= 1048576) NOT VALID;

CREATE FUNCTION expire_jobs(p_retention_s double precision, p_batch integer DEFAULT 10000) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
    WITH gone AS (
        DELETE FROM jobs WHERE job_id IN (
            SELECT job_id FROM jobs
            WHERE finished_at < now() - make_interval(secs => greatest(p_retention_s, 1))
            LIMIT greatest(p_batch, 1)
        )
        RETURNING 1
    )
    SELECT count(*) FROM gone
$fn$;
"""


def upgrade() -> None:
    owner = context.config.attributes["owner_role"]
    app = context.config.attributes["app_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(SCHEMA)
    op.execute(
        f'CREATE POLICY owner_reads_finished ON jobs FOR SELECT TO "{owner}" USING (finished_at IS NOT NULL);'
        f'CREATE POLICY owner_expires_finished ON jobs FOR DELETE TO "{owner}" USING (finished_at IS NOT NULL);'
    )
    fn = "expire_jobs(double precision, integer)"
    op.execute(f'REVOKE ALL ON FUNCTION {fn} FROM PUBLIC; GRANT EXECUTE ON FUNCTION {fn} TO "{app}";')
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON dead_letters TO "{app}"')
    op.execute("RESET ROLE")


def downgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(
        "DROP FUNCTION IF EXISTS expire_jobs(double precision, integer);"
        "DROP POLICY IF EXISTS owner_reads_finished ON jobs;"
        "DROP POLICY IF EXISTS owner_expires_finished ON jobs;"
        "ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_request_size;"
        "DROP INDEX IF EXISTS jobs_finished;"
        "ALTER TABLE jobs DROP COLUMN IF EXISTS finished_at;"
        "DROP TABLE IF EXISTS dead_letters;"
    )
    op.execute("RESET ROLE")
