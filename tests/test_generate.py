"""Generators behind one contract: streamed text, then an answer with usage, TTFT, tokens/s and cost."""

from __future__ import annotations

import pytest

from sluice.config import ExtractiveGenerator, OpenAIGenerator, parse_config
from sluice.errors import ConfigError
from tasks.generate import NO_ANSWER, build_generator, extractive_answer
from tasks.llm.openai import build_messages
from tasks.retrieve import Hit
from tests.fake_openai import Behaviour, FakeOpenAI

HITS = [
    Hit(
        1,
        10,
        "warranty-terms.md",
        0,
        80,
        "Carbon fibre frames carry a lifetime warranty for the original owner.",
        0.8,
        "i",
    ),
    Hit(
        2,
        11,
        "returns-policy.md",
        0,
        90,
        "Unridden bikes can be returned within 45 days of delivery for a refund.",
        0.7,
        "i",
    ),
]
PRICES = {"small-model": {"input_per_mtok": 1.0, "output_per_mtok": 4.0}}


@pytest.fixture()
def fake():
    with FakeOpenAI(Behaviour(latency_s=0.05, token_delay_s=0.01, text="Returns take 45 days [2] .")) as server:
        yield server


def _openai(fake: FakeOpenAI, **kw) -> OpenAIGenerator:
    return OpenAIGenerator(tiers={"small": {"model": "small-model", "replicas": [fake.url]}}, prices=PRICES, **kw)


def test_openai_stream_records_ttft_tokens_cost_and_citations(fake, embedder):
    generator = build_generator(_openai(fake), embedder)
    stream = generator.generate("How long do returns take?", HITS, "small")
    pieces = list(stream)
    answer = stream.answer
    assert len(pieces) == 6 and "".join(pieces) == answer.text
    assert answer.usage.prompt_tokens == 100 and answer.usage.completion_tokens == 6 and not answer.usage.estimated
    assert answer.ttft_ms >= 50 and answer.total_ms >= answer.ttft_ms + 40  # 5 gaps of 10 ms after the first
    assert 0 < answer.tokens_per_s < 6 / 0.04
    assert answer.cost_usd == pytest.approx((100 * 1.0 + 6 * 4.0) / 1e6)
    assert [c.source_id for c in answer.citations] == ["returns-policy.md"]
    assert answer.model == "small-model" and answer.tier == "small" and answer.replica == fake.url


def test_usage_is_counted_with_the_embedder_tokenizer_when_absent(fake, embedder):
    fake.behaviour.report_usage = False
    answer = build_generator(_openai(fake, stream=False), embedder).generate("Returns?", HITS).collect()
    assert answer.usage.estimated
    expected = len(embedder.tokenizer.encode(answer.text, add_special_tokens=False))
    assert answer.usage.completion_tokens == expected > 0
    assert answer.usage.prompt_tokens > 20  # system prompt + two passages
    assert answer.cost_usd > 0
    assert answer.tokens_per_s is None  # one piece: no decode interval was measured


def test_stream_usage_can_be_switched_off_for_servers_that_reject_it(fake, embedder):
    config = OpenAIGenerator(tiers={"small": {"model": "m", "replicas": [fake.url], "stream_usage": False}})
    answer = build_generator(config, embedder).generate("Returns?", HITS).collect()
    assert answer.usage.estimated and answer.usage.completion_tokens > 0


def test_prompt_numbers_contexts_and_asks_for_citations():
    messages = build_messages("Why?", HITS, max_chars=100)
    user = messages[1]["content"]
    assert "[1] (source: warranty-terms.md)" in user and "[2]" in user
    assert "square brackets" in messages[0]["content"]
    assert len(user) < 100 + 200  # context trimmed to the budget


def test_extractive_streams_sentences_with_the_same_answer_as_before(embedder):
    config = ExtractiveGenerator(max_sentences=2)
    qvec = embedder.encode(["How long is the frame warranty?"])[0]
    stream = build_generator(config, embedder).generate("How long is the frame warranty?", HITS)
    pieces = list(stream)
    answer = stream.answer
    assert len(pieces) == 2 and answer.text == "".join(pieces)
    assert answer.text == extractive_answer(qvec, HITS, embedder, config).text
    assert answer.citations[0].source_id == "warranty-terms.md"
    assert answer.cost_usd == 0 and answer.model == "extractive" and answer.usage.completion_tokens > 10
    assert answer.tokens_per_s is None  # sentences picked, not decoded: no generation speed
    assert build_generator(config, embedder).generate("x", []).collect().text == NO_ANSWER


def test_config_rejects_routing_to_undeclared_tiers():
    tiers = {"small": {"model": "s", "replicas": ["http://127.0.0.1:1/v1"]}}
    with pytest.raises(ConfigError, match="large"):
        parse_config({"routing": {"policy": "rules"}, "generator": {"kind": "openai", "tiers": tiers}})
    with pytest.raises(ConfigError, match="needs generator kind 'openai'"):
        parse_config({"routing": {"policy": "rules"}})
    with pytest.raises(ConfigError, match="fallback"):
        parse_config(
            {"generator": {"kind": "openai", "tiers": tiers, "fallback": ["nope"]}, "routing": {"tier": "small"}}
        )


@pytest.mark.parametrize("said", ["", " \n "])
def test_an_empty_model_answer_is_replaced_by_the_extractive_one(embedder, said):
    with FakeOpenAI(Behaviour(text=said)) as blank:
        generator = build_generator(_openai(blank, fallback_extractive=True), embedder)
        stream = generator.generate("How long do returns take?", HITS, "small")
        streamed = "".join(stream)
    answer = stream.answer
    assert answer.tier == "extractive" and answer.cost_usd == 0
    assert answer.text.strip() and streamed.strip().endswith(answer.text.strip())
    assert "empty answer" in answer.attempts[0]
