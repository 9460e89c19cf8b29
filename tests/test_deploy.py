"""compose.yaml and docs/deploy.md name real settings and real commands (no Docker engine here to run them)."""

from __future__ import annotations

import re

import click
import typer.main
import yaml

from cli.main import app as cli_app
from sluice.settings import PROJECT_ROOT, Settings

COMPOSE = PROJECT_ROOT / "compose.yaml"
DEPLOY = PROJECT_ROOT / "docs" / "deploy.md"
SERVICES = {
    "postgres",
    "redis",
    "migrate",
    "api",
    "worker-query",
    "worker-ingest",
    "prefect-server",
    "prefect-worker",
    "mlflow",
}
FIELDS = {f"SLUICE_{name.upper()}" for name in Settings.model_fields}
# Set by the platform or a tool, not Sluice's Settings.
NOT_SETTINGS = {"SLUICE_PROJECT_DIR"}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _sluice_services(compose: dict) -> dict:
    return {name: svc for name, svc in compose["services"].items() if svc.get("command", [""])[0] == "sluice"}


def test_compose_has_every_process_of_the_topology():
    services = _compose()["services"]
    assert set(services) == SERVICES
    assert services["worker-ingest"]["command"][:4] == ["sluice", "worker", "--queues", "ingest"]
    assert services["worker-query"]["command"][:4] == ["sluice", "worker", "--queues", "query"]


def test_every_sluice_variable_in_compose_is_a_setting():
    names = {key for svc in _compose()["services"].values() for key in (svc.get("environment") or {})}
    sluice = {n for n in names if n.startswith("SLUICE_")} - NOT_SETTINGS
    assert sluice, "compose.yaml sets no SLUICE_* variable"
    assert sluice <= FIELDS, f"not settings: {sorted(sluice - FIELDS)}"


def test_only_the_migration_gets_the_admin_url():
    services = _compose()["services"]
    with_admin = {name for name, svc in services.items() if "SLUICE_DATABASE_URL" in (svc.get("environment") or {})}
    assert with_admin == {"migrate"}
    for name, svc in _sluice_services(_compose()).items():
        assert "SLUICE_APP_DATABASE_URL" in svc["environment"], name


def test_compose_commands_are_real_cli_commands_and_options():
    for name, svc in _sluice_services(_compose()).items():
        leaf, args = _resolve(svc["command"][1:])
        leaf.make_context(name, args)  # click.UsageError on an unknown command or option


def _resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    """The CLI command `sluice ARGS` names, and the arguments left for it."""
    command, args = typer.main.get_command(cli_app), list(args)
    while isinstance(command, click.Group):
        ctx = click.Context(command)
        sub = command.get_command(ctx, args.pop(0))
        assert sub is not None, f"no such command in {args}"
        command = sub
    return command, args


def test_every_setting_deploy_md_names_exists():
    named = set(re.findall(r"SLUICE_[A-Z_]+[A-Z]", DEPLOY.read_text())) - NOT_SETTINGS
    assert {"SLUICE_APP_DATABASE_URL", "SLUICE_BROKER_VISIBILITY_TIMEOUT_S"} <= named
    assert named <= FIELDS, f"docs/deploy.md names unknown settings: {sorted(named - FIELDS)}"
