"""Expired uploads whose objects cannot be deleted no longer block every other expiry.

0013's `expire_uploads` deleted a batch (no ORDER BY, a fixed LIMIT) and its caller deleted the batch's
objects before the commit: one object the store refused rolled the whole batch back, and a batch full of
such rows came back on every sweep, so no other upload ever expired. Now a sweep settles each upload on
its own: `expired_uploads` hands out the oldest expired uploads (locked; another worker's sweep skips
them) that this pass has not tried yet; the caller deletes each object, then `settle_expired_uploads`
deletes the rows whose objects are gone and marks the others (`delete_failed_at`, `delete_attempts`).
A marked row is kept and tried again on the next pass (the sweep logs it each time, naming the object);
within a pass it is passed over, so the pass reaches every other expired upload. Nothing is given up on:
a row goes only once its object is gone.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import run_as_owner

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE uploads
    ADD COLUMN delete_failed_at timestamptz,
    ADD COLUMN delete_attempts integer NOT NULL DEFAULT 0 CHECK (delete_attempts >= 0);
DROP FUNCTION expire_uploads(double precision, integer);

-- The oldest uploads older than the age, across tenants, that failed no deletion since p_pass began (the
-- sweep's pass: what it tried already), locked for the caller's transaction.
CREATE FUNCTION expired_uploads(p_age_s double precision, p_pass timestamptz, p_batch integer DEFAULT 1000)
RETURNS TABLE (tenant_id text, upload_id uuid, location text, delete_attempts integer)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
    SELECT u.tenant_id, u.upload_id, u.location, u.delete_attempts FROM uploads u
    WHERE u.created_at < now() - make_interval(secs => greatest(p_age_s, 60))
      AND (u.delete_failed_at IS NULL OR u.delete_failed_at < p_pass)
    ORDER BY u.created_at, u.tenant_id, u.upload_id
    LIMIT greatest(p_batch, 1)
    FOR UPDATE SKIP LOCKED
$fn$;

-- Deletes the expired uploads whose objects are gone (their parts go by cascade) and marks the others for
-- the next pass; how many were deleted. Only uploads older than the age: not a way into a tenant's live files.
CREATE FUNCTION settle_expired_uploads(
    p_age_s double precision, p_tenants text[], p_ids uuid[], p_removed boolean[]
) RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
    WITH settled AS (
        SELECT * FROM unnest(p_tenants, p_ids, p_removed) AS s(tenant_id, upload_id, removed)
    ), expired AS (
        SELECT u.tenant_id, u.upload_id, s.removed FROM uploads u JOIN settled s USING (tenant_id, upload_id)
        WHERE u.created_at < now() - make_interval(secs => greatest(p_age_s, 60))
    ), kept AS (  -- runs though nothing reads it: a WITH's update always runs to completion
        UPDATE uploads u SET delete_failed_at = now(), delete_attempts = u.delete_attempts + 1
        FROM expired e WHERE (u.tenant_id, u.upload_id) = (e.tenant_id, e.upload_id) AND NOT e.removed
    ), gone AS (
        DELETE FROM uploads u USING expired e
        WHERE (u.tenant_id, u.upload_id) = (e.tenant_id, e.upload_id) AND e.removed
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone
$fn$;

-- FOR UPDATE and the marks are updates: the owner may update uploads (the functions above are its only use).
CREATE POLICY owner_marks_old ON uploads FOR UPDATE TO {owner} USING (true) WITH CHECK (true);
REVOKE ALL ON FUNCTION expired_uploads(double precision, timestamptz, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION settle_expired_uploads(double precision, text[], uuid[], boolean[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION expired_uploads(double precision, timestamptz, integer) TO {app};
GRANT EXECUTE ON FUNCTION settle_expired_uploads(double precision, text[], uuid[], boolean[]) TO {app};
"""

# 0013's function, as it was.
DOWNGRADE = """
DROP FUNCTION IF EXISTS settle_expired_uploads(double precision, text[], uuid[], boolean[]);
DROP FUNCTION IF EXISTS expired_uploads(double precision, timestamptz, integer);
DROP POLICY IF EXISTS owner_marks_old ON uploads;
ALTER TABLE uploads DROP COLUMN IF EXISTS delete_failed_at, DROP COLUMN IF EXISTS delete_attempts;
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
REVOKE ALL ON FUNCTION expire_uploads(double precision, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION expire_uploads(double precision, integer) TO {app};
"""


def upgrade() -> None:
    run_as_owner(context, op, UPGRADE)


def downgrade() -> None:
    run_as_owner(context, op, DOWNGRADE)
