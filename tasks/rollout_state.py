"""Where a rollout stands: `rollouts` (one row per rollout: scope, target, status, cancel flag; shared) and
`rollout_tenants` (per tenant, under its RLS: index served before, target, documents done/total/failed).

What is built is never recorded here: it is in the target index itself (`indexed_documents`), so these
rows are a view for people (`sluice champion status`, the Prefect UI, metrics), never a source of truth a
rerun could disagree with.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sluice.config import PipelineConfig
from sluice.db import Database
from tasks.graph import deferred_fix

RUNNING = "running"
GRAPH_DEFERRED = "switched without its HNSW graph"  # how a switched tenant's note begins (`sluice champion status`)


@dataclass(frozen=True)
class RolloutRow:
    rollout_id: str
    tenant_scope: str | None
    target_config: str
    status: str
    cancel_requested: bool
    reason: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TenantRow:
    tenant: str
    rollout_id: str
    from_index: str | None
    target_config: str
    target_index: str
    status: str
    docs_total: int
    docs_done: int
    docs_failed: int
    error: str
    started_at: datetime
    updated_at: datetime

    @property
    def rate(self) -> float:
        """Documents per second since the tenant started."""
        seconds = (self.updated_at - self.started_at).total_seconds()
        return self.docs_done / seconds if seconds > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate (None while nothing is measured yet)."""
        left = self.docs_total - self.docs_done - self.docs_failed
        return left / self.rate if self.rate > 0 else (0.0 if left <= 0 else None)


_ROLLOUT = "rollout_id, tenant_scope, target_config, status, cancel_requested, reason, created_at, updated_at"
_TENANT = (
    "tenant_id, rollout_id, from_index, target_config, target_index, status, docs_total, docs_done, docs_failed, "
    "error, started_at, updated_at"
)


def open_rollout(db: Database, scope: str | None, target: PipelineConfig, reason: str) -> str:
    """The running rollout of this scope and target (a rerun resumes it), else a new one."""
    with db.shared() as conn:
        found = conn.execute(
            "SELECT rollout_id FROM rollouts WHERE status = 'running' AND tenant_scope IS NOT DISTINCT FROM %s "
            "AND target_config = %s AND NOT cancel_requested ORDER BY created_at DESC LIMIT 1",
            (scope, target.config_id),
        ).fetchone()
        if found:
            return found[0]
        rollout_id = uuid.uuid4().hex[:12]
        conn.execute(
            "INSERT INTO rollouts (rollout_id, tenant_scope, target_config, reason) VALUES (%s, %s, %s, %s)",
            (rollout_id, scope, target.config_id, reason),
        )
    return rollout_id


def close_rollout(db: Database, rollout_id: str, status: str) -> None:
    """Record how a rollout ended: completed, partial (some tenants blocked or failed), cancelled or failed."""
    with db.shared() as conn:
        conn.execute("UPDATE rollouts SET status = %s, updated_at = now() WHERE rollout_id = %s", (status, rollout_id))


def cancel_requested(db: Database, rollout_id: str) -> bool:
    """Whether someone asked this rollout to stop (checked between batches)."""
    with db.statement() as conn:
        row = conn.execute("SELECT cancel_requested FROM rollouts WHERE rollout_id = %s", (rollout_id,)).fetchone()
    return bool(row and row[0])


def request_cancel(db: Database, rollout_id: str | None = None) -> list[str]:
    """Ask running rollouts (one, or all) to stop after their current batch; return their ids."""
    with db.shared() as conn:
        rows = conn.execute(
            "UPDATE rollouts SET cancel_requested = true, updated_at = now() "
            "WHERE status = 'running' AND rollout_id = coalesce(%s, rollout_id) RETURNING rollout_id",
            (rollout_id,),
        ).fetchall()
    return [r[0] for r in rows]


def recent_rollouts(db: Database, limit: int = 5) -> list[RolloutRow]:
    """The newest rollouts, newest first."""
    with db.shared() as conn:
        rows = conn.execute(
            f"SELECT {_ROLLOUT} FROM rollouts ORDER BY created_at DESC LIMIT %s",  # noqa: S608 - constants
            (limit,),
        ).fetchall()
    return [RolloutRow(*r) for r in rows]


def tenant_row(db: Database, tenant: str, rollout_id: str) -> TenantRow | None:
    """A tenant's progress in a rollout, or None when it has not started there."""
    rows = db.execute_as(
        tenant,
        f"SELECT {_TENANT} FROM rollout_tenants WHERE rollout_id = %s",  # noqa: S608 - constants
        (rollout_id,),
    )
    return TenantRow(*rows[0]) if rows else None


def start_tenant(db: Database, tenant: str, rollout_id: str, from_index: str | None, target: PipelineConfig) -> None:
    """Record that a tenant's build began (again, after a crash: its counts are then recomputed)."""
    with db.tenant(tenant) as conn:
        conn.execute(
            "INSERT INTO rollout_tenants (tenant_id, rollout_id, from_index, target_config, target_index, status) "
            "VALUES (current_setting('app.tenant_id'), %s, %s, %s, %s, 'building') "
            "ON CONFLICT (tenant_id, rollout_id) DO UPDATE SET status = 'building', from_index = EXCLUDED.from_index, "
            "target_config = EXCLUDED.target_config, target_index = EXCLUDED.target_index, error = '', "
            "started_at = now(), updated_at = now()",
            (rollout_id, from_index, target.config_id, target.index_id),
        )


def progress(conn, rollout_id: str, total: int, done: int, failed: int, status: str | None = None) -> None:
    """Update a tenant's counts (and status) in the caller's tenant transaction."""
    conn.execute(
        "UPDATE rollout_tenants SET docs_total = %s, docs_done = %s, docs_failed = %s, "
        "status = coalesce(%s, status), updated_at = now() WHERE rollout_id = %s",
        (total, done, failed, status, rollout_id),
    )


def graph_deferred(tenant: str, index_id: str) -> str:
    """The note of a tenant switched to an index whose graph build was deferred: what it costs, and the fix."""
    return (
        f"{GRAPH_DEFERRED} (a lock on chunks was held too long): dense search on index {index_id} is exact, "
        f"slower, until {deferred_fix(index_id, tenant)}"
    )


def note(conn, rollout_id: str, text: str) -> None:
    """Record a note on a tenant's row in the caller's tenant transaction (in `error`: empty when all went well)."""
    conn.execute(
        "UPDATE rollout_tenants SET error = %s, updated_at = now() WHERE rollout_id = %s", (text[:4000], rollout_id)
    )


def finish_tenant(db: Database, tenant: str, rollout_id: str, status: str, error: str = "") -> None:
    """Record how a tenant's rollout ended (other than by its switch, which records itself)."""
    with db.tenant(tenant) as conn:
        conn.execute(
            "UPDATE rollout_tenants SET status = %s, error = %s, updated_at = now() WHERE rollout_id = %s",
            (status, error[:4000], rollout_id),
        )
