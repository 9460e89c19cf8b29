"""One registry for every plug-in kind: names, one error for unknown names, lazy entries, no duplicates."""

from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import dataclass

import pytest

from sluice.config import PipelineConfig, RetrievalConfig, TierConfig
from sluice.errors import ConfigError
from sluice.registry import Registry
from tests.conftest import PROJECT_ROOT


@dataclass(frozen=True)
class Widget:
    kind: str
    size: int = 1


def test_build_calls_the_entry_the_config_names_and_unknown_names_list_the_known_ones():
    widgets: Registry[type] = Registry("widget kind")

    @widgets.register("box")
    class Box:
        def __init__(self, config: Widget, colour: str):
            self.size, self.colour = config.size, colour

    widgets.register("tube", lambda config, colour: ("tube", colour))
    box = widgets.build(Widget("box", 3), "red")
    assert isinstance(box, Box) and (box.size, box.colour) == (3, "red")
    assert widgets.build(Widget("tube"), colour="blue") == ("tube", "blue")
    assert list(widgets) == ["box", "tube"] and "box" in widgets and len(widgets) == 2
    with pytest.raises(ConfigError, match=r"^unknown widget kind 'cone': use one of \['box', 'tube'\]$"):
        widgets.build(Widget("cone"), "red")


def test_a_second_registration_under_a_taken_name_is_refused():
    widgets: Registry[object] = Registry("widget kind")
    widgets.register("box", object())
    with pytest.raises(ConfigError, match="widget kind 'box' is registered twice"):
        widgets.register("box")(type("Box", (), {}))
    with pytest.raises(ConfigError, match="widget kind 'box' is registered twice"):
        widgets.register("box", "tests.nowhere:Box")
    with pytest.raises(ConfigError, match="must read 'package.module:attribute'"):
        widgets.register("crate", "tests.nowhere.Crate")


def test_a_lazy_entry_is_imported_on_first_use_only(tmp_path, monkeypatch):
    (tmp_path / "sluice_lazy_widget.py").write_text(
        "class Crate:\n    def __init__(self, config):\n        self.size = config.size * 10\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    widgets: Registry[type] = Registry("widget kind")
    widgets.register("crate", "sluice_lazy_widget:Crate")
    widgets.register("missing", "sluice_lazy_widget:Missing")
    assert "sluice_lazy_widget" not in sys.modules, "registering must not import"
    try:
        assert widgets.build(Widget("crate", 2)).size == 20
        assert "sluice_lazy_widget" in sys.modules
        assert widgets.get("crate") is sys.modules["sluice_lazy_widget"].Crate
        with pytest.raises(
            ConfigError, match="widget kind 'missing' cannot be loaded from 'sluice_lazy_widget:Missing'"
        ):
            widgets.get("missing")
    finally:
        sys.modules.pop("sluice_lazy_widget", None)


def test_the_openai_generator_is_imported_only_when_a_config_names_it():
    """generate.py names openai.py lazily: importing the contract pulls in neither it nor httpx (no cycle)."""
    code = (
        "import sys, tasks.generate as g\n"
        "assert 'tasks.llm.openai' not in sys.modules and 'httpx' not in sys.modules\n"
        "from tasks.llm.openai import OpenAIChat\n"
        "assert g.GENERATORS.get('openai') is OpenAIChat\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _union_names(annotation: object, key: str) -> set[str]:
    """The `key` literal of every member of a (possibly Annotated) config union."""
    union = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    members = [typing.get_args(m)[0] if typing.get_origin(m) is typing.Annotated else m for m in typing.get_args(union)]
    return {m.model_fields[key].default for m in members}


def test_every_kind_a_config_accepts_has_exactly_one_plug_in():
    from tasks.chunk import CHUNKERS
    from tasks.generate import GENERATORS
    from tasks.llm.balance import BALANCERS
    from tasks.retrieve import MODES
    from tasks.route import ROUTERS

    fields = PipelineConfig.model_fields
    assert set(CHUNKERS) == _union_names(fields["chunker"].annotation, "kind")
    assert set(ROUTERS) == _union_names(fields["routing"].annotation, "policy")
    assert set(GENERATORS) == _union_names(fields["generator"].annotation, "kind")
    assert set(MODES) == set(typing.get_args(RetrievalConfig.model_fields["mode"].annotation))
    assert set(BALANCERS) == set(typing.get_args(TierConfig.model_fields["balancer"].annotation))
