"""Synthetic chunks for tests and benchmarks: random unit vectors, realistic overlapping metadata."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np

from sluice.config import EmbedderConfig, PipelineConfig
from sluice.db import Database
from tasks.bulk import bulk_load_records
from tasks.embed import EmbedderIdentity
from tasks.records import Record

DIM = 384
SYNTHETIC = PipelineConfig(embedder=EmbedderConfig(model="synthetic-random-unit", dim=DIM, precision="float32"))
IDENTITY = EmbedderIdentity("synthetic-random-unit", "0" * 64, DIM, True)
AUTHORS = [f"author-{i}" for i in range(20)]
SECTIONS = ["intro", "methods", "results", "discussion", "appendix"]
COLLECTIONS = ["default", "legal", "eng"]
VOCAB = [f"term{i}" for i in range(2000)]


def new_space(name: str, dim: int = DIM) -> tuple[PipelineConfig, EmbedderIdentity]:
    """A new embedding space (its own index id) for `dim`-d synthetic vectors: a test's private index."""
    model = f"synthetic-{name}-{uuid.uuid4().hex[:8]}"
    config = PipelineConfig(embedder=EmbedderConfig(model=model, dim=dim, precision="float32"))
    return config, EmbedderIdentity(model, "0" * 64, dim, True)


def unit_vectors(n: int, rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    """n random unit vectors (float32)."""
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def clustered_vectors(n: int, rng: np.random.Generator, cluster_size: int = 50, dim: int = DIM) -> np.ndarray:
    """n unit vectors in clusters of about `cluster_size`, like text embeddings (neighbours at cosine ~0.6)."""
    return clustered_around(unit_vectors(max(1, n // cluster_size), rng, dim), n, rng)


def clustered_around(centers: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors, each near one of `centers` picked at random (cosine ~0.8 to it)."""
    noise = rng.standard_normal((n, centers.shape[1])).astype(np.float32) * (0.8 / np.sqrt(centers.shape[1]))
    v = centers[rng.integers(0, len(centers), size=n)] + noise
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def near_queries(vectors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n query vectors near random stored vectors (a question near some passage)."""
    picks = vectors[rng.integers(0, len(vectors), size=n)]
    v = picks + rng.standard_normal(picks.shape).astype(np.float32) * (0.8 / np.sqrt(picks.shape[1]))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_records(n: int, rng: np.random.Generator, prefix: str = "doc", start: int = 0) -> list[Record]:
    """n one-chunk records numbered from `start`; doc.pct is 1% selective per value, doc.permille 0.1%."""
    words = rng.integers(0, len(VOCAB), size=(n, 30))
    records = []
    for i in range(start, start + n):
        meta = {
            "author": AUTHORS[int(rng.integers(len(AUTHORS)))],
            "year": int(rng.integers(2000, 2025)),
            "pct": i % 100,
            "permille": i % 1000,
            "team": {"name": SECTIONS[i % len(SECTIONS)]},
        }
        if i % 10:
            meta["lang"] = ["en", "de", "fr"][i % 3]
        chunk_meta = {"page": int(rng.integers(1, 50)), "section": SECTIONS[int(rng.integers(len(SECTIONS)))]}
        text = " ".join(VOCAB[j] for j in words[i - start])
        records.append(Record(f"{prefix}-{i:07d}", text, meta, chunk_meta, COLLECTIONS[i % len(COLLECTIONS)]))
    return records


def load_synthetic(
    db: Database, tenant: str, n: int, seed: int, clustered: bool = False, batch: int = 5000
) -> tuple[list[Record], np.ndarray]:
    """Bulk-load n records into `tenant`'s synthetic index (`tasks.bulk`); return the records and their vectors."""
    rng = np.random.default_rng(seed)
    records = make_records(n, rng, prefix=tenant)
    vectors = clustered_vectors(n, rng) if clustered else unit_vectors(n, rng)
    bulk_load_records(db, tenant, SYNTHETIC, IDENTITY, records, vectors, batch=batch)
    return records, vectors


def synthetic_batches(
    tenant: str, n: int, seed: int, batch: int = 5000, start: int = 0
) -> Iterator[tuple[list[Record], np.ndarray]]:
    """A tenant's n clustered records in batches from record `start` (a multiple of `batch`), one batch in memory.

    Each batch draws from its own seeded generator, so a load resumed at any batch yields the same set.
    """
    if start % batch:
        raise ValueError(f"start {start} is not a multiple of batch {batch}: resume at a batch boundary")
    centers = unit_vectors(max(1, n // 50), np.random.default_rng([seed, 0]))
    for b, first in enumerate(range(0, n, batch)):
        if first >= start:
            rng = np.random.default_rng([seed, b + 1])
            count = min(batch, n - first)
            yield make_records(count, rng, prefix=tenant, start=first), clustered_around(centers, count, rng)
