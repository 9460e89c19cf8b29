"""The embedder's `backend: onnx`: the model exported locally to ONNX and run by ONNX Runtime.

Nothing is downloaded: the graph is traced from the packaged weights on first use and cached under
the data dir as `onnx/<weights hash>-<precision>-v<RECIPE>.onnx`, so a swapped model or a changed recipe
is another file. float32 is the traced graph with ONNX Runtime's BERT fusions (attention, GELU, skip
layer norm); int8 quantises the weights of the linear layers per channel (`INT8_KEEP_FLOAT` stay float).
Tokenising, truncation to the model's window, mean pooling and normalisation match sentence-transformers.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from sluice.errors import ConfigError

log = logging.getLogger(__name__)

RECIPE = 1  # bump when the export or quantisation changes the vectors (another cache file)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# MatMuls int8 leaves in float32: the attention products of two activations (no weights to quantise).
# Keeping more float (the feed-forward projections) raised the cosine only to 0.996 (docs/benchmarks.md).
INT8_KEEP_FLOAT = ("attention/self/MatMul",)


def onnx_file(model_dir: Path, weights: str, precision: str, cache_dir: Path | None) -> Path:
    """The cached ONNX graph of `model_dir` at `precision`, built once (atomically: workers may race)."""
    folder = Path(cache_dir or Path(tempfile.gettempdir()) / "sluice-onnx") / "onnx"
    target = folder / f"{weights[:16]}-{precision}-v{RECIPE}.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    log.info("embedder backend onnx: exporting %s (%s) to %s, once", model_dir.name, precision, target)
    with tempfile.TemporaryDirectory(dir=folder) as work:
        traced = export_float32(model_dir, Path(work) / "traced.onnx")
        built = Path(work) / "built.onnx"
        if precision == "int8":
            quantise_int8(traced, built)
        else:
            fuse(traced, built, model_dir)
        os.replace(built, target)
    return target


def export_float32(model_dir: Path, out: Path) -> Path:
    """Trace the transformer (eager attention, so ONNX Runtime recognises it) to an ONNX graph."""
    import torch
    from transformers import AutoModel

    class _Hidden(torch.nn.Module):  # positional inputs in `INPUTS` order, the last hidden state out
        def __init__(self):
            super().__init__()
            self.model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

        def forward(self, input_ids, attention_mask, token_type_ids):
            kwargs = {"attention_mask": attention_mask, "token_type_ids": token_type_ids, "return_dict": True}
            return self.model(input_ids=input_ids, **kwargs).last_hidden_state

    example = tuple(torch.ones((2, 8), dtype=torch.long) for _ in INPUTS)
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it fixes; the axes above stay dynamic
        torch.onnx.export(
            _Hidden(), example, str(out), input_names=list(INPUTS), output_names=["last_hidden_state"],
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip
    return out


def fuse(traced: Path, out: Path, model_dir: Path) -> None:
    """ONNX Runtime's transformer fusions, saved as a float32 graph."""
    import json

    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((model_dir / "config.json").read_text())
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    optimize_model(str(traced), model_type="bert", num_heads=heads, hidden_size=hidden).save_model_to_file(str(out))


def quantise_int8(traced: Path, out: Path) -> None:
    """Dynamic int8: weights per output channel, activations per batch, `INT8_KEEP_FLOAT` MatMuls kept float."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(traced), load_external_data=False).graph
    keep = [n.name for n in graph.node if n.op_type == "MatMul" and any(k in n.name for k in INT8_KEEP_FLOAT)]
    quantize_dynamic(str(traced), str(out), per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=keep)


class OnnxEncoder:
    """Run a cached ONNX graph on tokenised batches; mean-pool over the attention mask like the model's Pooling."""

    def __init__(self, path: Path, tokenizer, window: int, threads: int):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # a core dependency: only a broken install lacks it
            raise ConfigError("embedder backend 'onnx' needs onnxruntime: run `make setup`") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Spinning idle threads steal the cores the ingest's other work (parse, Postgres) runs on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer, self.window = tokenizer, window

    def encode(self, texts: list[str], batch_size: int, dim: int, normalize: bool) -> np.ndarray:
        """Float32 rows of `dim` components, longest texts batched together (as sentence-transformers does)."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.empty((len(texts), dim), dtype=np.float32)
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            vectors[rows] = self._batch([texts[i] for i in rows])[:, :dim]
        if normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def _batch(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.window, return_tensors="np")
        feeds = {name: tokens[name].astype(np.int64) for name in INPUTS}
        hidden = self.session.run(None, feeds)[0]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        return (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
