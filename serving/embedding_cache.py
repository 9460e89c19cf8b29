"""The worker's embedding LRU (query + sentence vectors), counting hits and misses for /metrics."""

from __future__ import annotations

from sluice import metrics
from tasks.embed import CachingEmbedder as _CachingEmbedder
from tasks.embed import Embedder


def _count(hits: int, misses: int) -> None:
    metrics.EMBED_CACHE.labels("hit").inc(hits)
    metrics.EMBED_CACHE.labels("miss").inc(misses)


class CachingEmbedder(_CachingEmbedder):
    """`tasks.embed.CachingEmbedder` that reports its lookups to Prometheus."""

    def __init__(self, inner: Embedder, max_items: int = 20_000):
        super().__init__(inner, max_items, on_lookup=_count)
