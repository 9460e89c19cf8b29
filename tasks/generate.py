"""Answer generators. The built-in one is extractive: no LLM, every sentence cited."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sluice.config import ExtractiveGenerator
from tasks.embed import Embedder
from tasks.retrieve import Hit
from tasks.text import sentence_spans

MIN_ANSWER_WORDS = 5


@dataclass(frozen=True)
class Citation:
    source_id: str
    document_id: int
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Answer:
    text: str
    citations: tuple[Citation, ...]


def extractive_answer(
    question_vector: np.ndarray, hits: list[Hit], embedder: Embedder, config: ExtractiveGenerator
) -> Answer:
    """Compose an answer from the retrieved sentences most similar to the question, each cited."""
    candidates: list[tuple[Hit, int, int, str]] = []
    for hit in hits:
        for start, end in sentence_spans(hit.text):
            sentence = hit.text[start:end]
            # Headings and labels ("Jobs and production") score well but answer nothing.
            if len(sentence.split()) >= MIN_ANSWER_WORDS:
                candidates.append((hit, hit.start + start, hit.start + end, sentence))
    if not candidates:
        return Answer("No relevant passage was found in the indexed documents.", ())
    vectors = embedder.encode([c[3] for c in candidates])
    scores = vectors @ question_vector
    best = np.argsort(-scores, kind="stable")[: config.max_sentences]
    citations: list[Citation] = []
    parts: list[str] = []
    for rank in best:
        hit, start, end, sentence = candidates[rank]
        citations.append(Citation(hit.source_id, hit.document_id, start, end, float(scores[rank])))
        parts.append(f"{sentence} [{len(citations)}]")
    return Answer(" ".join(parts), tuple(citations))
