"""Route then generate, end to end: rules router + openai generator on two fake-OpenAI tiers."""

from __future__ import annotations

import pytest

from sluice.config import PipelineConfig, parse_config
from sluice.errors import ConfigError
from tasks.llm.state import MemoryState, RedisState, make_state
from tasks.routed import build_answerer, routing_summary
from tests.fake_openai import Behaviour, FakeOpenAI, two_tiers
from tests.test_generate import HITS

PRICES = {"small-m": {"output_per_mtok": 1}, "large-m": {"output_per_mtok": 10}}


@pytest.fixture()
def tiers():
    with (
        FakeOpenAI(Behaviour(text="Small says 45 days [2] .")) as small,
        FakeOpenAI(Behaviour(text="Large explains it at length [1] [2] .")) as large,
    ):
        yield small, large


def test_rules_route_each_question_to_its_tier_and_the_answer_says_so(tiers, embedder):
    small, large = tiers
    config = parse_config(
        {
            "routing": {"policy": "rules"},
            "generator": two_tiers(small, large, ("small-m", "large-m"), PRICES),
        }
    )
    answerer = build_answerer(config, embedder, state=MemoryState())
    lookup = answerer.answer("How many days do I have to return a bike?", HITS)
    why = answerer.answer("Why are returns limited to 45 days?", HITS)
    a, b = lookup.stream.collect(), why.stream.collect()
    assert (lookup.decision.tier, a.tier, a.model) == ("small", "small", "small-m")
    assert (why.decision.tier, b.tier, b.model) == ("large", "large", "large-m")
    assert small.stats.models == ["small-m"] and large.stats.models == ["large-m"]
    assert b.cost_usd > a.cost_usd > 0
    assert [c.source_id for c in b.citations] == ["warranty-terms.md", "returns-policy.md"]
    summary = routing_summary([a, b, a, a], baseline_tier="large")
    assert summary["share"] == {"large": 0.25, "small": 0.75}
    # Large answers have 8 tokens at 10 $/Mtok, small ones 6 at 1 $/Mtok.
    assert summary["cost_usd"] == pytest.approx((3 * 6 * 1 + 8 * 10) / 1e6)
    assert summary["cost_change_vs_large"] == pytest.approx((3 * 6 + 80) / (4 * 80) - 1)


def test_default_config_answers_extractively(embedder):
    routed = build_answerer(PipelineConfig(), embedder).answer("How long is the frame warranty?", HITS)
    answer = routed.stream.collect()
    assert routed.decision.policy == "single" and answer.model == "extractive"
    assert answer.citations[0].source_id == "warranty-terms.md"


def test_state_factory():
    assert isinstance(make_state(None), MemoryState)
    assert isinstance(make_state("redis://127.0.0.1:6379/15"), RedisState)
    with pytest.raises(ConfigError, match="not a Redis URL"):
        make_state("http://127.0.0.1:6379")
