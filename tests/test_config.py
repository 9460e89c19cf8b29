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


def test_new_options_leave_existing_ids_unchanged():
    # Ids recorded before contextual headers, max_tokens and rerank existed: they name stored indexes and runs.
    # They were float32 spaces (the default precision then; `auto` may resolve otherwise on this CPU).
    fp32 = {"embedder": {"precision": "float32"}}
    known = {
        "cd4353d85cab3547": (fp32, "ae14453c20229500"),
        "3686575d02bcc6be": ({**fp32, "chunker": {"kind": "structure"}}, "24d244d70050cd52"),
        "f2a8e5b16504beaa": (
            {**fp32, "chunker": {"kind": "parent_child"}, "retrieval": {"mode": "hybrid"}},
            "a208ac0a7b945794",
        ),
    }
    for config_id, (body, index_id) in known.items():
        config = parse_config(body)
        assert (config.config_id, config.index_id) == (config_id, index_id)
        off = {**body, "chunker": {"kind": "recursive", **body.get("chunker", {}), "contextual": False}}
        assert parse_config({**off, "rerank": None}).config_id == config_id


def test_chunker_options_change_the_index_and_rerank_only_the_config():
    base = PipelineConfig()
    for option in ({"contextual": True}, {"max_tokens": "auto"}, {"max_tokens": 200}):
        changed = parse_config({"chunker": {"kind": "recursive", **option}})
        assert changed.index_id != base.index_id
    rerank = parse_config({"rerank": {"kind": "cross_encoder", "model": "/models/ce"}})
    assert rerank.index_id == base.index_id and rerank.config_id != base.config_id


@pytest.mark.parametrize("citation", ["[{n}]}", "}[{n}]", "[{n}]{", "[{n}] {m}"])
def test_a_citation_format_str_format_cannot_take_is_refused_when_the_config_is_read(citation):
    from sluice.config import PromptConfig

    with pytest.raises(ValidationError, match="must contain {n} once"):
        PromptConfig(citation=citation)  # else every answer's prompt would fail in str.format


def test_a_valid_citation_format_marks_passages():
    from sluice.config import PromptConfig

    assert PromptConfig(citation="<{n}>").citation.format(n=3) == "<3>"
