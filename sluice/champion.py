"""The champion: the pipeline config a tenant should be served with, its promotions and rollbacks.

Postgres (`champion_history`, shared) is the record serving reads; the MLflow registered-model
alias `champion` (global) or `champion-<tenant>` (tenant-scoped) points at the model version holding
the same config. Each scope (global, or one tenant) has its own stack: a promotion pushes onto it and
a rollback pops it, so rolling back twice steps back two promotions. A tenant-scoped champion overrides
the global one for that tenant; rolling back its only promotion hands the tenant back to the global one.
A promotion changes what a tenant *should* be served; `sluice.served` says what it *is* served, and a
rollout (tasks/rollout.py) moves the one to the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sluice.config import PipelineConfig, parse_config
from sluice.db import Database
from sluice.errors import ConfigError

_LOCK_KEY = 0x5C1CE  # advisory lock serialising champion changes


@dataclass(frozen=True)
class ChampionEvent:
    event_id: int
    config_id: str
    action: str
    mlflow_run_id: str | None
    model_version: str | None
    evaluated_on: str | None
    reason: str
    created_at: datetime
    tenant_scope: str | None = None  # None: every tenant without a champion of its own


def _history(conn, upto: int | None = None) -> list[ChampionEvent]:
    rows = conn.execute(
        "SELECT event_id, config_id, action, mlflow_run_id, model_version, evaluated_on, reason, created_at, "
        "tenant_scope FROM champion_history WHERE event_id <= coalesce(%s, event_id) ORDER BY event_id",
        (upto,),
    ).fetchall()
    return [ChampionEvent(*r) for r in rows]


def history(db: Database, upto: int | None = None) -> list[ChampionEvent]:
    """Every promotion and rollback (up to event `upto`), oldest first."""
    with db.shared() as conn:
        return _history(conn, upto)


def in_scope(events: list[ChampionEvent], tenant: str | None) -> list[ChampionEvent]:
    """The events of one scope: global (None) or one tenant's."""
    return [e for e in events if e.tenant_scope == tenant]


def champions(events: list[ChampionEvent]) -> dict[str | None, str]:
    """Champion config id per scope (None = global) for every scope with a promotion in force."""
    out: dict[str | None, str] = {}
    for scope in dict.fromkeys(e.tenant_scope for e in events):
        live = stack(in_scope(events, scope))
        if live:
            out[scope] = live[-1].config_id
    return out


def stack(events: list[ChampionEvent]) -> list[ChampionEvent]:
    """Promotions still in force: promote pushes, rollback pops."""
    out: list[ChampionEvent] = []
    for event in events:
        if event.action == "promote":
            out.append(event)
        elif out:
            out.pop()
    return out


def current_event(db: Database, tenant: str | None = None) -> ChampionEvent | None:
    """The promotion in force in a scope (global, or that tenant's own), or None."""
    live = stack(in_scope(history(db), tenant))
    return live[-1] if live else None


def current_champion_id(db: Database, tenant: str | None = None) -> str | None:
    """The champion config id for a tenant (its own, else the global one); global when tenant is None."""
    found = champions(history(db))
    return found.get(tenant, found.get(None)) if tenant else found.get(None)


def config_body(db: Database, config_id: str) -> PipelineConfig:
    """The stored pipeline config of a config id."""
    with db.shared() as conn:
        row = conn.execute("SELECT body FROM pipeline_configs WHERE config_id = %s", (config_id,)).fetchone()
    if row is None:
        raise ConfigError(f"config {config_id} is not stored: evaluate or ingest with it first")
    return parse_config(row[0], source=f"stored config {config_id}")


def current_champion(db: Database, tenant: str | None = None) -> PipelineConfig | None:
    """The champion config for a tenant (or the global one), or None when none was promoted."""
    config_id = current_champion_id(db, tenant)
    return config_body(db, config_id) if config_id else None


def write_config(conn: psycopg.Connection, config: PipelineConfig) -> None:
    """Store a config's body under its id (and index id), once: the one writer of `pipeline_configs`."""
    conn.execute(
        "INSERT INTO pipeline_configs (config_id, index_id, body) VALUES (%s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
        (config.config_id, config.index_id, config.canonical_json()),
    )


def store_config(db: Database, config: PipelineConfig) -> None:
    """Make sure a config is stored under its id (promotion references it)."""
    with db.shared() as conn:
        write_config(conn, config)


def record_promotion(
    db: Database,
    config_id: str,
    *,
    run_id: str | None,
    model_version: str | None,
    evaluated_on: str | None,
    reason: str,
    metrics: dict[str, Any] | None = None,
    tenant: str | None = None,
) -> ChampionEvent:
    """Append a promotion, global or for one tenant."""
    with db.shared() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        row = conn.execute(
            "INSERT INTO champion_history (config_id, action, mlflow_run_id, model_version, evaluated_on, reason, "
            "metrics, tenant_scope) VALUES (%s, 'promote', %s, %s, %s, %s, %s, %s) RETURNING event_id, config_id, "
            "action, mlflow_run_id, model_version, evaluated_on, reason, created_at, tenant_scope",
            (config_id, run_id, model_version, evaluated_on, reason, Jsonb(metrics or {}), tenant),
        ).fetchone()
        _invalidate(conn, tenant)
    return ChampionEvent(*row)


def rollback_target(events: list[ChampionEvent], tenant: str | None = None) -> ChampionEvent | None:
    """The promotion a rollback would restore (None: the tenant goes back to the global champion)."""
    live = stack(in_scope(events, tenant))
    if tenant is not None and len(live) == 1:
        return None
    if len(live) < 2:
        where = f"for tenant {tenant}" if tenant else "globally"
        raise ConfigError(
            f"nothing to roll back to {where}: fewer than two promotions are in force (see `sluice champion show`)"
        )
    return live[-2]


def record_rollback(db: Database, reason: str = "rollback", tenant: str | None = None) -> ChampionEvent | None:
    """Append a rollback in a scope; return the promotion now in force there (None: the global one applies)."""
    with db.shared() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        events = _history(conn)
        target = rollback_target(events, tenant)
        undone = stack(in_scope(events, tenant))[-1]
        restored = target or undone  # the row needs a config id; a pop to global names the one undone
        conn.execute(
            "INSERT INTO champion_history (config_id, action, mlflow_run_id, model_version, evaluated_on, reason, "
            "tenant_scope) VALUES (%s, 'rollback', %s, %s, %s, %s, %s)",
            (restored.config_id, restored.mlflow_run_id, restored.model_version, restored.evaluated_on, reason, tenant),
        )
        _invalidate(conn, tenant)
    return target


def _invalidate(conn, tenant: str | None) -> None:
    """A tenant-scoped change: bump that tenant's corpus version, so no answer cached before it is served.

    A global change needs nothing here: answer-cache keys carry the global champion's config id.
    """
    if tenant is not None:
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant,))
        conn.execute("SELECT bump_corpus()")
