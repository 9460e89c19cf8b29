"""The gateway: route one chat request to a replica of a tier, retry elsewhere, fall back, within a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from sluice.config import OpenAIGenerator, TierConfig
from sluice.errors import ConfigError, GenerationError
from tasks.llm.balance import BALANCERS
from tasks.llm.client import ReplicaError, auth_headers, chat_once, chat_stream, make_http_client
from tasks.llm.state import GatewayState, MemoryState


@dataclass
class Completion:
    text: str
    usage: dict[str, int] | None
    model: str
    tier: str
    replica: str
    ttft_s: float
    total_s: float
    attempts: list[str] = field(default_factory=list)  # "tier replica: reason" of each failed attempt


# Statuses that say the request is wrong (bad body, auth, too large), not the replica: no retry, no cooldown.
NOT_RETRYABLE = frozenset({400, 401, 403, 413, 422})


@dataclass
class _Progress:
    started: float
    limit: float  # this attempt's time budget ends here
    headers: dict[str, str]
    ttft: float | None = None
    replay: str = ""  # text the caller already has: this attempt's output must start with it (swallowed)
    sent: str = ""  # text this attempt passed on to the caller


@dataclass
class _Streamed:
    """What the caller has received so far in one request, and from which tier."""

    text: str = ""
    tier: str | None = None


class Gateway:
    """Send chat requests to a config's tiers of replicas: balanced, circuit-broken, retried, deadline-bound."""

    def __init__(
        self,
        config: OpenAIGenerator,
        state: GatewayState | None = None,
        http: httpx.Client | None = None,
        api_keys: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.state = state or MemoryState()
        self.http = http or make_http_client()
        keys = api_keys or {}
        self.headers = {name: auth_headers(keys.get(name), spec.key_header) for name, spec in config.tiers.items()}
        self.balancers = {name: BALANCERS.build(spec) for name, spec in config.tiers.items()}
        self.clock = clock

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self.http.close()

    def tier_order(self, tier: str) -> list[str]:
        """The routed tier first, then the configured fallbacks."""
        if tier not in self.config.tiers:
            raise ConfigError(f"tier {tier!r} is not declared: use one of {sorted(self.config.tiers)}")
        return [tier] + [t for t in self.config.fallback if t != tier]

    def chat(self, tier: str, messages: list[dict[str, str]]) -> Generator[str, None, Completion]:
        """Yield the answer's text pieces; return the completion. Raises GenerationError when all fail."""
        deadline = self.clock() + self.config.deadline_s
        failures: list[str] = []
        streamed = _Streamed()
        for name in self.tier_order(tier):
            if streamed.tier not in (None, name):  # another model would not replay the same text
                break
            tried: set[str] = set()
            for _ in range(self.config.attempts_per_tier):
                if self.clock() >= deadline:
                    raise GenerationError(_summary("deadline exceeded", self.config.deadline_s, failures))
                replica = self.pick(name, tried)
                if replica is None:
                    failures.append(f"{name}: every replica cooling down or already tried")
                    break
                tried.add(replica)
                try:
                    completion = yield from self._attempt(name, replica, messages, deadline, streamed)
                except ReplicaError as exc:
                    failures.append(f"{name} {replica}: {exc}")
                    continue
                if not completion.text.strip() and not streamed.text:
                    # The model had nothing to say (small local models do, on some prompts): not the replica's
                    # fault (no cooldown), and its other replicas would say the same. The next tier, else a
                    # GenerationError: the caller's fallback answers instead of an empty answer being served
                    # and cached.
                    failures.append(f"{name} {replica}: the model returned an empty answer")
                    break
                completion.attempts = failures
                return completion
        what = "failed mid-stream, no replica of its tier replayed it" if streamed.text else "every tier failed"
        raise GenerationError(_summary(what, self.config.deadline_s, failures))

    def pick(self, tier: str, tried: set[str]) -> str | None:
        """Choose a replica: a half-open one due for its probe first, else the balancer among closed ones."""
        spec = self.config.tiers[tier]
        candidates = [r for r in spec.replicas if r not in tried]
        now = self.clock()
        circuits = self.state.circuits(candidates, now)
        for replica, circuit in zip(candidates, circuits, strict=True):
            if circuit == "half_open" and self.state.try_probe(replica, now, spec.timeout_s):
                return replica
        closed = [r for r, c in zip(candidates, circuits, strict=True) if c == "closed"]
        if not closed:
            return None
        return self.balancers[tier].choose(tier, closed, self.state)

    def _attempt(
        self, tier: str, replica: str, messages: list[dict[str, str]], deadline: float, streamed: _Streamed
    ) -> Generator[str, None, Completion]:
        spec = self.config.tiers[tier]
        payload = _payload(spec, messages, self.config.temperature)
        started = self.clock()
        limit = started + min(spec.timeout_s, deadline - started)
        progress = _Progress(started, limit, self.headers[tier], replay=streamed.text)
        ticket = self.state.acquire(replica, progress.limit - started + 1.0)
        try:
            text, usage, model = yield from self._receive(replica, payload, progress)
        except ReplicaError as exc:
            if exc.status in NOT_RETRYABLE:  # the request itself is wrong: every replica would refuse it
                raise GenerationError(f"{tier} {replica} refused the request: {exc}. Not retried") from exc
            if not (exc.timeout and progress.limit < started + spec.timeout_s):
                self._failed(replica, exc.retry_after)  # a timeout the deadline imposed is not the replica's fault
            if progress.sent or streamed.text:
                self._after_partial(tier, replica, exc, progress, streamed)
            raise
        finally:
            self.state.release(replica, ticket)
        total = self.clock() - started
        self.state.observe_latency(replica, total)
        self.state.record_success(replica)
        ttft = total if progress.ttft is None else progress.ttft
        return Completion(text, usage, model or spec.model, tier, replica, ttft, total)

    def _receive(
        self, replica: str, payload: dict[str, Any], progress: _Progress
    ) -> Generator[str, None, tuple[str, dict[str, int] | None, str | None]]:
        timeout = progress.limit - progress.started
        if not self.config.stream:
            done = chat_once(self.http, replica, payload, timeout, progress.headers)
            if done.text:
                yield done.text
            return done.text, done.usage, done.model
        pieces: list[str] = []
        usage, model = None, None
        for chunk in chat_stream(self.http, replica, payload, timeout, progress.headers):
            if self.clock() > progress.limit:
                raise ReplicaError(f"response from {replica} exceeded its time budget")
            usage, model = chunk.usage or usage, chunk.model or model
            if chunk.text:
                pieces.append(chunk.text)
                fresh = _unseen(progress, chunk.text, replica)
                if not fresh:
                    continue
                if progress.ttft is None:
                    progress.ttft = self.clock() - progress.started
                progress.sent += fresh
                yield fresh
        if progress.replay:
            raise ReplicaError(f"{replica}'s replay ended before the text already streamed")
        return "".join(pieces), usage, model

    def _after_partial(
        self, tier: str, replica: str, exc: ReplicaError, progress: _Progress, streamed: _Streamed
    ) -> None:
        """Text already reached the caller: retry only as a replay (`resume_mid_stream`), else fail."""
        streamed.text += progress.sent
        streamed.tier = tier
        if not self.config.resume_mid_stream:  # a plain retry would send the caller the beginning again
            raise GenerationError(f"{tier} {replica} failed mid-stream: {exc}") from exc

    def _failed(self, replica: str, retry_after: float | None = None) -> None:
        breaker = self.config.breaker
        if retry_after is not None:
            # The replica said how long to stay away (429/503 + Retry-After): its circuit opens now, for that
            # long, shared by every process through the state; then one probe, as after any cooldown.
            self.state.record_failure(replica, self.clock(), 1, retry_after)
            return
        self.state.record_failure(replica, self.clock(), breaker.failure_threshold, breaker.cooldown_s)


def _unseen(progress: _Progress, text: str, replica: str) -> str:
    """The part of `text` the caller has not had yet; a replay that diverges from it cannot continue."""
    if not progress.replay:
        return text
    n = min(len(progress.replay), len(text))
    if text[:n] != progress.replay[:n]:
        raise GenerationError(f"{replica}'s replay diverged from the text already streamed: not resumed")
    progress.replay = progress.replay[n:]
    return text[n:]


def _payload(spec: TierConfig, messages: list[dict[str, str]], temperature: float) -> dict[str, Any]:
    payload = {"model": spec.model, "messages": messages, "max_tokens": spec.max_tokens, "temperature": temperature}
    if spec.stream_usage:
        payload["stream_options"] = {"include_usage": True}  # dropped by chat_once: not a streaming call
    return payload


def _summary(what: str, deadline_s: float, failures: list[str]) -> str:
    tried = "; ".join(failures) or "no attempt was made"
    return (
        f"{what} (deadline {deadline_s:g}s): {tried}. Check the replicas' URLs and health, "
        "or raise generator.deadline_s / add fallback tiers"
    )
