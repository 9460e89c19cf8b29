"""Pipeline-config identity: equal configs hash equally, any stored-vector change changes index_id."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluice.config import PipelineConfig, load_config, parse_config
from sluice.errors import ConfigError


def test_ids_are_stable_and_ignore_the_name():
    a = PipelineConfig()
    b = PipelineConfig(name="other label")
    assert a.config_id == b.config_id and a.index_id == b.index_id
    assert len(a.config_id) == 16 and a.config_id != a.index_id


def test_chunker_parameter_changes_both_ids():
    base = PipelineConfig()
    changed = parse_config({"chunker": {"kind": "recursive", "chunk_size": 500}})
    assert changed.index_id != base.index_id and changed.config_id != base.config_id


def test_retrieval_change_keeps_the_index():
    base = PipelineConfig()
    changed = parse_config({"retrieval": {"k": 9}})
    assert changed.index_id == base.index_id and changed.config_id != base.config_id


def test_configs_are_frozen():
    with pytest.raises(ValidationError):
        PipelineConfig().retrieval.k = 3  # type: ignore[misc]


def test_invalid_config_names_source_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("chunker:\n  kind: nosuch\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*chunker"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("retrieval: {k: 0}\n")
    with pytest.raises(ConfigError, match="retrieval.k"):
        load_config(path)
