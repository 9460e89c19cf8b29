"""Route, then generate: the two calls serving and evaluation make per question."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sluice.config import PipelineConfig
from tasks.embed import Embedder
from tasks.generate import AnswerStream, Generator, build_generator
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
        decision = self.router.route(question, hits, filters, vector)
        return RoutedAnswer(decision, self.generator.generate(question, hits, decision.tier))


def build_answerer(
    config: PipelineConfig,
    embedder: Embedder,
    data_dir: Path | None = None,
    state: Any = None,
    api_key: str | None = None,
) -> Answerer:
    """Build the router and generator a pipeline config names (state: a GatewayState, shared per process)."""
    router = build_router(config.routing, embedder, data_dir)
    return Answerer(router, build_generator(config.generator, embedder, state=state, api_key=api_key))
