"""`sluice champion status`: what each tenant is served, what it should be, and how far its rollout is."""

from __future__ import annotations

from rich.table import Table

from sluice.cli_common import console
from sluice.settings import Settings


def print_status(settings: Settings, tenant: str | None) -> None:
    """The newest rollout, then one row per tenant (in scope): served, target, progress, rate, ETA, failures."""
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
            rows.append((name, served, tenant_row(db, name, latest.rollout_id) if latest else None))
    if latest:
        cancel = " (cancel requested)" if latest.cancel_requested and latest.status == "running" else ""
        scope = latest.tenant_scope or "every tenant"
        console.print(
            f"rollout {latest.rollout_id} of config {latest.target_config} to {scope}: {latest.status}{cancel}, "
            f"started {latest.created_at:%Y-%m-%d %H:%M:%S}, updated {latest.updated_at:%H:%M:%S}"
        )
    else:
        console.print("no rollout yet")
    console.print(_table(rows))


def _table(rows: list) -> Table:
    table = Table(title="tenants (smallest first)")
    columns = ("tenant", "served config", "served index", "target config", "target index", "rollout", "done/total")
    for col in (*columns, "docs/s", "ETA", "failed"):
        table.add_column(col, overflow="fold")
    for name, served, progress in rows:
        target = served.target
        same = "=" if not served.pending else target.index_id
        cells = [name, served.config.config_id, served.index_id, target.config_id, same]
        cells += _progress_cells(progress)
        table.add_row(*cells)
    return table


def _progress_cells(row) -> list[str]:
    if row is None:
        return ["—", "—", "—", "—", "—"]
    eta = "—" if row.eta_s is None else f"{row.eta_s:.0f} s"
    status = f"{row.status}: {row.error}" if row.error else row.status
    return [status, f"{row.docs_done}/{row.docs_total}", f"{row.rate:.1f}", eta, str(row.docs_failed)]
