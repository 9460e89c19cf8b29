"""The code's shape: layers point one way (the import-linter contract in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from sluice.settings import PROJECT_ROOT

PACKAGES = ("sluice", "tasks", "evals", "serving", "flows", "cli")


def test_layer_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    exe = str(lint) if lint.exists() else shutil.which("lint-imports")
    assert exe, "lint-imports is missing: `make setup` installs the dev extra (import-linter)"
    run = subprocess.run([exe, "--no-cache"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
