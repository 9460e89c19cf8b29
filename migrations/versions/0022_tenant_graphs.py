"""A large tenant gets an HNSW graph of its own in an index; the other tenants share one graph without it.

An index's graph (`chunks_hnsw_<index_id>`, migration 0014) held every tenant's rows, and RLS dropped the
other tenants' after the scan. A tenant holding half of a 2M-row graph had its beam widened 2x to keep its
recall: 15.0 ms p50 at recall 0.972 for the million, where the same million alone in its graph took 8.3 ms
(docs/benchmarks.md, Runs 11 and 12). Each small tenant beside it paid the 4x widening cap.

- `tenant_graphs (tenant_id, index_id)`, under the tenant policy: the indexes in which a tenant has its own
  graph. A tenant claims one (tasks/graph.py, `claim_own_graph`) when its rows in the index reach
  Settings.own_graph_rows, before a bulk load of that size or at the end of an ingest that crossed it.
- `chunks.own_graph`: whether the row was stored after its tenant claimed a graph in its index (the row
  inserts set it from `own_graph(index_id)`; default false). It is what keeps a large tenant's new rows out
  of the shared graph, with no rebuild of it: that graph is now built `WHERE ... AND NOT own_graph`.
- `ensure_tenant_hnsw(index_id)` builds the calling tenant's graph, `chunks_hnsw_<index_id>_<16 hex of
  md5(tenant)>`, `WHERE index_id = .. AND dim = .. AND tenant_id = '<tenant>'`: all of the tenant's rows,
  also the ones stored before its claim (those stay in the shared graph too, unread by the tenant).
- `index_graph(index_id)` names the graph the calling tenant searches. A search for a tenant with a claim
  names the tenant's literal (`c.tenant_id = '<tenant>'`, which only its own graph's predicate follows
  from), any other search `NOT c.own_graph` (tasks/retrieve.py).

- `drop_tenant_hnsw(index_id)` drops the calling tenant's graph and its claim once it holds no chunks in the
  index (`sluice index drop`, `sluice index gc` after a rollout): a million-row graph is a gigabyte. DROP INDEX
  locks all of `chunks` for every tenant, so it runs in a transaction of its own with a short lock timeout
  (tasks/graph.py, `release_graphs`); a drop not granted in time leaves the claim for the next try.

A claimed tenant whose graph is not built yet (a build deferred by its lock) is searched exactly, as any
index without its graph is. A shared graph built before this migration has no `NOT own_graph` in its
predicate: a claimed tenant's search could still use it, and the planner then prefers the smaller graph
(pgvector costs a scan by the graph's size); drop it (`DROP INDEX chunks_hnsw_<index_id>`) and the next
ingest rebuilds it with the new predicate. The downgrade drops the column, so the graphs built after this
migration (their predicates name it) and the tenants' graphs go with it, and 0021's function returns.

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import migration, run_as_owner, tenant_isolated

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

SHARED_OLD = "WHERE index_id = %L AND dim = %s',"
SHARED_NEW = "WHERE index_id = %L AND dim = %s AND NOT own_graph',"

SCHEMA = """
ALTER TABLE chunks ADD COLUMN own_graph boolean NOT NULL DEFAULT false;
CREATE TABLE tenant_graphs (
    tenant_id  text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    index_id   text NOT NULL REFERENCES indexes (index_id),
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, index_id)
);
"""

FUNCTIONS = r"""
CREATE FUNCTION own_graph(p_index_id text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $fn$
    SELECT EXISTS (SELECT 1 FROM tenant_graphs g WHERE g.index_id = p_index_id
                   AND g.tenant_id = current_setting('app.tenant_id', true))
$fn$;

-- The name of the calling tenant's graph of its own in an index (whether claimed or not), its inputs checked:
-- they are spliced into the DDL of the two functions below.
CREATE FUNCTION tenant_graph_name(p_index_id text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = public, pg_temp AS $fn$
DECLARE
    tenant text := current_setting('app.tenant_id', true);
BEGIN
    IF p_index_id IS NULL OR p_index_id !~ '^[A-Za-z0-9_-]{1,48}$' THEN
        RAISE EXCEPTION 'index id % is not 1-48 letters, digits, _ or -', p_index_id;
    END IF;
    IF tenant IS NULL OR tenant !~ '^[a-z0-9][a-z0-9_-]{0,62}$' THEN
        RAISE EXCEPTION 'no tenant is set (app.tenant_id): a tenant''s graph is built or dropped in its transaction';
    END IF;
    RETURN 'chunks_hnsw_' || p_index_id || '_' || substr(md5(tenant), 1, 16);
END
$fn$;

CREATE FUNCTION index_graph(p_index_id text) RETURNS text
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $fn$
    SELECT CASE WHEN own_graph(p_index_id) THEN tenant_graph_name(p_index_id)
        ELSE 'chunks_hnsw_' || p_index_id END
$fn$;

CREATE FUNCTION ensure_tenant_hnsw(p_index_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
DECLARE
    d integer;
    tenant text := current_setting('app.tenant_id', true);
    name text := tenant_graph_name(p_index_id);
BEGIN
    SELECT i.dim INTO d FROM indexes i WHERE i.index_id = p_index_id;
    IF d IS NULL THEN
        RAISE EXCEPTION 'index % is not registered: register it before building its HNSW index', p_index_id;
    END IF;
    IF d > 4000 THEN
        RAISE EXCEPTION 'embedding dimension % is outside 1..4000 (the HNSW limit on halfvec)', d;
    END IF;
    IF NOT own_graph(p_index_id) THEN
        RAISE EXCEPTION 'tenant % has not claimed a graph of its own in index %: claim it first (tenant_graphs)',
            tenant, p_index_id;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext(name));
    IF to_regclass(quote_ident(name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format(
            'CREATE INDEX %I ON chunks USING hnsw ((embedding::halfvec(%s)) halfvec_cosine_ops) '
            'WITH (m = 16, ef_construction = 200) WHERE index_id = %L AND dim = %s AND tenant_id = %L',
            name, d, p_index_id, d, tenant);
    EXCEPTION WHEN duplicate_table THEN
        RETURN false;
    END;
    RETURN true;
END
$fn$;
REVOKE ALL ON FUNCTION ensure_tenant_hnsw(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_tenant_hnsw(text) TO {app};

CREATE FUNCTION drop_tenant_hnsw(p_index_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
DECLARE
    tenant text := current_setting('app.tenant_id', true);
    name text := tenant_graph_name(p_index_id);
BEGIN
    -- DROP INDEX's lock, taken before the check: an ingest into the index that commits meanwhile (its rows
    -- marked own_graph) is seen by it, and none commits between the check and the drop.
    LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM chunks c WHERE c.index_id = p_index_id AND c.tenant_id = tenant) THEN
        RAISE EXCEPTION 'tenant % still has chunks in index %: drop them first (sluice index drop)',
            tenant, p_index_id;
    END IF;
    DELETE FROM tenant_graphs g WHERE g.tenant_id = tenant AND g.index_id = p_index_id;
    IF to_regclass(quote_ident(name)) IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP INDEX %I', name);
    RETURN true;
END
$fn$;
REVOKE ALL ON FUNCTION drop_tenant_hnsw(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION drop_tenant_hnsw(text) TO {app};
"""

DROP_TENANT_GRAPHS = r"""
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT indexname FROM pg_indexes WHERE tablename = 'chunks'
             AND indexname ~ '^chunks_hnsw_[A-Za-z0-9_-]+_[0-9a-f]{16}$' LOOP
        EXECUTE format('DROP INDEX %I', r.indexname);
    END LOOP;
END $$;
"""


def _shared(own_graph_aside: bool) -> str:
    """0021's `ensure_index_hnsw`, or with the shared graph's predicate leaving claimed tenants' new rows out."""
    body = migration("0021")._function(halfvec=True)
    assert SHARED_OLD in body, "0021's ensure_index_hnsw changed: update 0022's replacement"
    return body.replace(SHARED_OLD, SHARED_NEW) if own_graph_aside else body


def upgrade() -> None:
    statements = SCHEMA + tenant_isolated("tenant_graphs") + FUNCTIONS + _shared(own_graph_aside=True)
    run_as_owner(context, op, statements, {"tenant_graphs": "SELECT, INSERT"})


def downgrade() -> None:
    run_as_owner(
        context,
        op,
        _shared(own_graph_aside=False)
        + DROP_TENANT_GRAPHS
        + "DROP FUNCTION IF EXISTS drop_tenant_hnsw(text); DROP FUNCTION IF EXISTS ensure_tenant_hnsw(text); "
        "DROP FUNCTION IF EXISTS index_graph(text); DROP FUNCTION IF EXISTS tenant_graph_name(text); "
        "DROP FUNCTION IF EXISTS own_graph(text); DROP TABLE IF EXISTS tenant_graphs; "
        "ALTER TABLE chunks DROP COLUMN IF EXISTS own_graph;",
    )
