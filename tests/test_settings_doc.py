"""The README's settings table is generated from `Settings`: it lists every setting, as it is now."""

from __future__ import annotations

import subprocess
import sys

from sluice.settings import PROJECT_ROOT, Settings, settings_markdown


def test_every_setting_says_what_it_is_for():
    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


def test_readme_table_is_current():
    table = settings_markdown()
    assert table.count("| `SLUICE_") == len(Settings.model_fields)
    assert table in (PROJECT_ROOT / "README.md").read_text(), "run: .venv/bin/python scripts/settings-table.py"
    check = subprocess.run([sys.executable, "scripts/settings-table.py", "--check"], cwd=PROJECT_ROOT)
    assert check.returncode == 0
