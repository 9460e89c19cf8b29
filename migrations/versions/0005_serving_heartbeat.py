"""Serving fast path and worker heartbeats.

`authorize_request` resolves an API key and spends one rate-limit token in one statement (one round
trip per request instead of a transaction of four). `worker_heartbeats` lets /readyz count live
workers with any broker: the embedded Postgres broker cannot broadcast Celery pings.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCHEMA = """
-- SECURITY INVOKER: the key lookup goes through the SECURITY DEFINER resolve_api_key (the app role
-- still cannot read api_keys), the bucket upsert runs as the app role under the tenant policy.
-- The tenant is set transaction-locally: call this as a statement of its own (autocommit).
-- Refill = tokens + rate * seconds since the last request, capped at burst; spend one if one is there.
CREATE FUNCTION authorize_request(
    p_hash text, p_rate double precision, p_burst double precision,
    OUT out_tenant text, OUT out_allowed boolean, OUT out_tokens double precision
)
LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp AS $fn$
BEGIN
    out_tenant := resolve_api_key(p_hash);
    IF out_tenant IS NULL THEN
        RETURN;
    END IF;
    PERFORM set_config('app.tenant_id', out_tenant, true);
    INSERT INTO rate_buckets AS b (tenant_id, tokens, allowed, updated_at)
    VALUES (out_tenant, p_burst - 1, true, clock_timestamp())
    ON CONFLICT (tenant_id) DO UPDATE SET
        tokens = LEAST(p_burst, b.tokens + p_rate * EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at))
                 - CASE WHEN LEAST(p_burst, b.tokens + p_rate * EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at))
                             >= 1 THEN 1 ELSE 0 END,
        allowed = LEAST(p_burst, b.tokens + p_rate * EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at)) >= 1,
        updated_at = clock_timestamp()
    RETURNING b.allowed, b.tokens INTO out_allowed, out_tokens;
END
$fn$;

-- Not tenant data (worker host names and process counts), so no tenant policy: the API reads it
-- before any tenant is known. Each worker node upserts its row every few seconds and deletes it on
-- a clean shutdown; a row older than a few intervals is a dead worker.
CREATE TABLE worker_heartbeats (
    worker_id   text PRIMARY KEY CHECK (worker_id <> ''),
    hostname    text NOT NULL,
    pid         integer NOT NULL,
    processes   integer NOT NULL CHECK (processes >= 0),
    queues      text[] NOT NULL DEFAULT '{}',
    broker      text NOT NULL,  -- a hash of the broker URL: an API counts only workers on its broker
    started_at  timestamptz NOT NULL DEFAULT now(),
    beat_at     timestamptz NOT NULL DEFAULT now()
);
"""


def upgrade() -> None:
    owner = context.config.attributes["owner_role"]
    app = context.config.attributes["app_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(SCHEMA)
    fn = "authorize_request(text, double precision, double precision)"
    op.execute(f'REVOKE ALL ON FUNCTION {fn} FROM PUBLIC; GRANT EXECUTE ON FUNCTION {fn} TO "{app}";')
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON worker_heartbeats TO "{app}"')
    op.execute("RESET ROLE")


def downgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(
        "DROP FUNCTION IF EXISTS authorize_request(text, double precision, double precision);"
        "DROP TABLE IF EXISTS worker_heartbeats;"
    )
    op.execute("RESET ROLE")
