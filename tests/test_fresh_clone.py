"""A clone with nothing beside it collects every test module: no test reaches outside the repository.

The clone is of the committed tree (HEAD), made in an empty temporary folder and collected by this
interpreter with every SLUICE_* variable removed, so neither SLUICE_DATASETS_DIR nor a data folder beside the clone
folder can be seen. Collection only: cheap, and enough to catch a module that opens an outside path
at import or while parametrising.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from sluice.settings import PROJECT_ROOT


def _clone(target) -> None:
    inside = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--is-inside-work-tree"], capture_output=True)
    if inside.returncode != 0:
        pytest.skip(f"{PROJECT_ROOT} is not a git checkout (a downloaded archive?): nothing to clone")
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(target)], check=True, timeout=300)


def test_a_clone_with_nothing_beside_it_collects_every_module(tmp_path):
    clone = tmp_path / "sluice"
    _clone(clone)
    assert not (tmp_path / "shared").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["PYTHONPATH"] = str(clone)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert not re.search(r"\berrors?\b", out.splitlines()[-1]), out[-3000:]
    collected = int(re.search(r"(\d+) tests? collected", out).group(1))
    modules = {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}
    expected = {str(p.relative_to(clone)) for p in (clone / "tests").rglob("test_*.py")}
    assert collected > 0 and modules == expected, expected - modules
    # External-corpus tests are still there, to be reported as skipped, not dropped.
    assert "tests/test_parse_formats.py::test_every_example_doc_parses[example-docs]" in done.stdout
