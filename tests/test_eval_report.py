"""What `sluice eval` prints into a log: a block per config, the full table in a file, one champion line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from evals.grid import expand, load_grid
from sluice import champion
from tests.conftest import SAMPLE

pytestmark = pytest.mark.usefixtures("no_champion_left")

# Three questions on the Markdown documents: quick to index and answer.
GOLD = [json.loads(line) for line in (SAMPLE / "gold.jsonl").read_text().splitlines() if line.strip()]
GOLD = [g for g in GOLD if all(e["source_id"].endswith(".md") for e in g["evidence"])][:3]
LABELS = ("nDCG@10", "hit@5", "mrr", "ev.rec@5", "sem.sim", "ROUGE-L", "p95 ms", "cost/ans", "feasible")


@pytest.fixture()
def grid(migrated, admin, tmp_path) -> Iterator[Path]:
    """A two-config grid (one index, k=1 and k=10) with MLflow in tmp_path, and no champion yet."""
    admin.execute("TRUNCATE champion_history")
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(g) + "\n" for g in GOLD))
    spec = {
        "name": "report",
        "tenant": "eval-report",
        "corpus": {"kind": "files", "path": str(SAMPLE / "corpus" / "*.md")},
        "gold": str(gold),
        "chunkers": [{"kind": "recursive", "chunk_size": 300, "chunk_overlap": 30}],
        "retrieval": [{"mode": "dense", "k": 1}, {"mode": "dense", "k": 10}],
        "objective": {"metric": "ndcg_at_10", "max_cost_per_answer": 1.0, "max_p95_latency_ms": 600000},
        "promotion": {"level": 0.05, "n_boot": 200},
    }
    path = tmp_path / "report.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    yield path
    for table in (migrated.data_dir / "evaluations").glob("report-*.md"):  # full tables written beside the database
        table.unlink()


def test_eval_in_a_log_prints_blocks_a_full_table_file_and_one_champion_line(grid, db, eval_cli):
    result = eval_cli("eval", str(grid))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    configs = expand(load_grid(grid))
    summary = lines[_index(lines, "evaluation report: maximise ndcg_at_10") : _index(lines, "full table: ")]
    assert "┃" not in result.output and "│" not in result.output  # no grid squeezed into 80 columns
    assert max(len(line) for line in summary) <= 80, summary
    for n, config in enumerate(configs, 1):  # each config: its number and name, then its ids, then metrics
        at = summary.index(f"{n}. {config.name}")
        assert summary[at + 1].startswith(f"   config {config.config_id}  run ")
        assert all(f" {label} " in " ".join(summary[at + 2 : at + 5]) + " " for label in LABELS)
    table = Path(lines[_index(lines, "full table: ")].removeprefix("full table: "))
    text = table.read_text()
    assert all(label in text.splitlines()[2] for label in LABELS)  # the header row has every column
    assert all(f"| {c.config_id} | {c.name} |" in text for c in configs)
    winner = next(c for c in configs if c.config_id == champion.current_champion_id(db))
    verdicts = [line for line in lines if "champion" in line]
    assert len(verdicts) == 1, verdicts  # said once, with the config's id and parts, and why
    assert verdicts[0].startswith(f"new champion: config {winner.config_id}, {winner.name}: there was no champion yet")
    assert re.search(r"best ndcg_at_10 \(\d\.\d{4}\) of the configs within budget$", verdicts[0]), verdicts


def _index(lines: list[str], prefix: str) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(prefix))


def test_a_second_eval_names_the_unchanged_champion_once(grid, db, eval_cli):
    assert eval_cli("eval", str(grid)).exit_code == 0
    held = champion.current_champion_id(db)
    name = next(c.name for c in expand(load_grid(grid)) if c.config_id == held)
    result = eval_cli("eval", str(grid))
    assert result.exit_code == 0, result.output
    verdicts = [line for line in result.output.splitlines() if "champion" in line]
    assert verdicts == [
        f"champion unchanged: config {held}, {name}: the current champion is still the best feasible config"
    ]
