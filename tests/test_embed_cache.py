"""The in-process embedding LRU: repeats are served from the cache, vectors equal the model's."""

import numpy as np

from tasks.embed import CachingEmbedder


def test_repeats_are_not_re_embedded_and_vectors_match(embedder):
    seen: list[tuple[int, int]] = []
    cached = CachingEmbedder(embedder, max_items=3, on_lookup=lambda h, m: seen.append((h, m)))
    texts = ["Masks reduce droplet spread.", "Ventilation matters indoors.", "Masks reduce droplet spread."]
    before = embedder.encoded
    first = cached.encode(texts)
    assert embedder.encoded - before == 2  # the repeated sentence is embedded once
    again = cached.encode(texts[:2])
    assert embedder.encoded - before == 2
    assert seen == [(1, 2), (2, 0)]
    np.testing.assert_allclose(first, embedder.encode(texts), atol=1e-5)
    np.testing.assert_array_equal(again, first[:2])


def test_least_recently_used_is_evicted(embedder):
    cached = CachingEmbedder(embedder, max_items=2)
    cached.encode(["one sentence here", "two sentence here"])
    cached.encode(["one sentence here"])  # refresh "one"
    cached.encode(["three sentence here"])  # evicts "two"
    before = embedder.encoded
    cached.encode(["one sentence here", "two sentence here"])
    assert embedder.encoded - before == 1
    assert cached.hits == 2 and cached.misses == 4
