"""What this CPU can do natively, for choosing the embedder's precision (`EmbedderConfig.precision`)."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

# The precision `auto` picks where the CPU runs it natively (docs/benchmarks.md, "Embedding precision").
# bfloat16 passed the quality bar (cosine >= 0.999 to float32, covid_qa nDCG@10 within 0.005) but only
# CPUs with bf16 dot-product instructions run it faster than float32; elsewhere it is emulated and slower.
AUTO_CANDIDATE = "bfloat16"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU has bf16 dot-product instructions (AVX-512 BF16 or AMX)."""
    return any(f in (cpu_flags() if flags is None else flags) for f in BF16_FLAGS)


@lru_cache(maxsize=4)
def resolve_precision(precision: str, flags: frozenset[str] | None = None) -> str:
    """The concrete precision for `precision`: `auto` becomes bfloat16 on bf16 hardware, else float32 (logged)."""
    if precision != "auto":
        return precision
    if AUTO_CANDIDATE == "bfloat16" and not native_bf16(flags):
        log.info("embedder precision auto: this CPU lacks %s, using float32", "/".join(BF16_FLAGS))
        return "float32"
    return AUTO_CANDIDATE
