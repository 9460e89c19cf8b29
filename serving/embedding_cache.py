"""An in-process LRU of text embeddings in front of the worker's embedder (query + sentence vectors)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from serving import metrics
from tasks.embed import Embedder


class CachingEmbedder:
    """Delegates to an `Embedder`, encoding only texts not seen recently."""

    def __init__(self, inner: Embedder, max_items: int = 20_000):
        self.inner = inner
        self.max_items = max_items
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # identity, config, tokenizer, warm_up

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed texts, serving repeats from the cache."""
        with self._lock:
            found = {t: self._items[t] for t in texts if t in self._items}
            for t in found:
                self._items.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        metrics.EMBED_CACHE.labels("hit").inc(len(texts) - len(missing))
        metrics.EMBED_CACHE.labels("miss").inc(len(missing))
        if missing:
            fresh = dict(zip(missing, self.inner.encode(missing), strict=True))
            with self._lock:
                self._items.update(fresh)
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
            found.update(fresh)
        if not texts:
            return self.inner.encode([])
        return np.stack([found[t] for t in texts])
