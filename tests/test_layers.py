"""The code's shape: layers point one way (the import-linter contract in pyproject.toml) and no import cycles."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

from sluice.settings import PROJECT_ROOT

PACKAGES = ("sluice", "tasks", "evals", "serving", "flows", "cli")


def test_layer_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    exe = str(lint) if lint.exists() else shutil.which("lint-imports")
    assert exe, "lint-imports is missing: `make setup` installs the dev extra (import-linter)"
    run = subprocess.run([exe, "--no-cache"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


def _cycles() -> list[tuple[str, str]]:
    graph = grimp.build_graph(*PACKAGES)
    found = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            # A package's __init__ re-exporting its own submodule is not a cycle between modules.
            if module.startswith(imported + ".") or imported.startswith(module + "."):
                continue
            if graph.chain_exists(importer=imported, imported=module):
                found.append((module, imported))
    return found


def test_no_import_cycles():
    assert _cycles() == []
