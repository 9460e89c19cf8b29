"""Serving with a routed LLM config, end to end: real worker process, real Redis, two fake-OpenAI tiers.

The worker answers through the config's Answerer: the rules router picks a tier, the gateway balances
over that tier's replicas (state in Redis), falls back to the large tier, and the response says who
answered, on which replica, how fast and at what cost. Streaming relays the generator's own tokens.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
import zlib

import pytest
import redis
import yaml

from serving.auth import create_key
from sluice.config import load_config
from sluice.settings import PROJECT_ROOT
from tests.conftest import SAMPLE
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.serving_support import TEST_REDIS


def _own_redis() -> str:
    """A Redis db apart from serving_support's (and from 0 and 15), so no other module's worker takes our tasks."""
    base = int(TEST_REDIS.rsplit("/", 1)[1])
    db = 1 + zlib.crc32(f"{PROJECT_ROOT}:routed".encode()) % 14
    return f"redis://127.0.0.1:6379/{db if db != base else db % 14 + 1}"


ROUTED_REDIS = _own_redis()
SMALL_TEXT = "Unridden bikes can be returned within 45 days [1] ."
LARGE_TEXT = "Returns are limited to 45 days because used bikes cannot be resold as new [1] [2] ."
PRICES = {
    "small-m": {"input_per_mtok": 1, "output_per_mtok": 2},
    "large-m": {"input_per_mtok": 10, "output_per_mtok": 30},
}
LOOKUP = "How many days do I have to return a bike?"
WHY = "Why are returns limited to 45 days?"


@pytest.fixture(scope="module")
def tiers():
    small = [FakeOpenAI(Behaviour(text=SMALL_TEXT, prompt_tokens=120)).start() for _ in range(2)]
    # Spaced tokens, so a streamed answer visibly arrives in pieces.
    large = FakeOpenAI(Behaviour(text=LARGE_TEXT, prompt_tokens=150, token_delay_s=0.05)).start()
    yield small, large
    for fake in (*small, large):
        fake.stop()


@pytest.fixture(scope="module")
def routed_settings(migrated, tiers, tmp_path_factory):
    small, large = tiers
    redis.Redis.from_url(ROUTED_REDIS).flushdb()
    body = {
        "name": "routed-serving-test",
        "routing": {"policy": "rules", "max_small_documents": 10},
        "generator": {
            "kind": "openai",
            "fallback": ["large"],
            "deadline_s": 20,
            "breaker": {"failure_threshold": 2, "cooldown_s": 300},
            "tiers": {
                "small": {"model": "small-m", "replicas": [f.url for f in small], "balancer": "round_robin"},
                "large": {"model": "large-m", "replicas": [large.url]},
            },
            "prices": PRICES,
        },
    }
    path = tmp_path_factory.mktemp("routed-config") / "pipeline.yaml"
    path.write_text(yaml.safe_dump(body))
    update = {
        "broker_url": ROUTED_REDIS,
        "routing_state_url": ROUTED_REDIS,
        "config_path": path,
        "serve_champion": False,
        "answer_cache": False,
        "rate_limit_per_s": 1000.0,
        "rate_limit_burst": 1000.0,
    }
    return migrated.model_copy(update=update)


@pytest.fixture(scope="module")
def api(routed_settings, start_stack):
    return start_stack(routed_settings)


@pytest.fixture(scope="module")
def key(db, routed_settings, embedder, tmp_path_factory):
    """A tenant holding two sample documents (ingested directly: this module tests answering)."""
    from sluice.db import create_tenant
    from tasks.ingest import ingest_source

    tenant = f"routed-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    corpus = tmp_path_factory.mktemp("routed-corpus")
    for name in ("returns-policy.md", "warranty-terms.md"):
        shutil.copy(SAMPLE / "corpus" / name, corpus / name)
    config = load_config(routed_settings.config_path)
    summary = ingest_source(db, tenant, config, embedder, corpus, routed_settings.max_file_bytes)
    assert summary.ingested == 2, summary.errors
    return tenant, create_key(db, tenant).secret


def _ask(api, key: tuple[str, str], question: str) -> dict:
    with api.client(key[1]) as client:
        response = client.post("/v1/query", json={"question": question})
    assert response.status_code == 200, response.text
    return response.json()


def test_rules_route_each_question_to_its_tier_and_report_the_cost(api, key, tiers):
    small, large = tiers
    lookup, why = _ask(api, key, LOOKUP), _ask(api, key, WHY)
    assert (lookup["model_tier"], lookup["answer"]) == ("small", SMALL_TEXT)
    assert (why["model_tier"], why["answer"]) == ("large", LARGE_TEXT)
    gen = lookup["generation"]
    assert gen["model"] == "small-m" and gen["replica"] in {f.url for f in small}
    assert gen["route"]["policy"] == "rules" and "no rule fired" in gen["route"]["reason"]
    assert why["generation"]["route"]["reason"].startswith("question type 'why'")
    # Usage as the servers reported it (one token per streamed word), priced per model.
    words_small, words_large = len(SMALL_TEXT.split(" ")), len(LARGE_TEXT.split(" "))
    assert (gen["prompt_tokens"], gen["completion_tokens"], gen["tokens_estimated"]) == (120, words_small, False)
    assert gen["cost_usd"] == pytest.approx((120 * 1 + words_small * 2) / 1e6)
    assert why["generation"]["cost_usd"] == pytest.approx((150 * 10 + words_large * 30) / 1e6)
    assert 0 < gen["ttft_ms"] <= gen["total_ms"]
    assert gen["tokens_per_s"] > 0  # streamed word by word: a decode speed was measured
    # The [n] markers cite the retrieved chunks they number.
    assert lookup["citations"] and lookup["citations"][0]["document"] in {"returns-policy.md", "warranty-terms.md"}
    assert large.stats.models[-1] == "large-m" and small[0].stats.models + small[1].stats.models == ["small-m"]


def test_small_tier_is_balanced_with_state_shared_in_redis(api, key, tiers):
    small, _ = tiers
    before = [f.stats.requests for f in small]
    for _ in range(4):
        assert _ask(api, key, LOOKUP)["model_tier"] == "small"
    spread = [f.stats.requests - b for f, b in zip(small, before, strict=True)]
    assert spread == [2, 2]
    # The round-robin position lives in Redis, where every worker process reads and advances it.
    # (the small tier's key by name: the large tier has one too once a large question was routed)
    position = redis.Redis.from_url(ROUTED_REDIS).get("sluice:gateway:rr:small")
    assert position is not None and int(position) == 5


def test_streaming_relays_the_generators_tokens(api, key):
    with api.client(key[1]) as client, client.stream("POST", "/v1/query", json={"question": WHY, "stream": True}) as r:
        assert r.status_code == 200
        events = [e for e in r.read().decode().split("\n\n") if e]
    names = [e.split("\n", 1)[0].removeprefix("event: ") for e in events]
    tokens = [json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: token")]
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert names[0] == "accepted" and names[-1] == "done"
    assert "".join(tokens) == done["answer"] == LARGE_TEXT
    # The first event is the model's first token, published as it arrived, not the whole answer
    # cut into sentences afterwards.
    assert tokens[0] == "Returns" and len(tokens) > 2
    assert done["generation"]["ttft_ms"] < done["generation"]["total_ms"]


def test_failing_small_tier_falls_back_to_large_and_cools_down_in_redis(api, key, tiers):
    from tasks.llm.state import RedisState

    small, large = tiers
    for fake in small:
        fake.behaviour.fail_status = 500
    try:
        body = _ask(api, key, LOOKUP)
        gen = body["generation"]
        assert (body["model_tier"], gen["route"]["tier"], gen["model"]) == ("large", "small", "large-m")
        assert len(gen["attempts"]) == 2 and all("small" in a for a in gen["attempts"])
        assert body["answer"] == LARGE_TEXT
        _ask(api, key, LOOKUP)  # a second failure on each small replica opens its circuit (threshold 2)
        circuits = RedisState.from_url(ROUTED_REDIS).circuits([f.url for f in small], time.time())
        assert circuits == ["open", "open"]
        failed = sum(f.stats.failures for f in small)
        third = _ask(api, key, LOOKUP)
        assert third["model_tier"] == "large" and sum(f.stats.failures for f in small) == failed  # skipped
    finally:
        for fake in small:
            fake.behaviour.fail_status = None


def test_cli_query_answers_through_the_same_routed_path(routed_settings, key, tiers, cli):
    _, large = tiers
    before = large.stats.requests
    args = ["query", WHY, "--tenant", key[0], "--config", str(routed_settings.config_path), "--json"]
    out = cli(*args)
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout)
    assert body["answer"] == LARGE_TEXT and body["generation"]["model"] == "large-m"
    assert body["generation"]["route"]["policy"] == "rules" and large.stats.requests == before + 1


def test_default_extractive_config_still_answers(db, embedder, tmp_path):
    """The default config through the same path: extractive, tier `default`, streamed, no LLM."""
    from sluice.config import PipelineConfig
    from sluice.db import create_tenant
    from tasks.answer import answer_question
    from tasks.ingest import ingest_source

    tenant = f"extr-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    shutil.copy(SAMPLE / "corpus" / "returns-policy.md", tmp_path / "returns-policy.md")
    assert ingest_source(db, tenant, PipelineConfig(), embedder, tmp_path, 10**7).ingested == 1
    pieces: list[str] = []
    result = answer_question(db, tenant, PipelineConfig(), embedder, LOOKUP, on_piece=pieces.append)
    assert result.answer.model == "extractive" and result.answer.tier == "default"
    assert result.route is not None and result.route.policy == "single"
    assert "".join(pieces) == result.answer.text and result.answer.citations
    assert result.answer.citations[0].source_id == "returns-policy.md"
