"""Write the README's settings table from `sluice.settings.Settings` (run after adding a setting).

    .venv/bin/python scripts/settings-table.py          # rewrite README.md in place
    .venv/bin/python scripts/settings-table.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sluice.settings import settings_markdown  # noqa: E402

START, END = "<!-- settings-table:start (scripts/settings-table.py) -->", "<!-- settings-table:end -->"


def rendered(readme: str) -> str:
    """README text with the table between the markers replaced by the generated one."""
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{settings_markdown()}\n{END}{tail}"


if __name__ == "__main__":
    path = ROOT / "README.md"
    text = path.read_text()
    new = rendered(text)
    if "--check" in sys.argv:
        sys.exit(0 if new == text else 1)
    path.write_text(new)
