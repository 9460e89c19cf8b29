"""Routers: choose the tier (small or large model) for one question, and say why.

Each router has one method (`decide`); `Router.route` times it and logs the decision with its
reason on the `sluice.route` logger, so every routed request can be explained afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sluice.config import ClassifierRouting, RulesRouting, SingleRouting
from sluice.errors import ConfigError, RouterError
from sluice.registry import Registry
from tasks.retrieve import Hit

log = logging.getLogger("sluice.route")

_TYPES: list[tuple[str, re.Pattern[str]]] = [
    (
        "compare",
        re.compile(
            r"\b(compare|comparison|compared|difference|differences|differ|versus|vs\.?|better|worse|"
            r"contrast|pros and cons|advantages)\b|\bbetween\b.+\band\b",
            re.I,
        ),
    ),
    ("why", re.compile(r"\bwhy\b|\bfor what reason\b|\bwhat causes\b|\bcaused\b", re.I)),
    (
        "explain",
        re.compile(
            r"^\s*(explain|describe|discuss|summari[sz]e|outline|walk me through)\b|"
            r"^\s*how (does|do|did|can|could|should|would|is|are)\b|\bwhat happens\b|\bin detail\b",
            re.I,
        ),
    ),
    ("list", re.compile(r"^\s*(list|enumerate|name (all|every))\b|\bwhat are (all|the) (steps|ways|options)\b", re.I)),
]


def question_type(question: str) -> str:
    """Classify a question as compare, why, explain, list or (default) lookup."""
    for name, pattern in _TYPES:
        if pattern.search(question):
            return name
    return "lookup"


@dataclass(frozen=True)
class RouteDecision:
    tier: str
    policy: str
    reason: str
    elapsed_ms: float = 0.0
    score: float | None = None  # classifier: P(small tier suffices)


class Router(ABC):
    """One routing policy (`routing.policy`), built from its config."""

    def __init__(self, config: Any, embedder: Any = None, data_dir: Path | None = None):
        self.config = config

    @abstractmethod
    def decide(
        self, question: str, hits: list[Hit], filters: Mapping[str, Any] | None, vector: np.ndarray | None
    ) -> RouteDecision:
        """Pick the tier for `question` given its top-k `hits`, the query `filters` and its embedding."""

    def route(
        self,
        question: str,
        hits: list[Hit] | None = None,
        filters: Mapping[str, Any] | None = None,
        vector: np.ndarray | None = None,
    ) -> RouteDecision:
        """Decide, time the decision, and log it with its reason."""
        t0 = time.perf_counter()
        decision = self.decide(question, hits or [], filters, vector)
        elapsed = (time.perf_counter() - t0) * 1000
        log.info("route %s -> %s (%s) in %.3f ms", self.config.policy, decision.tier, decision.reason, elapsed)
        return RouteDecision(decision.tier, decision.policy, decision.reason, elapsed, decision.score)


ROUTERS: Registry[type[Router]] = Registry("routing policy", key="policy")


@ROUTERS.register("single")
class SingleRouter(Router):
    """Every question to the one configured tier."""

    config: SingleRouting

    def decide(self, question, hits, filters, vector) -> RouteDecision:
        return RouteDecision(self.config.tier, self.config.policy, "single tier configured")


@ROUTERS.register("rules")
class RulesRouter(Router):
    """Large tier when the question type, length or spread over documents calls for it."""

    config: RulesRouting

    def decide(self, question, hits, filters, vector) -> RouteDecision:
        c = self.config
        kind = question_type(question)
        words = len(question.split())
        documents = len({h.document_id for h in hits})
        narrowed = bool(filters) and c.filters_to_small
        facts = f"type={kind}, {words} words, {documents} documents{', filtered' if filters else ''}"
        if kind in c.large_question_types:
            return RouteDecision(c.large, c.policy, f"question type {kind!r} needs reasoning; {facts}")
        if words > c.max_small_words:
            return RouteDecision(c.large, c.policy, f"long question (> {c.max_small_words} words); {facts}")
        if documents > c.max_small_documents and not narrowed:
            why = f"top-k spans {documents} documents (> {c.max_small_documents}); {facts}"
            return RouteDecision(c.large, c.policy, why)
        return RouteDecision(c.small, c.policy, f"no rule fired; {facts}")


@dataclass(frozen=True)
class RouterModel:
    """A logistic regression on query embeddings: P(small tier suffices) = sigmoid(coef·x + intercept)."""

    coef: np.ndarray
    intercept: float
    threshold: float  # route to the large tier when P(small suffices) < threshold
    embedder_key: str
    meta: dict[str, Any]

    def p_small(self, vectors: np.ndarray) -> np.ndarray:
        """P(small tier suffices) per row."""
        return 1.0 / (1.0 + np.exp(-(vectors @ self.coef + self.intercept)))


def file_sha256(path: Path) -> str:
    """Hash of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_router_model(path: Path, sha256: str) -> RouterModel:
    """Load a trained router, refusing a file whose hash is not the one the config pins."""
    import json

    if not path.is_file():
        raise RouterError(f"router model {str(path)!r} does not exist: train one with `sluice router train`")
    actual = file_sha256(path)
    if actual != sha256:
        raise RouterError(
            f"router model {str(path)!r} has sha256 {actual[:12]}…, the config pins {sha256[:12]}…: "
            "retrain, or put the matching model_path/model_sha256 in the config"
        )
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return RouterModel(data["coef"], float(data["intercept"]), float(data["threshold"]), meta["embedder"], meta)


@ROUTERS.register("classifier")
class ClassifierRouter(Router):
    """Large tier when the classifier doubts the small tier (P(small suffices) below the calibrated threshold)."""

    config: ClassifierRouting

    def __init__(self, config: ClassifierRouting, embedder: Any = None, data_dir: Path | None = None):
        super().__init__(config)
        path = Path(config.model_path)
        if not path.is_absolute() and data_dir is not None:
            path = Path(data_dir) / path
        self.model = load_router_model(path, config.model_sha256)
        if embedder is None:
            raise ConfigError("routing policy 'classifier' needs the embedder: pass it to build_router")
        if self.model.embedder_key != embedder.identity.key:
            raise RouterError(
                f"router model {str(path)!r} was trained on embedder {self.model.embedder_key}, "
                f"the pipeline uses {embedder.identity.key}: retrain with `sluice router train`"
            )
        self.encode: Callable[[list[str]], np.ndarray] = embedder.encode

    def decide(self, question, hits, filters, vector) -> RouteDecision:
        x = self.encode([question])[0] if vector is None else vector
        p = float(self.model.p_small(x[None, :])[0])
        tier = self.config.small if p >= self.model.threshold else self.config.large
        return RouteDecision(
            tier, self.config.policy, f"P(small suffices)={p:.2f} vs threshold {self.model.threshold:.2f}", 0.0, p
        )


def build_router(config: Any, embedder: Any = None, data_dir: Path | None = None) -> Router:
    """Build the router a routing config names (the classifier needs the embedder it was trained with)."""
    return ROUTERS.build(config, embedder=embedder, data_dir=data_dir)
