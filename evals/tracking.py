"""MLflow tracking through an explicit client (thread-safe under Prefect): runs, tables, plots, registry.

Imported lazily by entry points: `import mlflow` takes seconds.
"""

from __future__ import annotations

import json
from typing import Any

from sluice.config import PipelineConfig
from sluice.settings import Settings

CONFIG_ARTIFACT_DIR = "pipeline"
CONFIG_ARTIFACT = "pipeline/config.json"
MAX_PARAM_CHARS = 6000


def client(settings: Settings):
    """An MLflow client on the configured tracking and registry URI."""
    from mlflow import MlflowClient

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def experiment_id(mlc, settings: Settings, name: str | None = None) -> str:
    """Get or create the evaluation experiment, with artifacts under the settings' artifact root."""
    name = name or settings.mlflow_experiment
    found = mlc.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    settings.artifact_root.mkdir(parents=True, exist_ok=True)
    return mlc.create_experiment(name, artifact_location=settings.artifact_root.resolve().as_uri())


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {'a.b': 'v'} (lists as JSON), as MLflow params."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return {prefix: text[:MAX_PARAM_CHARS]}


def start_run(mlc, exp_id: str, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
    """Create a run (nested under `parent_id` when given) and return its id."""
    tags = dict(tags)
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    return mlc.create_run(exp_id, run_name=name, tags=tags).info.run_id


def log_metrics(mlc, run_id: str, metrics: dict[str, float]) -> None:
    """Log finite metrics in one batch (NaN = not measured, so not logged)."""
    import math

    from mlflow.entities import Metric

    now = _now_ms()
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and math.isfinite(v)]
    for start in range(0, len(batch), 500):
        mlc.log_batch(run_id, metrics=batch[start : start + 500])


def log_params(mlc, run_id: str, params: dict[str, str]) -> None:
    """Log params in one batch."""
    from mlflow.entities import Param

    mlc.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])


def log_config(mlc, run_id: str, config: PipelineConfig) -> None:
    """Store the full config as params and as the JSON artifact a registered version points at."""
    body = config.body()
    log_params(mlc, run_id, flatten(body))
    mlc.log_dict(run_id, {**body, "name": config.name}, CONFIG_ARTIFACT)


def log_figure(mlc, run_id: str, figure, path: str) -> None:
    """Save a matplotlib figure as an image artifact and close it."""
    import matplotlib.pyplot as plt

    mlc.log_figure(run_id, figure, path)
    plt.close(figure)


def end_run(mlc, run_id: str, status: str = "FINISHED") -> None:
    mlc.set_terminated(run_id, status=status)


def register_config_version(mlc, model_name: str, run_id: str, config_id: str) -> str:
    """Register the run's config artifact as a new version of the model; return the version."""
    from mlflow.exceptions import MlflowException

    try:
        mlc.create_registered_model(model_name, description="Sluice pipeline configs; alias 'champion' = serving.")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    version = mlc.create_model_version(
        model_name, source=f"runs:/{run_id}/{CONFIG_ARTIFACT_DIR}", run_id=run_id, tags={"config_id": config_id}
    )
    return str(version.version)


def champion_alias(tenant: str | None = None) -> str:
    """The registry alias of a champion scope: `champion` (global) or `champion-<tenant>`."""
    return "champion" if tenant is None else f"champion-{tenant}"


def set_champion_alias(mlc, model_name: str, version: str, tenant: str | None = None) -> None:
    mlc.set_registered_model_alias(model_name, champion_alias(tenant), version)


def delete_champion_alias(mlc, model_name: str, tenant: str | None = None) -> None:
    """Remove a scope's alias (a tenant handed back to the global champion)."""
    from mlflow.exceptions import MlflowException

    try:
        mlc.delete_registered_model_alias(model_name, champion_alias(tenant))
    except MlflowException:
        pass  # already gone: the end state is the same


def champion_alias_version(mlc, model_name: str, tenant: str | None = None) -> str | None:
    """The version a scope's champion alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(mlc.get_model_version_by_alias(model_name, champion_alias(tenant)).version)
    except MlflowException:
        return None


def run_config(mlc, run_id: str) -> PipelineConfig:
    """The pipeline config a run evaluated (from its artifact)."""
    import mlflow.artifacts

    from sluice.config import parse_config

    uri = f"{mlc.get_run(run_id).info.artifact_uri}/{CONFIG_ARTIFACT}"
    return parse_config(mlflow.artifacts.load_dict(uri), source=f"run {run_id}")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
