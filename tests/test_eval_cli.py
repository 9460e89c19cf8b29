"""`sluice eval` and `sluice champion`: errors a user can act on, and the champion shown."""

from __future__ import annotations

import pytest

from sluice import champion

pytestmark = pytest.mark.usefixtures("no_champion_left")


@pytest.fixture()
def run(sluice_cli):
    return sluice_cli


def test_eval_bad_grid_names_the_field(run, tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ncorpus: {path: data/sample/corpus}\nchunkers: [{kind: recursive, chunk_size: 5}]\n")
    result = run("eval", str(grid))
    assert result.exit_code == 2 and "chunk_size" in result.output
    # A path long enough that an 80-column console would break the line inside it (CI's tmp paths vary).
    missing = tmp_path / ("deep-" * 12) / "missing [grid].yaml"
    result = run("eval", str(missing))
    assert result.exit_code == 2 and "does not exist" in result.output
    assert f"'{missing}' does not exist" in result.output  # one line, brackets as they are


def test_champion_show_and_unknown_run(run, db):
    result = run("champion", "show")
    assert result.exit_code == 0, result.output
    current = champion.current_champion_id(db)
    assert (current in result.output) if current else ("no champion yet" in result.output)
    result = run("champion", "promote", "0123456789abcdef0123456789abcdef")
    assert result.exit_code == 2 and "not a config run" in result.output
