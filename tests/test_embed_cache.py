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


_FAULTS = """
import json, resource
import torch
from tasks.embed import keep_freed_tensor_memory, release_freed_memory

layer = torch.nn.Linear(384, 1536)  # one feed-forward layer of all-MiniLM-L6-v2

def faults():  # page faults of one pass over batches sorted by length, as model.encode runs them
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        for length in range(32, 257, 16):
            hidden = layer(torch.ones(64, length, 384))
            del hidden
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()  # first pass: every process takes its pages from the kernel once
# Steady state: the fewest faults of three passes (a pass the kernel disturbs, e.g. by reclaiming pages
# under another process's memory pressure, is not what the allocator setting decides).
default = min(faults() for _ in range(3))
applied = keep_freed_tensor_memory()
faults()
tuned = min(faults() for _ in range(3))

def rss_mb():
    status = open("/proc/self/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024

kept = rss_mb()
release_freed_memory()
print(json.dumps({"default": default, "applied": applied, "tuned": tuned, "released_mb": kept - rss_mb()}))
"""


def _fault_counts(**env: str) -> dict:
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import PROJECT_ROOT

    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    done = subprocess.run(
        [sys.executable, "-c", _FAULTS], env={**clean, **env}, cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_freed_batch_buffers_are_reused_instead_of_faulted_in_again():
    counts = _fault_counts()
    assert counts["applied"] is True
    assert counts["default"] > 50_000  # glibc unmapped every buffer on free: the next batch faulted it in again
    assert counts["tuned"] < counts["default"] / 10
    assert counts["released_mb"] > 50  # the kept buffers go back to the kernel between large encode calls


def test_allocator_tuning_is_left_to_a_user_who_set_it():
    counts = _fault_counts(MALLOC_TRIM_THRESHOLD_="131072")
    assert counts["applied"] is False


def test_a_long_encode_runs_in_slices_with_every_vector_in_its_place():
    """Past one slice (4 model batches) the embedder sorts, slices and trims; rows must come back in order."""
    from sluice.config import EmbedderConfig
    from tasks.embed import SLICE_BATCHES, get_embedder

    # float32: under bfloat16 a row moves by ~1e-3 with its batch's padding, which slicing changes on purpose.
    embedder = get_embedder(EmbedderConfig(precision="float32"))
    embedder.warm_up()

    assert embedder._trim, "the allocator tuning is on by default (no MALLOC_* variables set)"
    texts = [f"Sentence {i} is about {'masks ' * (i % 7)}and ventilation {i * 7 % 13}." for i in range(300)]
    assert len(texts) > embedder.batch_size * SLICE_BATCHES
    sliced = embedder.encode(texts)
    whole = embedder._encode(texts)  # one model call over the whole list
    np.testing.assert_allclose(sliced, whole, atol=1e-5)
    assert not np.allclose(sliced[0], sliced[1], atol=1e-3)  # distinct texts, distinct rows


def test_a_smaller_dim_is_the_packaged_model_truncated_another_space(embedder):
    from sluice.config import EmbedderConfig
    from tasks.embed import Embedder

    short = Embedder(EmbedderConfig(dim=256))
    texts = ["Masks reduce droplet spread.", "Ventilation matters indoors."]
    vectors = short.encode(texts)
    assert vectors.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # normalised after truncation
    full = embedder.encode(texts)[:, :256]
    np.testing.assert_allclose(vectors, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5)
    assert short.identity.dim == 256 and short.identity.key != embedder.identity.key  # its own cache and index
