"""DDL pieces that new migrations share: the tenant policy, running as the schema owner, an earlier migration.

Migrations 0001-0011 spell these out themselves and stay frozen; later ones call these so each table's
policy is written once. A migration passes alembic's `context` and `op` in (this module imports neither).
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

from sluice.settings import PROJECT_ROOT


def tenant_isolated(table: str) -> str:
    """Forced row-level security on `table`: a transaction reads and writes only its `app.tenant_id`'s rows."""
    return f"""
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON {table}
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
"""


def run_as_owner(context: Any, op: Any, statements: str, grants: dict[str, str] | None = None) -> None:
    """Run `statements` as the schema owner (`{owner}` and `{app}` in them name the roles), then grant the
    app role `grants` ({table: "SELECT, INSERT"}) on the tables they created."""
    owner = context.config.attributes["owner_role"]
    app = context.config.attributes["app_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(statements.replace("{owner}", f'"{owner}"').replace("{app}", f'"{app}"'))
    for table, privileges in (grants or {}).items():
        op.execute(f'GRANT {privileges} ON {table} TO "{app}"')
    op.execute("RESET ROLE")


def migration(revision: str) -> ModuleType:
    """The migration module of `revision` (file `<revision>_*.py`; its name starts with a digit, so it is
    loaded by path, not imported): a later migration restores or rewrites its SQL without a copy of it."""
    path = next((PROJECT_ROOT / "migrations" / "versions").glob(f"{revision}_*.py"))  # as sluice.db.run_alembic
    spec = importlib.util.spec_from_file_location(f"sluice_migration_{revision}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
