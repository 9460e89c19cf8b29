"""What the benchmarks read from outside the code: external corpora and the peer (langchain) venv.

Both come from Settings: corpora from SLUICE_DATASETS_DIR, the venv from SLUICE_BENCH_VENV (default
`.bench-venv/` in the checkout, built by scripts/bench-venv.sh), so no benchmark holds one machine's path.
"""

from __future__ import annotations

import json
from pathlib import Path

from sluice.errors import ConfigError
from sluice.settings import load_settings


def dataset(name: str) -> Path:
    """External corpus `name` under SLUICE_DATASETS_DIR; exits with the error naming the setting when absent."""
    try:
        return load_settings().dataset_path(name)
    except ConfigError as exc:
        raise SystemExit(f"benchmark input missing: {exc}") from exc


def write_covid_txt(folder: Path, limit: int | None) -> list[Path]:
    """One .txt file per covid_qa document (the first `limit`, or all)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for line in (dataset("covid_qa") / "docs.jsonl").read_text().splitlines()[:limit]:
        doc = json.loads(line)
        paths.append(folder / f"{doc['doc_id']}.txt")
        paths[-1].write_text(doc["text"])
    return paths


def peer_python() -> Path:
    """The interpreter of the langchain-postgres venv the comparison benches run in."""
    return load_settings().bench_venv / "bin" / "python"
