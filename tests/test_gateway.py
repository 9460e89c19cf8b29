"""The LLM gateway against real local HTTP servers speaking the OpenAI chat-completions protocol."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from sluice.config import OpenAIGenerator
from sluice.errors import GenerationError
from tasks.llm.gateway import Gateway
from tasks.llm.state import MemoryState, RedisState
from tests.fake_openai import Behaviour, FakeOpenAI

MESSAGES = [{"role": "user", "content": "How long is the warranty?"}]
REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture()
def servers():
    started: list[FakeOpenAI] = []

    def make(n: int, **behaviour) -> list[FakeOpenAI]:
        new = [FakeOpenAI(Behaviour(**behaviour)).start() for _ in range(n)]
        started.extend(new)
        return new

    yield make
    for server in started:
        server.stop()


def _config(tiers: dict, **kw) -> OpenAIGenerator:
    return OpenAIGenerator(tiers=tiers, **kw)


def _tier(servers: list[FakeOpenAI], model: str = "small-model", **kw) -> dict:
    return {"model": model, "replicas": [s.url for s in servers], **kw}


def _call(gateway: Gateway, tier: str = "small"):
    chat = gateway.chat(tier, MESSAGES)
    pieces = []
    while True:
        try:
            pieces.append(next(chat))
        except StopIteration as stop:
            return "".join(pieces), stop.value


@pytest.fixture(params=["memory", "redis"])
def state(request):
    if request.param == "memory":
        yield MemoryState()
        return
    shared = RedisState.from_url(REDIS_URL, prefix=f"sluice:test:{uuid.uuid4().hex[:8]}")
    try:
        shared.r.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis at {REDIS_URL} is not reachable: {exc}")
    yield shared
    shared.reset()


def test_round_robin_spreads_evenly(servers, state):
    replicas = servers(3)
    gateway = Gateway(_config({"small": _tier(replicas, balancer="round_robin")}), state)
    for _ in range(30):
        text, completion = _call(gateway)
        assert text == completion.text and "[1]" in text
    assert [s.stats.requests for s in replicas] == [10, 10, 10]


@pytest.mark.parametrize("balancer", ["least_outstanding", "latency_ewma"])
def test_load_aware_balancers_avoid_a_slow_replica(servers, balancer):
    fast = servers(2, latency_s=0.02)
    slow = servers(1, latency_s=0.2)[0]
    gateway = Gateway(_config({"small": _tier([*fast, slow], balancer=balancer)}))
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: _call(gateway), range(48)))
    # Round robin would send 16 of 48 to the slow replica.
    assert slow.stats.requests <= 8, [s.stats.requests for s in (*fast, slow)]
    assert sum(s.stats.requests for s in (*fast, slow)) == 48


def test_latency_ewma_ejects_a_slow_outlier_but_still_samples_it(servers, state):
    fast = servers(2, latency_s=0.005)
    slow = servers(1, latency_s=0.25)[0]
    gateway = Gateway(_config({"small": _tier([*fast, slow], balancer="latency_ewma")}), state)
    for _ in range(110):
        _call(gateway)
    # One request to learn its latency, then one per 100 to let it recover (load spikes on this shared
    # machine can add one or two); round robin would send 37.
    assert 1 <= slow.stats.requests <= 4, slow.stats.requests
    assert state.latencies([slow.url])[0] > 3 * max(state.latencies([s.url for s in fast]))


def test_failing_replica_is_cooled_down_then_recovered_by_a_probe(servers, state):
    good, bad = servers(2)
    bad.behaviour.fail_status = 500
    breaker = {"failure_threshold": 2, "cooldown_s": 0.3}
    config = _config({"small": _tier([good, bad], balancer="round_robin")}, breaker=breaker)
    # The gateway's clock stands still unless moved, so a loaded machine cannot end the cooldown early.
    now = [time.time()]
    gateway = Gateway(config, state, clock=lambda: now[0])
    for _ in range(10):
        _, completion = _call(gateway)  # every call succeeds: a failed attempt is retried on the good replica
        assert completion.replica == good.url
    assert bad.stats.requests == 2, "the circuit should open after 2 consecutive failures"
    assert state.circuits([bad.url], now[0]) == ["open"]
    bad.behaviour.fail_status = None
    now[0] += 0.35
    assert state.circuits([bad.url], now[0]) == ["half_open"]
    _, probe = _call(gateway)
    assert probe.replica == bad.url and bad.stats.requests == 3
    assert state.circuits([bad.url], now[0]) == ["closed"]
    for _ in range(4):
        _call(gateway)
    assert bad.stats.requests == 5, "a recovered replica takes its round-robin share again"


@pytest.mark.parametrize("header", ["30", "http-date"])
def test_retry_after_keeps_a_rate_limited_replica_out_for_that_long(servers, state, header):
    """A 429 with Retry-After benches the replica at once (not after failure_threshold failures) for the
    time it asked, in the state every process shares; then one probe takes it back."""
    from email.utils import formatdate

    good, limited = servers(2)
    now = [time.time()]
    value = "30" if header == "30" else formatdate(now[0] + 30, usegmt=True)
    limited.behaviour.fail_status, limited.behaviour.retry_after = 429, value
    breaker = {"failure_threshold": 5, "cooldown_s": 1000}  # the default path would take 5 failures and 1000 s
    config = _config({"small": _tier([good, limited], balancer="round_robin")}, breaker=breaker)
    gateway = Gateway(config, state, clock=lambda: now[0])
    for _ in range(6):
        _, completion = _call(gateway)  # the 429 is retried on the good replica: every call succeeds
        assert completion.replica == good.url
    assert limited.stats.requests == 1, "one 429 with Retry-After is enough to stay away"
    now[0] += 25
    assert state.circuits([limited.url], now[0]) == ["open"]
    now[0] += 6  # past the 30 s it asked for (an HTTP date has whole seconds: allow one more)
    limited.behaviour.fail_status = None
    assert state.circuits([limited.url], now[0]) == ["half_open"]
    _, probe = _call(gateway)
    assert probe.replica == limited.url and limited.stats.requests == 2


def test_retry_after_values():
    from tasks.llm.client import retry_after_s

    assert retry_after_s("12") == 12.0 and retry_after_s(" 1.5 ") == 1.5
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0  # in the past: no wait
    assert retry_after_s("99999") == 600.0  # clamped
    assert retry_after_s(None) is None and retry_after_s("soon") is None and retry_after_s("-5") is None


def test_a_failed_probe_reopens_the_circuit(servers):
    good, bad = servers(2, fail_status=None)
    bad.behaviour.fail_status = 500
    state = MemoryState()
    config = _config(
        {"small": _tier([good, bad], balancer="round_robin")}, breaker={"failure_threshold": 2, "cooldown_s": 0.2}
    )
    gateway = Gateway(config, state)
    for _ in range(4):
        _call(gateway)
    assert bad.stats.requests == 2
    time.sleep(0.25)
    _, completion = _call(gateway)  # the probe fails, the request is retried on the good replica
    assert completion.replica == good.url and bad.stats.requests == 3
    assert state.circuits([bad.url], time.time()) == ["open"], "one failed probe is enough to reopen"


def test_cooldown_is_shared_between_gateways_through_redis(servers):
    good, bad = servers(2)
    bad.behaviour.fail_status = 503
    prefix = f"sluice:test:{uuid.uuid4().hex[:8]}"
    config = _config({"small": _tier([good, bad], balancer="round_robin")}, breaker={"failure_threshold": 1})
    worker_a = Gateway(config, RedisState.from_url(REDIS_URL, prefix))
    worker_b = Gateway(config, RedisState.from_url(REDIS_URL, prefix))
    try:
        for _ in range(3):
            _call(worker_a)
        assert bad.stats.requests == 1
        for _ in range(6):
            assert _call(worker_b)[1].replica == good.url
        assert bad.stats.requests == 1, "worker B must see the cooldown worker A recorded"
    finally:
        worker_a.state.reset()


def test_falls_back_to_another_tier_within_the_deadline(servers):
    small = servers(2, latency_s=1.0)  # slower than the per-attempt timeout
    large = servers(1)
    config = _config(
        {
            "small": _tier(small, timeout_s=0.1),
            "large": _tier(large, model="large-model"),
        },
        fallback=("large",),
        deadline_s=1.0,
    )
    t0 = time.perf_counter()
    _, completion = _call(Gateway(config))
    elapsed = time.perf_counter() - t0
    assert completion.tier == "large" and completion.model == "large-model"
    assert len(completion.attempts) == 2 and all("timeout" in a for a in completion.attempts)
    assert elapsed < 1.0


def test_deadline_bounds_a_request_when_every_tier_fails(servers):
    small = servers(1, latency_s=0.5)
    (large,) = servers(1, fail_status=500)
    config = _config(
        {"small": _tier(small, timeout_s=5), "large": _tier([large])},
        fallback=("large",),
        deadline_s=0.25,
    )
    t0 = time.perf_counter()
    with pytest.raises(GenerationError, match="deadline"):
        _call(Gateway(config))
    assert time.perf_counter() - t0 < 0.6
    assert large.stats.requests == 0, "the deadline was spent on the small tier"


def test_non_streaming_mode_and_http_errors_are_retried(servers):
    flaky, steady = servers(2)
    flaky.behaviour.fail_next = 1
    config = _config({"small": _tier([flaky, steady], balancer="round_robin")}, stream=False)
    text, completion = _call(Gateway(config))
    assert text == steady.behaviour.text
    assert completion.usage["completion_tokens"] == 8
    assert completion.attempts and "HTTP 500" in completion.attempts[0]


def test_a_stream_broken_after_text_was_sent_is_not_retried(servers):
    broken, steady = servers(2)
    broken.behaviour.drop_after = 3
    gateway = Gateway(_config({"small": _tier([broken, steady], balancer="round_robin")}))
    chat = gateway.chat("small", MESSAGES)
    received = []
    with pytest.raises(GenerationError, match="mid-stream"):
        for piece in chat:
            received.append(piece)
    assert received == ["Returns", " are", " accepted"]  # the caller keeps what it got, nothing duplicated
    assert steady.stats.requests == 0


def test_resume_mid_stream_replays_on_another_replica_and_sends_only_the_rest(servers):
    broken, steady = servers(2)
    broken.behaviour.drop_after = 3
    config = _config({"small": _tier([broken, steady], balancer="round_robin")}, resume_mid_stream=True)
    text, completion = _call(Gateway(config))
    assert text == steady.behaviour.text  # the caller saw the answer once: its first three tokens not repeated
    assert completion.replica == steady.url and completion.text == steady.behaviour.text
    assert len(completion.attempts) == 1 and broken.url in completion.attempts[0]


def test_resume_mid_stream_refuses_a_replay_that_diverges(servers):
    broken, other = servers(2)
    broken.behaviour.drop_after = 3
    other.behaviour.text = "Returns are refused after 45 days [1] ."
    config = _config({"small": _tier([broken, other], balancer="round_robin")}, resume_mid_stream=True)
    received = []
    with pytest.raises(GenerationError, match="diverged"):
        for piece in Gateway(config).chat("small", MESSAGES):
            received.append(piece)
    assert "".join(received) == "Returns are accepted"  # what the caller had, and nothing of the other text


def test_a_request_every_replica_would_refuse_fails_fast_without_cooldown(servers):
    replicas = servers(2, fail_status=400)
    state = MemoryState()
    gateway = Gateway(_config({"small": _tier(replicas)}, breaker={"failure_threshold": 1}), state)
    with pytest.raises(GenerationError, match="refused the request: HTTP 400"):
        _call(gateway)
    assert sum(s.stats.requests for s in replicas) == 1
    assert state.circuits([s.url for s in replicas], time.time()) == ["closed", "closed"]


def test_redis_in_flight_leases_expire_when_a_worker_dies_mid_request():
    state = RedisState.from_url(REDIS_URL, prefix=f"sluice:test:{uuid.uuid4().hex[:8]}")
    try:
        kept = state.acquire("http://r1", lease_s=30)
        state.acquire("http://r1", lease_s=0.1)  # never released: its process "died"
        assert state.inflight(["http://r1", "http://r2"]) == [2, 0]
        time.sleep(0.15)
        assert state.inflight(["http://r1"]) == [1]
        state.release("http://r1", kept)
        assert state.inflight(["http://r1"]) == [0]
    finally:
        state.reset()


def test_keys_go_only_to_their_tier_in_the_header_it_expects(servers):
    (own,) = servers(1)
    (azure,) = servers(1)
    config = _config(
        {
            "small": _tier([own]),
            "large": {
                "model": "gpt4o",
                "replicas": [azure.url.removesuffix("/v1") + "/openai/deployments/gpt4o?api-version=2024-10-21"],
                "key_header": "api-key",
            },
        }
    )
    gateway = Gateway(config, api_keys={"large": "azure-secret"})
    _call(gateway, "small")
    _call(gateway, "large")
    (own_path, own_headers), (azure_path, azure_headers) = own.stats.requests_seen[0], azure.stats.requests_seen[0]
    assert own_path == "/v1/chat/completions" and "authorization" not in own_headers and "api-key" not in own_headers
    assert azure_headers["api-key"] == "azure-secret" and "authorization" not in azure_headers
    assert azure_path == "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"


def test_a_timeout_imposed_by_the_deadline_does_not_cool_the_replica_down(servers):
    (slow,) = servers(1, latency_s=0.3)
    state = MemoryState()
    config = _config({"small": _tier([slow], timeout_s=5)}, deadline_s=0.1, breaker={"failure_threshold": 1})
    with pytest.raises(GenerationError):
        _call(Gateway(config, state))
    assert state.circuits([slow.url], time.time()) == ["closed"]


def test_an_empty_answer_moves_on_to_the_next_tier_without_cooling_the_replica_down(servers):
    empty, large = servers(2, text=""), servers(1)
    config = _config({"small": _tier(empty), "large": _tier(large, model="large-model")}, fallback=("large",))
    gateway = Gateway(config)
    text, completion = _call(gateway)
    assert completion.tier == "large" and text == "Returns are accepted within 45 days [1] ."
    assert [a.split(": ", 1)[1] for a in completion.attempts] == ["the model returned an empty answer"]
    assert sum(s.stats.requests for s in empty) == 1, "another replica of the same model would say the same"
    assert gateway.state.circuits([s.url for s in empty], time.time()) == ["closed", "closed"]


def test_only_empty_answers_raise_so_the_caller_falls_back(servers):
    (blank,) = servers(1, text="   \n ")
    with pytest.raises(GenerationError, match="empty answer"):
        _call(Gateway(_config({"small": _tier([blank])})))
