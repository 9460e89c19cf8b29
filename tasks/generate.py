"""Answer generators behind one contract: `generate(question, contexts, tier) -> AnswerStream`.

Iterating the stream yields text as it is produced; once exhausted, `stream.answer` carries the
whole result (text, citations, token usage, model, tier, TTFT, tokens/s, cost). The built-in
`extractive` generator needs no LLM; `openai` (tasks/llm/openai.py, imported only when a config names
it) calls chat-completions replicas.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Generator as Gen
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sluice.config import ExtractiveGenerator
from sluice.registry import Registry
from tasks.embed import Embedder
from tasks.pricing import count_tokens
from tasks.retrieve import Hit
from tasks.text import sentence_spans

MIN_ANSWER_WORDS = 5
NO_ANSWER = "No relevant passage was found in the indexed documents."


@dataclass(frozen=True)
class Citation:
    source_id: str
    document_id: str  # public id (UUID), never the internal key
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # True when the endpoint reported no usage and we counted with the embedder's tokenizer
    # (a different vocabulary than the LLM's: an estimate, within ~20% for English).
    estimated: bool = False


@dataclass(frozen=True)
class Answer:
    text: str
    citations: tuple[Citation, ...]
    usage: Usage = Usage()
    model: str = "extractive"
    tier: str = "default"
    replica: str = ""
    ttft_ms: float = 0.0
    total_ms: float = 0.0
    tokens_per_s: float | None = None  # None: no decode was measured (extractive, a reply in one piece)
    cost_usd: float = 0.0
    attempts: tuple[str, ...] = field(default=(), compare=False)  # failed attempts before this answer


class AnswerStream:
    """Iterate for the text pieces; `answer` is set once the stream is exhausted."""

    def __init__(self, source: Gen[str, None, Answer]):
        self._source = source
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        self.answer = yield from self._source

    def collect(self) -> Answer:
        """Drain the stream and return the final answer."""
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer


class Generator(ABC):
    """One answer-generation strategy (`generator.kind`), built with `(config, embedder, **deps)`."""

    @abstractmethod
    def generate(
        self, question: str, contexts: list[Hit], tier: str | None = None, vector: np.ndarray | None = None
    ) -> AnswerStream:
        """Stream an answer to `question` grounded in `contexts`, on `tier` (None: the default).

        `vector` is the question's embedding when the caller has it (a generator that needs one
        then need not embed the question again).
        """


def rate(tokens: int, total_ms: float, ttft_ms: float, pieces: int) -> float | None:
    """Decode speed in tokens/s after the first piece; None unless the text arrived in several pieces."""
    # A reply in one piece leaves microseconds between its first and last byte: tokens over that
    # interval would be a rate of millions, measured on nothing.
    decode_s = (total_ms - ttft_ms) / 1000
    return tokens / decode_s if pieces > 1 and decode_s > 0 and tokens else None


def extractive_answer(
    question_vector: np.ndarray, hits: list[Hit], embedder: Embedder, config: ExtractiveGenerator
) -> Answer:
    """Compose an answer from the retrieved sentences most similar to the question, each cited."""
    parts, citations = _extract(question_vector, hits, embedder, config)
    if not parts:
        return Answer(NO_ANSWER, ())
    return Answer(" ".join(parts), citations)


def _extract(
    question_vector: np.ndarray, hits: list[Hit], embedder: Embedder, config: ExtractiveGenerator
) -> tuple[list[str], tuple[Citation, ...]]:
    candidates: list[tuple[Hit, int, int, str]] = []
    for hit in hits:
        for start, end in sentence_spans(hit.text):
            sentence = hit.text[start:end]
            # Headings and labels ("Jobs and production") score well but answer nothing.
            if len(sentence.split()) >= MIN_ANSWER_WORDS:
                candidates.append((hit, hit.start + start, hit.start + end, sentence))
    if not candidates:
        return [], ()
    vectors = embedder.encode([c[3] for c in candidates])
    scores = vectors @ question_vector
    best = np.argsort(-scores, kind="stable")[: config.max_sentences]
    citations: list[Citation] = []
    parts: list[str] = []
    for rank in best:
        hit, start, end, sentence = candidates[rank]
        citations.append(Citation(hit.source_id, hit.document_id, start, end, float(scores[rank])))
        parts.append(f"{sentence} [{len(citations)}]")
    return parts, tuple(citations)


GENERATORS: Registry[type[Generator]] = Registry("generator kind", key="kind")
# Imported on first use: keeps httpx out of extractive-only processes, and openai.py imports this module.
GENERATORS.register("openai", "tasks.llm.openai:OpenAIChat")


@GENERATORS.register("extractive")
class ExtractiveAnswerer(Generator):
    """No LLM: streams the retrieved sentences most similar to the question, each cited."""

    def __init__(self, config: ExtractiveGenerator, embedder: Embedder, **_: Any):
        self.config = config
        self.embedder = embedder

    def generate(
        self, question: str, contexts: list[Hit], tier: str | None = None, vector: np.ndarray | None = None
    ) -> AnswerStream:
        return AnswerStream(self._run(question, contexts, tier or "default", vector))

    def _run(self, question: str, contexts: list[Hit], tier: str, vector: np.ndarray | None) -> Gen[str, None, Answer]:
        t0 = time.perf_counter()
        qvec = self.embedder.encode([question])[0] if vector is None else vector
        parts, citations = _extract(qvec, contexts, self.embedder, self.config)
        parts = parts or [NO_ANSWER]
        ttft_ms = (time.perf_counter() - t0) * 1000
        for i, part in enumerate(parts):
            yield part if i == 0 else " " + part
        text = " ".join(parts)
        total_ms = (time.perf_counter() - t0) * 1000
        tokens = count_tokens(self.embedder.tokenizer, text)
        usage = Usage(0, tokens, estimated=True)
        # No tokens_per_s: the sentences are picked, not decoded, so there is no generation speed.
        return Answer(text, citations, usage, "extractive", tier, "", ttft_ms, total_ms)


def build_generator(config: Any, embedder: Embedder, **deps: Any) -> Generator:
    """Build the generator a config names; `deps` go to kinds that need them (gateway state, API key)."""
    return GENERATORS.build(config, embedder, **deps)
