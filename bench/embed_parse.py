"""The two levers behind the first-ingest speed, each against what it replaced, interleaved and repeated.

    PYTHONPATH=$PWD .venv/bin/python bench/embed_parse.py [--docs 20] [--chunks 256] [--repeats 3]

- allocator: `Embedder.encode` of the same chunks in a fresh process, glibc's default malloc against
  `tasks.embed.keep_freed_tensor_memory` (the embedder's default). Reports wall, user and system
  seconds and minor page faults, and checks the vectors are bit-identical.
- parse: `parse_file` of the first covid_qa documents (one .txt each) with the offline NLP stand-in
  `tasks.parse._OfflineNLP` against the spaCy pipeline it replaced (blank English + sentencizer + the
  verb tagger), each in a fresh process, with language detection on as before; checks both give the
  same elements.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- children
def encode_child(variant: str, folder: str, chunks: int, out: str) -> dict:
    import numpy as np

    import tasks.embed as embed
    from sluice.config import PipelineConfig
    from tasks.chunk import make_chunker
    from tasks.parse import parse_file

    if variant == "glibc-default":
        embed.keep_freed_tensor_memory = lambda: False  # warm_up calls it through the module
    pipeline = PipelineConfig()
    embedder = embed.Embedder(pipeline.embedder)
    embedder.warm_up()
    chunker = make_chunker(pipeline.chunker)
    texts = [
        c.text for p in sorted(Path(folder).iterdir()) for c in chunker.split(parse_file(p, p.name, pipeline.parser))
    ]
    texts = texts[:chunks]
    embedder.encode(["warm up"])
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    vectors = embedder.encode(texts)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    np.save(out, vectors)
    return {
        "variant": variant,
        "chunks": len(texts),
        "seconds": seconds,
        "user_s": after.ru_utime - before.ru_utime,
        "system_s": after.ru_stime - before.ru_stime,
        "page_faults": after.ru_minflt - before.ru_minflt,
    }


def parse_child(variant: str, folder: str, out: str) -> dict:
    import tasks.parse as parse
    from sluice.config import PipelineConfig

    if variant == "spacy-pipeline":
        import spacy
        from spacy.language import Language

        @Language.component("bench_verb_tagger")
        def tagger(doc):
            for token in doc:
                token.tag_ = parse._tag(token.text)
            return doc

        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        nlp.add_pipe("bench_verb_tagger")
        parse._offline_nlp = lambda: nlp
        plain = parse._partition_plain

        def with_language_detection(path, text):  # as before: languages not given, so detected
            from unstructured.partition.text import partition_text

            return plain(path, text) if path.suffix.lower() != ".txt" else partition_text(text=text)

        parse._partition_plain = with_language_detection
    config = PipelineConfig().parser
    paths = sorted(Path(folder).iterdir())
    parse.parse_file(paths[0], "warm-up", config)  # imports before the clock
    start, cpu = time.perf_counter(), time.process_time()
    docs = [parse.parse_file(p, p.name, config) for p in paths]
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    Path(out).write_text(json.dumps([[(e.kind, e.start, e.end) for e in d.elements] + [d.text] for d in docs]))
    return {
        "variant": variant,
        "docs": len(docs),
        "chars": sum(len(d.text) for d in docs),
        "seconds": seconds,
        "cpu_s": cpu_s,
    }


def run(args: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


# ---------------------------------------------------------------- orchestration
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-parse", action="store_true")
    parser.add_argument("--skip-allocator", action="store_true")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, variant, folder, *rest = args.child
        sys.path.insert(0, str(ROOT))
        result = encode_child(variant, folder, int(rest[0]), rest[1]) if kind == "encode" else None
        print(json.dumps(result or parse_child(variant, folder, rest[0])))
        return
    from bench.paths import write_covid_txt

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        write_covid_txt(folder, args.docs)
        summary = {}
        if not args.skip_allocator:
            summary["allocator"] = allocator(folder, tmp, args.chunks, args.repeats)
        if not args.skip_parse:
            summary["parse"] = parsers(folder, tmp, args.repeats)
    print(json.dumps(summary, indent=2))


def alternate(pair: tuple[str, str], measure, same_output, repeats: int) -> dict:
    """Run baseline and candidate `repeats` times, alternating who goes first; speed-up = baseline ÷ candidate."""
    baseline, candidate = pair
    speedups, same = [], []
    for i in range(repeats):
        got = {v: measure(v) for v in (pair if i % 2 == 0 else pair[::-1])}
        speedups.append(got[baseline]["seconds"] / got[candidate]["seconds"])
        same.append(same_output())
    return {
        "speedups": [round(s, 2) for s in speedups],
        "median_speedup": round(statistics.median(speedups), 2),
        "same_output": all(same),
    }


def allocator(folder: Path, tmp: str, chunks: int, repeats: int) -> dict:
    """glibc's default malloc against keep_freed_tensor_memory, alternated; are the vectors bit-identical?"""
    import numpy as np

    def encode(variant: str) -> dict:
        return run(["--child", "encode", variant, str(folder), str(chunks), f"{tmp}/{variant}.npy"])

    def identical() -> bool:
        return np.array_equal(np.load(f"{tmp}/glibc-default.npy"), np.load(f"{tmp}/keep-freed.npy"))

    return alternate(("glibc-default", "keep-freed"), encode, identical, repeats)


def parsers(folder: Path, tmp: str, repeats: int) -> dict:
    """The spaCy pipeline against the offline NLP stand-in, alternated; do both give the same elements?"""

    def parse(variant: str) -> dict:
        return run(["--child", "parse", variant, str(folder), f"{tmp}/{variant}.json"])

    def same() -> bool:
        return Path(f"{tmp}/spacy-pipeline.json").read_text() == Path(f"{tmp}/offline-nlp.json").read_text()

    return alternate(("spacy-pipeline", "offline-nlp"), parse, same, repeats)


if __name__ == "__main__":
    main()
