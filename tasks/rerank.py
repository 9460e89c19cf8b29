"""The rerank stage: re-score retrieval's fused candidates with a model that reads query and chunk together.

`rerank: {kind: cross_encoder, model, top_n}` asks retrieval for `top_n` candidates (whatever its mode
and fusion), scores each (question, chunk) pair in batches and keeps the config's `k` best. The model
is loaded once per process (`get_reranker`), never at import, and its identity (name and weights
hash) is recorded with what it ranked, as the embedder's is.

No cross-encoder weights ship with Sluice and none can be downloaded at run time: `model` is a local
folder, or a hub id already in the local Hugging Face cache. Its quality is unmeasured here.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import psycopg

from sluice.config import CrossEncoderRerank, PipelineConfig, RerankConfig
from sluice.errors import ConfigError
from sluice.registry import Registry
from tasks.embed import weights_hash
from tasks.retrieve import Hit, retrieve


@dataclass(frozen=True)
class RerankerIdentity:
    model: str
    weights_hash: str

    @property
    def key(self) -> str:
        """Short form for logs, tags and query results."""
        return f"{self.model}@{self.weights_hash[:16]}"


class Reranker(ABC):
    """Re-order retrieval candidates for a question (`rerank.kind`)."""

    def __init__(self, config: RerankConfig):
        self.config = config

    @property
    @abstractmethod
    def identity(self) -> RerankerIdentity:
        """The model that ranks (loaded if needed)."""

    @abstractmethod
    def rerank(self, question: str, hits: list[Hit]) -> list[Hit]:
        """The hits best first, each carrying the reranker's score."""


RERANKERS: Registry[type[Reranker]] = Registry("rerank kind", key="kind")


def resolve_reranker_path(model: str) -> Path:
    """A cross-encoder on disk: a local folder, or a hub id found in the local cache (never downloaded)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # not cached, or not a valid id: one answer for both
        raise ConfigError(
            f"rerank model {model!r} is neither a local folder nor in the local Hugging Face cache: save a "
            "sentence-transformers CrossEncoder to a folder (CrossEncoder.save_pretrained) and name that folder"
        ) from None


@RERANKERS.register("cross_encoder")
class CrossEncoderReranker(Reranker):
    """A sentence-transformers CrossEncoder scoring (question, chunk) pairs in batches."""

    config: CrossEncoderRerank

    def __init__(self, config: CrossEncoderRerank):
        super().__init__(config)
        self._model = None
        self._identity: RerankerIdentity | None = None
        self._lock = threading.Lock()  # one load; one predict at a time (its tokenizer is not thread-safe)

    def warm_up(self) -> None:
        """Load the model and hash its weights (once)."""
        with self._lock:
            if self._model is not None:
                return
            from sentence_transformers import CrossEncoder

            path = resolve_reranker_path(self.config.model)
            self._identity = RerankerIdentity(self.config.model, weights_hash(path))
            self._model = CrossEncoder(str(path), device="cpu", local_files_only=True)

    @property
    def identity(self) -> RerankerIdentity:
        self.warm_up()
        assert self._identity is not None
        return self._identity

    def scores(self, question: str, texts: list[str]) -> np.ndarray:
        """The model's score of each (question, text) pair, texts cut at `max_chars`."""
        self.warm_up()
        if not texts:
            return np.zeros(0, dtype=np.float32)
        pairs = [(question, t[: self.config.max_chars]) for t in texts]
        with self._lock:
            out = self._model.predict(pairs, batch_size=self.config.batch_size, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts))

    def rerank(self, question: str, hits: list[Hit]) -> list[Hit]:
        scores = self.scores(question, [h.text for h in hits])
        order = sorted(range(len(hits)), key=lambda i: (-float(scores[i]), i))  # ties keep retrieval's order
        return [replace(hits[i], score=float(scores[i])) for i in order]


@lru_cache(maxsize=4)
def get_reranker(config: RerankConfig) -> Reranker:
    """The process-wide reranker for a config: one model load per process."""
    return RERANKERS.build(config)


def search(
    conn: psycopg.Connection, config: PipelineConfig, question: str, query_vector: np.ndarray, filters: dict | None
) -> list[Hit]:
    """The config's top-k for a question: retrieval, then the rerank stage over its `top_n` candidates when set."""
    if config.rerank is None:
        return retrieve(conn, config.index_id, question, query_vector, config.retrieval, filters)
    wide = config.retrieval.model_copy(update={"k": max(config.retrieval.k, config.rerank.top_n)})
    candidates = retrieve(conn, config.index_id, question, query_vector, wide, filters)
    return get_reranker(config.rerank).rerank(question, candidates)[: config.retrieval.k]
