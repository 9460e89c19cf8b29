"""The active embedding space of a tenant's collection: build a new index beside the old, switch atomically.

The switch is one row update in one transaction (`active_indexes` is under RLS), so a reader
resolves either the old or the new index, both fully built. The old index's chunks stay until
`drop_index` is called for it, and an active index cannot be dropped; `drop_indexes` also drops the graphs
of its own a tenant had in them.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.errors import QueryError
from sluice.served import Resolver, pin
from sluice.settings import Settings
from tasks.graph import GRAPH_DROP_LOCK_TIMEOUT_S, release_graphs

# Class id of the per-tenant advisory lock between document stores (shared) and served-index switches
# (exclusive): a switch's completeness check sees every store that committed before it, and none in between.
_SERVING_LOCK = 0x5C1D0


@dataclass(frozen=True)
class IndexStats:
    index_id: str
    chunks: int
    documents: int


def active_index(conn: psycopg.Connection, collection: str = "default") -> str | None:
    """The index serving `collection` for the current tenant, or None when none was activated."""
    row = conn.execute("SELECT index_id FROM active_indexes WHERE collection = %s", (collection,)).fetchone()
    return row[0] if row else None


def index_stats(conn: psycopg.Connection, index_id: str) -> IndexStats:
    """How many of the tenant's chunks and documents an index holds."""
    chunks, docs = conn.execute(
        "SELECT count(*), count(DISTINCT document_id) FROM chunks WHERE index_id = %s", (index_id,)
    ).fetchone()
    return IndexStats(index_id, chunks, docs)


def activate_index(conn: psycopg.Connection, index_id: str, collection: str = "default") -> str | None:
    """Make `index_id` serve `collection` (refusing an empty index); return the index it replaces."""
    if index_stats(conn, index_id).chunks == 0:
        raise QueryError(f"index {index_id} holds no chunks for this tenant: ingest into it before activating it")
    previous = conn.execute(
        "SELECT index_id FROM active_indexes WHERE collection = %s FOR UPDATE", (collection,)
    ).fetchone()
    conn.execute(
        "INSERT INTO active_indexes (tenant_id, collection, index_id, previous_index) "
        "VALUES (current_setting('app.tenant_id'), %s, %s, NULL) ON CONFLICT (tenant_id, collection) DO UPDATE "
        "SET previous_index = active_indexes.index_id, index_id = EXCLUDED.index_id, switched_at = now()",
        (collection, index_id),
    )
    return previous[0] if previous else None


def drop_index(conn: psycopg.Connection, index_id: str) -> int:
    """Delete the tenant's chunks of an index no collection serves; return the chunks deleted."""
    serving = conn.execute("SELECT collection FROM active_indexes WHERE index_id = %s", (index_id,)).fetchall()
    if serving:
        names = ", ".join(r[0] for r in serving)
        raise QueryError(f"index {index_id} is active for collection(s) {names}: activate another index first")
    conn.execute("DELETE FROM indexed_documents WHERE index_id = %s", (index_id,))
    return conn.execute("DELETE FROM chunks WHERE index_id = %s", (index_id,)).rowcount


def drop_indexes(
    db: Database, tenant: str, index_ids: list[str], lock_timeout_s: float = GRAPH_DROP_LOCK_TIMEOUT_S
) -> dict[str, int]:
    """Drop the tenant's chunks of each index (`drop_index`, in one transaction), then, in another, the graphs
    of its own they left without rows (`tasks.graph.release_graphs`); return the chunks deleted per index."""
    with db.tenant(tenant) as conn:
        deleted = {index_id: drop_index(conn, index_id) for index_id in index_ids}
    with db.tenant(tenant) as conn:
        release_graphs(conn, lock_timeout_s)
    return deleted


def list_indexes(conn: psycopg.Connection) -> list[tuple[str, str, int, list[str], str]]:
    """(index_id, embedder model, chunk count, collections served, graph) for each index the tenant has chunks
    in; graph is `own` or `shared` (tasks/graph.py), with `(not built)` when its searches are exact meanwhile."""
    return conn.execute(
        "SELECT c.index_id, i.embedder_model, count(*), "
        "coalesce((SELECT array_agg(a.collection ORDER BY a.collection) FROM active_indexes a "
        "WHERE a.index_id = c.index_id), '{}'), "
        "CASE WHEN own_graph(c.index_id) THEN 'own' ELSE 'shared' END || CASE WHEN "
        "to_regclass(quote_ident(index_graph(c.index_id))) IS NULL THEN ' (not built)' ELSE '' END "
        "FROM chunks c JOIN indexes i USING (index_id) GROUP BY c.index_id, i.embedder_model ORDER BY c.index_id"
    ).fetchall()


def hold_store_lock(conn: psycopg.Connection) -> None:
    """Take the tenant's serving lock shared, until the transaction ends (every document store does)."""
    conn.execute(
        "SELECT pg_advisory_xact_lock_shared(%s, hashtext(current_setting('app.tenant_id')))", (_SERVING_LOCK,)
    )


def hold_switch_lock(conn: psycopg.Connection) -> None:
    """Take the tenant's serving lock exclusively, until the transaction ends: no document store commits meanwhile."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_setting('app.tenant_id')))", (_SERVING_LOCK,))


def switch_served(conn: psycopg.Connection, config: PipelineConfig) -> str | None:
    """Serve every collection of the tenant with `config` and its index; return the index the default row had.

    Runs in the caller's transaction (a rollout's switch, after its completeness check). Each changed row
    keeps what it replaces (`previous_index`, `previous_config`) and bumps the tenant's corpus version.
    """
    before = active_index(conn, "default")
    conn.execute(
        "UPDATE active_indexes SET previous_index = index_id, previous_config = config_id, index_id = %s, "
        "config_id = %s, switched_at = now() WHERE index_id <> %s OR config_id IS DISTINCT FROM %s",
        (config.index_id, config.config_id, config.index_id, config.config_id),
    )
    pin(conn, config)  # a tenant without any row gets its default one
    return before


def collectable(conn: psycopg.Connection, keep: set[str], min_age_days: float | None = None) -> list[str]:
    """The tenant's indexes no collection serves, `keep` aside (and, given an age, any a row left more recently)."""
    if min_age_days is not None:
        left = conn.execute(
            "SELECT previous_index FROM active_indexes WHERE previous_index IS NOT NULL "
            "AND switched_at > now() - make_interval(secs => %s)",
            (min_age_days * 86400,),
        ).fetchall()
        keep = keep | {r[0] for r in left}
    rows = conn.execute(
        "SELECT DISTINCT index_id FROM indexed_documents WHERE index_id NOT IN (SELECT index_id FROM active_indexes)"
    ).fetchall()
    return sorted(r[0] for r in rows if r[0] not in keep)


def collect_garbage(
    settings: Settings, db: Database, tenants: list[str], min_age_days: float | None = None, dry_run: bool = False
) -> dict[str, list[str]]:
    """Drop each tenant's indexes that it is neither served nor rolling out to; return them per tenant."""
    resolver, out = Resolver(), {}
    for tenant in tenants:
        served = resolver.served(settings, db, tenant)
        with db.tenant(tenant) as conn:
            out[tenant] = collectable(conn, {served.index_id, served.target.index_id}, min_age_days)
        if not dry_run:
            drop_indexes(db, tenant, out[tenant])
    return out
