"""Hybrid fusion of ranked hit lists (`retrieval.fusion`): one `fuse` method per strategy, and a registry.

Both strategies take the same weighted rankings (dense and BM25, each `candidates` long) and return the
top k with the fused score; ties go to the smaller chunk id, so a fusion is deterministic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any, Protocol

from sluice.config import RetrievalConfig
from sluice.registry import Registry


class Hit(Protocol):
    """What fusion reads of a hit (tasks.retrieve.Hit, a frozen dataclass: `replace` sets the fused score)."""

    chunk_id: int
    score: float


Rankings = list[tuple[list[Any], float]]  # (hits best first, weight)


class Fusion(ABC):
    """One way to merge weighted rankings into one."""

    def __init__(self, config: RetrievalConfig):
        self.config = config

    @abstractmethod
    def fuse(self, rankings: Rankings, k: int) -> list[Hit]:
        """The top k hits of the merged ranking, each carrying its fused score."""


FUSIONS: Registry[type[Fusion]] = Registry("hybrid fusion", key="fusion")


def _top(scores: dict[int, float], first: dict[int, Hit], k: int) -> list[Hit]:
    order = sorted(scores, key=lambda cid: (-scores[cid], cid))[:k]
    return [replace(first[cid], score=scores[cid], mode="hybrid") for cid in order]


@FUSIONS.register("rrf")
class ReciprocalRank(Fusion):
    """Reciprocal-rank fusion: sum of weight / (rrf_k + rank) over the rankings a chunk appears in."""

    def fuse(self, rankings: Rankings, k: int) -> list[Hit]:
        scores: dict[int, float] = {}
        first: dict[int, Hit] = {}
        for hits, weight in rankings:
            for rank, hit in enumerate(hits, 1):
                scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight / (self.config.rrf_k + rank)
                first.setdefault(hit.chunk_id, hit)
        return _top(scores, first, k)


@FUSIONS.register("convex")
class ConvexCombination(Fusion):
    """Weighted mean of min-max normalised scores; a chunk absent from a ranking scores 0 there.

    Min-max over each ranking's candidates puts cosine similarity and unbounded BM25 on one [0, 1] scale
    (a ranking whose candidates all score alike gives each of them 1).
    """

    def fuse(self, rankings: Rankings, k: int) -> list[Hit]:
        total = sum(weight for _, weight in rankings) or 1.0
        scores: dict[int, float] = {}
        first: dict[int, Hit] = {}
        for hits, weight in rankings:
            if not hits:
                continue
            low, high = min(h.score for h in hits), max(h.score for h in hits)
            for hit in hits:
                norm = (hit.score - low) / (high - low) if high > low else 1.0
                scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight * norm / total
                first.setdefault(hit.chunk_id, hit)
        return _top(scores, first, k)


def fuse(rankings: Rankings, config: RetrievalConfig, k: int) -> list[Hit]:
    """Merge weighted rankings with the config's fusion; keep k."""
    return FUSIONS.build(config).fuse(rankings, k)
