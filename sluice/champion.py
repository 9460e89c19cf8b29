"""The champion: the pipeline config serving answers with, its promotions and rollbacks.

Postgres (`champion_history`, shared) is the record serving reads; the MLflow registered-model
alias `champion` points at the model version holding the same config. Each promotion pushes onto
a stack and each rollback pops it, so rolling back twice steps back two promotions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

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


def _history(conn) -> list[ChampionEvent]:
    rows = conn.execute(
        "SELECT event_id, config_id, action, mlflow_run_id, model_version, evaluated_on, reason, created_at "
        "FROM champion_history ORDER BY event_id"
    ).fetchall()
    return [ChampionEvent(*r) for r in rows]


def history(db: Database) -> list[ChampionEvent]:
    """Every promotion and rollback, oldest first."""
    with db.shared() as conn:
        return _history(conn)


def stack(events: list[ChampionEvent]) -> list[ChampionEvent]:
    """Promotions still in force: promote pushes, rollback pops."""
    out: list[ChampionEvent] = []
    for event in events:
        if event.action == "promote":
            out.append(event)
        elif out:
            out.pop()
    return out


def current_event(db: Database) -> ChampionEvent | None:
    """The promotion in force, or None."""
    live = stack(history(db))
    return live[-1] if live else None


def current_champion_id(db: Database) -> str | None:
    """The champion's config id, or None when nothing was ever promoted."""
    event = current_event(db)
    return event.config_id if event else None


def config_body(db: Database, config_id: str) -> PipelineConfig:
    """The stored pipeline config of a config id."""
    with db.shared() as conn:
        row = conn.execute("SELECT body FROM pipeline_configs WHERE config_id = %s", (config_id,)).fetchone()
    if row is None:
        raise ConfigError(f"config {config_id} is not stored: evaluate or ingest with it first")
    return parse_config(row[0], source=f"stored config {config_id}")


def current_champion(db: Database) -> PipelineConfig | None:
    """The pipeline config serving should use, or None when no champion was promoted."""
    config_id = current_champion_id(db)
    return config_body(db, config_id) if config_id else None


def store_config(db: Database, config: PipelineConfig) -> None:
    """Make sure a config is stored under its id (promotion references it)."""
    with db.shared() as conn:
        conn.execute(
            "INSERT INTO pipeline_configs (config_id, index_id, body) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (config.config_id, config.index_id, Jsonb(config.model_dump(mode="json", exclude={"name"}))),
        )


def record_promotion(
    db: Database,
    config_id: str,
    *,
    run_id: str | None,
    model_version: str | None,
    evaluated_on: str | None,
    reason: str,
    metrics: dict[str, Any] | None = None,
) -> ChampionEvent:
    """Append a promotion."""
    with db.shared() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        row = conn.execute(
            "INSERT INTO champion_history (config_id, action, mlflow_run_id, model_version, evaluated_on, reason, "
            "metrics) VALUES (%s, 'promote', %s, %s, %s, %s, %s) RETURNING event_id, config_id, action, "
            "mlflow_run_id, model_version, evaluated_on, reason, created_at",
            (config_id, run_id, model_version, evaluated_on, reason, Jsonb(metrics or {})),
        ).fetchone()
    return ChampionEvent(*row)


def rollback_target(events: list[ChampionEvent]) -> ChampionEvent:
    """The promotion a rollback would restore; raise when there is none."""
    live = stack(events)
    if len(live) < 2:
        raise ConfigError(
            "nothing to roll back to: fewer than two promotions are in force (see `sluice champion show`)"
        )
    return live[-2]


def record_rollback(db: Database, reason: str = "rollback") -> ChampionEvent:
    """Append a rollback to the previous champion and return the promotion now in force."""
    with db.shared() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        target = rollback_target(_history(conn))
        conn.execute(
            "INSERT INTO champion_history (config_id, action, mlflow_run_id, model_version, evaluated_on, reason) "
            "VALUES (%s, 'rollback', %s, %s, %s, %s)",
            (target.config_id, target.mlflow_run_id, target.model_version, target.evaluated_on, reason),
        )
    return target
