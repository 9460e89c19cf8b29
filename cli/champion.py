"""`sluice champion`: the champion config (global or per tenant), its rollout to every tenant, and its status."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.common import console
from sluice.settings import Settings, load_settings

champion_app = typer.Typer(
    help="The champion config: show, promote a run, roll back, roll out to tenants, status, cancel.",
    no_args_is_help=True,
)
TenantScope = Annotated[
    Optional[str], typer.Option("--tenant", "-t", help="One tenant's champion (overrides the global one for it).")
]
RolloutOpt = Annotated[bool, typer.Option("--rollout/--no-rollout", help="Build and switch the tenants now.")]
PROGRESS_EVERY_S = 5.0
ReasonOpt = Annotated[Optional[str], typer.Option(help="Why, for the history.")]


def _fmt(value) -> str:
    return "—" if value is None else str(value)


@champion_app.command("show")
def champion_show() -> None:
    """Show the champions in force (global and per tenant) and their history."""
    from evals import tracking
    from sluice import champion
    from sluice.db import Database

    settings = load_settings()
    with Database(settings) as db:
        events = champion.history(db)
    table = Table(title="champion history (newest last)")
    for col in ("#", "scope", "action", "config id", "model version", "run", "evaluated on", "reason", "at"):
        table.add_column(col, overflow="fold")
    for e in events:
        scope = e.tenant_scope or "global"
        when = e.created_at.strftime("%Y-%m-%d %H:%M")
        row = (e.event_id, scope, e.action, e.config_id, e.model_version, e.mlflow_run_id, e.evaluated_on)
        table.add_row(*(_fmt(v) for v in row), e.reason, when)
    console.print(table)
    found = champion.champions(events)
    if not found:
        console.print("no champion yet: run `sluice eval GRID.yaml` or `sluice champion promote RUN`")
    mlc = tracking.client(settings)
    for scope, config_id in sorted(found.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
        alias = tracking.champion_alias(scope)
        version = tracking.champion_alias_version(mlc, settings.registered_model, scope)
        console.print(f"champion {scope or '(global)'}: config {config_id}; MLflow alias {alias!r} -> {version}")


@champion_app.command("promote")
def champion_promote(
    run: Annotated[str, typer.Argument(help="MLflow run id of a config run (a nested run of `sluice eval`).")],
    tenant: TenantScope = None,
    reason: ReasonOpt = "manual promotion",
    rollout: RolloutOpt = True,
) -> None:
    """Make the config evaluated by RUN the champion (of every tenant, or of one), then roll it out."""
    from evals.promotion import promote_run
    from sluice.db import Database

    settings = load_settings()
    with Database(settings) as db:
        event = promote_run(settings, db, run, reason or "", evaluated_on=tenant, tenant=tenant)
        console.print(f"champion {tenant or '(global)'}: config {event.config_id} (version {event.model_version})")
        if rollout:
            roll_out(settings, db, tenant, f"promotion {event.event_id}")


@champion_app.command("rollback")
def champion_rollback(tenant: TenantScope = None, reason: ReasonOpt = "manual rollback", rollout: RolloutOpt = True):
    """Restore the previous champion (a tenant's only one: back to the global one), then switch tenants back."""
    from evals.promotion import rollback
    from sluice.db import Database

    settings = load_settings()
    with Database(settings) as db:
        event = rollback(settings, db, reason or "", tenant)
        restored = f"config {event.config_id} (version {event.model_version})" if event else "the global champion"
        console.print(f"champion {tenant or '(global)'} restored: {restored}")
        if rollout:
            roll_out(settings, db, tenant, "rollback")


@champion_app.command("rollout")
def champion_rollout(
    tenant: TenantScope = None,
    force: Annotated[bool, typer.Option(help="Switch even if some documents cannot be built.")] = False,
    concurrency: Annotated[Optional[int], typer.Option(help="Tenants at once.")] = None,
) -> None:
    """Build each tenant's champion index beside its served one and switch it (resumes an interrupted rollout)."""
    from sluice.db import Database

    settings = load_settings()
    with Database(settings) as db:
        ro = roll_out(settings, db, tenant, "manual rollout", force=force, concurrency=concurrency)
    if any(outcome != "switched" for outcome in ro.outcomes.values()):
        raise typer.Exit(code=1)


def roll_out(settings: Settings, db, tenant: str | None, reason: str, **options):
    """Run the rollout driver, printing each tenant's progress every few seconds, then its outcome."""
    import time

    from sluice.metrics import observe_rollout
    from tasks.rollout import run_rollout
    from tasks.rollout_state import graph_deferred

    last: dict[str, float] = {}

    def said(name: str, done: int, total: int, failed: int) -> None:
        observe_rollout(name, done, total, failed)  # merged by the API's /metrics with PROMETHEUS_MULTIPROC_DIR
        if done + failed >= total or time.monotonic() - last.get(name, 0.0) > PROGRESS_EVERY_S:
            last[name] = time.monotonic()
            console.print(f"  {name}: {done}/{total} documents in the target index, {failed} failed")

    ro = run_rollout(settings, db, tenant, reason, on_progress=said, **options)
    for name, outcome in sorted(ro.outcomes.items()):
        console.print(f"rollout {ro.rollout_id}: tenant {name} {outcome}")
    if "blocked" in ro.outcomes.values():
        console.print("blocked tenants stay on their index: see `sluice champion status` and ingest_errors")
    for name, index_id in sorted(ro.deferred_graphs.items()):
        console.print(f"tenant {name}: {graph_deferred(name, index_id)}", soft_wrap=True)
    return ro


@champion_app.command("status")
def champion_status(tenant: TenantScope = None) -> None:
    """Per tenant: served config and index, target, and the latest rollout's progress (rate, ETA, failures)."""
    from cli.rollout import print_status

    print_status(load_settings(), tenant)


@champion_app.command("cancel")
def champion_cancel(rollout_id: Annotated[Optional[str], typer.Argument(help="Default: every running one.")] = None):
    """Stop running rollouts after their current batch (rerun `sluice champion rollout` to continue)."""
    from sluice.db import Database
    from tasks.rollout_state import request_cancel

    with Database(load_settings()) as db:
        ids = request_cancel(db, rollout_id)
    console.print(f"cancel requested: {', '.join(ids)}" if ids else "no running rollout")
