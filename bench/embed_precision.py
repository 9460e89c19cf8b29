"""Embedder precision and backend: torch float32 against bfloat16 autocast, int8 dynamic quantisation and
ONNX Runtime (float32 fused graph, int8), interleaved.

    SLUICE_DATASETS_DIR=/work/shared/data PYTHONPATH=$PWD .venv/bin/python bench/embed_precision.py \
        [--docs 40] [--throughput-chunks 256] [--repeats 3] [--candidates float32,onnx-float32]

One process, one `Embedder` per candidate (the packaged all-MiniLM-L6-v2, `EmbedderConfig.precision` and
`.backend`; ONNX graphs exported once into Settings.data_dir, outside the clock).
- throughput: the same chunks encoded by each precision in turn, the order rotated every repeat;
  chunks/s and the ratio of medians against float32.
- agreement: every chunk of the corpus (data/sample parsed and chunked, plus the first --docs covid_qa
  articles when the datasets setting is present) encoded by each precision; cosine to float32, min/mean.
- retrieval: covid_qa questions of those articles against their chunks, exact cosine top 10 (no HNSW,
  so only the vectors differ), nDCG@10 as the evaluation scores it (`evals.metrics.ndcg_at_k`); the
  delta against float32.
The bar (issue 18): cosine >= 0.999 to float32 and nDCG@10 within 0.005. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evals.gold import load_covid_qa  # noqa: E402
from evals.metrics import RetrievedSpan, ndcg_at_k  # noqa: E402
from sluice.config import EmbedderConfig, PipelineConfig  # noqa: E402
from sluice.errors import ConfigError  # noqa: E402
from sluice.hardware import cpu_flags, native_bf16  # noqa: E402
from sluice.settings import load_settings  # noqa: E402
from tasks.chunk import make_chunker  # noqa: E402
from tasks.embed import Embedder  # noqa: E402
from tasks.ingest_text import text_document  # noqa: E402
from tasks.parse import parse_file  # noqa: E402

CANDIDATES = {  # name -> embedder config; "float32" (torch) is the baseline every other is compared with
    "float32": EmbedderConfig(precision="float32"),
    "bfloat16": EmbedderConfig(precision="bfloat16"),
    "int8": EmbedderConfig(precision="int8"),
    "onnx-float32": EmbedderConfig(backend="onnx"),
    "onnx-int8": EmbedderConfig(backend="onnx", precision="int8"),
}
MIN_COSINE, MAX_NDCG_DROP = 0.999, 0.005


def corpus(docs: int) -> tuple[list, list, list]:
    """(sample chunks, covid_qa chunks, covid_qa gold items); covid_qa is empty without the datasets setting."""
    pipeline = PipelineConfig()
    chunker = make_chunker(pipeline.chunker)
    folder = ROOT / "data/sample/corpus"
    sample = [c for p in sorted(folder.iterdir()) for c in chunker.split(parse_file(p, p.name, pipeline.parser))]
    try:
        texts, items = load_covid_qa(load_settings().dataset_path("covid_qa"), max_docs=docs)
    except ConfigError as exc:
        print(f"covid_qa skipped: {exc}", file=sys.stderr)
        return sample, [], []
    covid = [(t.source_id, c) for t in texts for c in chunker.split(text_document(t.source_id, t.text))]
    return sample, covid, items


def throughput(embedders: dict[str, Embedder], texts: list[str], repeats: int) -> dict[str, list[float]]:
    """Chunks/s of each precision over the same texts, interleaved, order rotated per repeat."""
    rates: dict[str, list[float]] = {p: [] for p in embedders}
    names = list(embedders)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            embedders[name].encode(texts)
            rates[name].append(len(texts) / (time.perf_counter() - start))
    return rates


def ndcg10(vectors: np.ndarray, spans: list, queries: np.ndarray, items: list) -> float:
    """Mean nDCG@10 of exact cosine top 10 (vectors are unit length)."""
    top = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    scores = []
    for row, item in zip(top, items, strict=True):
        hits = [RetrievedSpan(spans[i][0], spans[i][1].start, spans[i][1].end) for i in row]
        scores.append(ndcg_at_k(hits, item, 10))
    return float(np.mean(scores))


def verdicts(rates: dict, vectors: dict, questions: dict, n_sample: int, covid: list, items: list) -> dict:
    """Per precision: speed against float32, cosine to float32, nDCG@10 and its delta, and the bar's verdict."""
    base, results = statistics.median(rates["float32"]), {}
    for p in rates:
        cos = np.sum(vectors[p] * vectors["float32"], axis=1)
        row = {
            "chunks_per_s": [round(r, 1) for r in rates[p]],
            "speed_vs_fp32": round(statistics.median(rates[p]) / base, 3),
            "cosine_min": round(float(cos.min()), 5),
            "cosine_mean": round(float(cos.mean()), 6),
        }
        row["passes_bar"] = row["cosine_min"] >= MIN_COSINE
        if items:
            row["ndcg_at_10"] = round(ndcg10(vectors[p][n_sample:], covid, questions[p], items), 4)
            row["ndcg_delta"] = round(row["ndcg_at_10"] - results.get("float32", row)["ndcg_at_10"], 4)
            row["passes_bar"] = row["passes_bar"] and row["ndcg_delta"] >= -MAX_NDCG_DROP
        results[p] = row
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=40, help="covid_qa articles (chunks and their questions)")
    ap.add_argument("--throughput-chunks", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--candidates", default=",".join(CANDIDATES), help=f"of {', '.join(CANDIDATES)}")
    args = ap.parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]
    names = ["float32"] + [n for n in args.candidates.split(",") if n != "float32"]
    data_dir = load_settings().data_dir
    embedders = {n: Embedder(CANDIDATES[n], cache_dir=data_dir) for n in names}
    for e in embedders.values():
        e.warm_up()
        e.encode(["warm up"])
    sample, covid, items = corpus(args.docs)
    texts = [c.embed_text for c in sample] + [c.embed_text for _, c in covid]
    rates = throughput(embedders, texts[: args.throughput_chunks], args.repeats)
    vectors = {p: e.encode(texts) for p, e in embedders.items()}
    questions = {p: e.encode([i.question for i in items]) for p, e in embedders.items()} if items else {}
    out = {
        "cpu_bf16": native_bf16(),
        "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx"))),
        "chunks": len(texts),
        "covid_chunks": len(covid),
        "questions": len(items),
        "load_average_start_end": [load_start, [round(x, 2) for x in os.getloadavg()]],
        "throughput_chunks": min(len(texts), args.throughput_chunks),
    }
    out["results"] = verdicts(rates, vectors, questions, len(sample), covid, items)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
