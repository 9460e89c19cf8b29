"""Promote a run's config to champion (MLflow alias + Postgres record), globally or for one tenant, or roll back."""

from __future__ import annotations

from typing import Any

from evals import tracking
from sluice import champion
from sluice.db import Database
from sluice.errors import ConfigError
from sluice.served import all_tenants, pin_unpinned
from sluice.settings import Settings


def promote_run(
    settings: Settings,
    db: Database,
    run_id: str,
    reason: str,
    evaluated_on: str | None = None,
    metrics: dict[str, Any] | None = None,
    tenant: str | None = None,
) -> champion.ChampionEvent:
    """Register the run's config as a model version; make it the champion of every tenant, or of `tenant`."""
    from mlflow.exceptions import MlflowException

    if tenant is not None:
        with db.tenant(tenant):
            pass  # UnknownTenantError names the fix before anything is registered
    mlc = tracking.client(settings)
    try:
        run = mlc.get_run(run_id)
        config = tracking.run_config(mlc, run_id)
    except MlflowException as exc:
        raise ConfigError(f"run {run_id!r} is not a config run of this MLflow store ({settings.tracking_uri})") from exc
    tagged = run.data.tags.get("config_id")
    if tagged != config.config_id:
        raise ConfigError(f"run {run_id}: config_id tag {tagged!r} does not match its config ({config.config_id})")
    champion.store_config(db, config)
    pin_unpinned(settings, db, [tenant] if tenant else all_tenants(db))
    version = tracking.register_config_version(mlc, settings.registered_model, run_id, config.config_id)
    tracking.set_champion_alias(mlc, settings.registered_model, version, tenant)
    return champion.record_promotion(
        db,
        config.config_id,
        run_id=run_id,
        model_version=version,
        evaluated_on=evaluated_on,
        reason=reason,
        metrics=metrics,
        tenant=tenant,
    )


def rollback(
    settings: Settings, db: Database, reason: str = "manual rollback", tenant: str | None = None
) -> champion.ChampionEvent | None:
    """Restore a scope's previous champion and its MLflow alias (None: the tenant follows the global one again)."""
    pin_unpinned(settings, db, [tenant] if tenant else all_tenants(db))
    target = champion.record_rollback(db, reason, tenant)
    mlc = tracking.client(settings)
    if target is None:
        tracking.delete_champion_alias(mlc, settings.registered_model, tenant)
    elif target.model_version:
        tracking.set_champion_alias(mlc, settings.registered_model, target.model_version, tenant)
    return target
