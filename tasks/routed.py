"""Route, then generate: the two calls serving and evaluation make per question."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry import trace

from sluice.config import PipelineConfig
from tasks.embed import Embedder
from tasks.generate import Answer, AnswerStream, Generator, build_generator
from tasks.retrieve import Hit
from tasks.route import RouteDecision, Router, build_router


@dataclass
class RoutedAnswer:
    decision: RouteDecision
    stream: AnswerStream  # iterate for text; `.answer` afterwards (its `tier` may differ after a fallback)


@dataclass
class Answerer:
    """A config's router and generator, built once per process."""

    router: Router
    generator: Generator

    def answer(
        self,
        question: str,
        hits: list[Hit],
        vector: np.ndarray | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> RoutedAnswer:
        """Choose a tier (pass the query vector: re-embedding costs more than routing) and start generating."""
        with trace.get_tracer("sluice").start_as_current_span("route") as span:
            decision = self.router.route(question, hits, filters, vector)
            span.set_attribute("sluice.tier", decision.tier)
        return RoutedAnswer(decision, self.generator.generate(question, hits, decision.tier, vector))

    def close(self) -> None:
        """Close the generator's pooled HTTP connections, if it has any."""
        gateway = getattr(self.generator, "gateway", None)
        if gateway is not None:
            gateway.close()


def build_answerer(
    config: PipelineConfig,
    embedder: Embedder,
    data_dir: Path | None = None,
    state: Any = None,
    api_keys: Mapping[str, str] | None = None,
) -> Answerer:
    """Build the router and generator a pipeline config names (state: a GatewayState, shared per process)."""
    router = build_router(config.routing, embedder, data_dir)
    generator = build_generator(config.generator, embedder, state=state, api_keys=api_keys, data_dir=data_dir)
    return Answerer(router, generator)


def answerer_for(settings: Any, config: PipelineConfig, embedder: Embedder, state: Any = None) -> Answerer:
    """Build the config's Answerer with the settings' API keys and data dir (state: default from settings)."""
    from tasks.llm.state import make_state

    keys = {tier: key.get_secret_value() for tier, key in settings.llm_api_keys.items()}
    state = state if state is not None else make_state(settings.routing_state_url)
    return build_answerer(config, embedder, settings.data_dir, state, keys)


def routing_summary(answers: list[Answer], baseline_tier: str | None = None) -> dict[str, Any]:
    """Share of calls per tier, cost, latency over many answers (an evaluation report's routing columns).

    With `baseline_tier`, also the cost change against sending every question to that tier, priced
    at that tier's mean cost per answer here (so that tier must appear among the answers).
    """
    if not answers:
        return {"n": 0}
    tiers = sorted({a.tier for a in answers})
    cost = sum(a.cost_usd for a in answers)
    ttft = np.array([a.ttft_ms for a in answers])
    total = np.array([a.total_ms for a in answers])
    summary: dict[str, Any] = {
        "n": len(answers),
        "share": {t: sum(a.tier == t for a in answers) / len(answers) for t in tiers},
        "cost_usd": cost,
        "cost_per_answer_usd": cost / len(answers),
        "ttft_ms_p50": float(np.percentile(ttft, 50)),
        "latency_ms_p50": float(np.percentile(total, 50)),
        "latency_ms_p99": float(np.percentile(total, 99)),
        "fallbacks": sum(bool(a.attempts) for a in answers),
    }
    base = [a.cost_usd for a in answers if a.tier == baseline_tier]
    if baseline_tier is not None and base and np.mean(base) > 0:
        summary["cost_change_vs_" + baseline_tier] = cost / (np.mean(base) * len(answers)) - 1
    return summary
