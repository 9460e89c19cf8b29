"""`sluice champion status`: what each tenant is served, what it should be, and how far its rollout is.

One line per tenant (smallest first), never wrapped inside an id: greppable, and readable with many tenants.
"""

from __future__ import annotations

from cli.common import console
from sluice.settings import Settings


def print_status(settings: Settings, tenant: str | None) -> None:
    """The newest rollout, then one line per tenant (in scope): served, target, progress, rate, ETA, failures."""
    from sluice.db import Database
    from sluice.served import Resolver
    from tasks.rollout import tenants_in_scope
    from tasks.rollout_state import recent_rollouts, tenant_row

    with Database(settings) as db:
        latest = next(iter(recent_rollouts(db, 1)), None)
        resolver = Resolver()
        rows = []
        for name in tenants_in_scope(db, tenant):
            served = resolver.served(settings, db, name)
            row = tenant_row(db, name, latest.rollout_id) if latest else None
            rows.append((name, served, _graph_since(db, name, row)))
    if latest:
        cancel = " (cancel requested)" if latest.cancel_requested and latest.status == "running" else ""
        scope = latest.tenant_scope or "every tenant"
        console.print(
            f"rollout {latest.rollout_id} of config {latest.target_config} to {scope}: {latest.status}{cancel}, "
            f"started {latest.created_at:%Y-%m-%d %H:%M:%S}, updated {latest.updated_at:%H:%M:%S}",
            soft_wrap=True,
        )
    else:
        console.print("no rollout yet")
    for name, served, progress in rows:
        console.print(_line(name, served, progress), soft_wrap=True)


def _graph_since(db, tenant: str, row):
    """The row, its note of a deferred graph amended once the graph has been built since (the note is history)."""
    from dataclasses import replace

    from tasks.bulk import has_vector_index
    from tasks.rollout_state import GRAPH_DEFERRED

    if row is None or row.status != "switched" or not row.error.startswith(GRAPH_DEFERRED):
        return row
    with db.tenant(tenant) as conn:
        if not has_vector_index(conn, row.target_index):
            return row
    return replace(row, error=f"{GRAPH_DEFERRED}, which has been built since")


def _line(name: str, served, row) -> str:
    """One tenant: served config and index, target (when another), the rollout's progress."""
    target = served.target
    aim = "on target" if not served.pending else f"target config {target.config_id} index {target.index_id}"
    text = f"{name}: served config {served.config.config_id} index {served.index_id}, {aim}"
    if row is None:
        return text + "; not in this rollout"
    eta = "—" if row.eta_s is None else f"{row.eta_s:.0f} s"
    text += f"; rollout {row.status} {row.docs_done}/{row.docs_total} documents, {row.rate:.1f}/s, ETA {eta}"
    text += f", {row.docs_failed} failed"
    return text + (f": {row.error}" if row.error else "")
