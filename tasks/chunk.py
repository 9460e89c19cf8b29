"""Chunking strategies: one small class per kind, registered by the config's `kind`.

Every chunk carries its character span in the parsed document text, so any strategy
can be scored against the same gold evidence spans.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sluice.config import ChunkerConfig, RecursiveChunker
from sluice.errors import ConfigError
from tasks.parse import ParsedDocument


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    start: int
    end: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


class Chunker(ABC):
    """Split a parsed document into chunks with exact source spans."""

    kind: ClassVar[str]

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def split(self, doc: ParsedDocument) -> list[Chunk]:
        """Return the document's chunks in order."""


REGISTRY: dict[str, type[Chunker]] = {}


def register(cls: type[Chunker]) -> type[Chunker]:
    """Class decorator: make a chunker selectable by its `kind`."""
    REGISTRY[cls.kind] = cls
    return cls


def make_chunker(config: ChunkerConfig) -> Chunker:
    """Build the chunker a config names."""
    try:
        return REGISTRY[config.kind](config)
    except KeyError:
        raise ConfigError(f"unknown chunker kind {config.kind!r}; known: {sorted(REGISTRY)}") from None


def spans_to_chunks(text: str, pieces: list[str]) -> list[Chunk]:
    """Locate each piece in `text` in order and return chunks with their spans.

    Splitters return substrings of the text (whitespace-stripped at the edges); each is found
    at or after the previous piece's start, so repeated passages map to the right place.
    """
    chunks: list[Chunk] = []
    cursor = 0
    for piece in pieces:
        if not piece.strip():
            continue
        start = text.find(piece, cursor)
        if start < 0:
            raise ValueError(f"chunk text not found in source at or after offset {cursor}")
        end = start + len(piece)
        chunks.append(Chunk(ordinal=len(chunks), start=start, end=end, text=piece))
        cursor = start + 1
    return chunks


@register
class RecursiveCharacterChunker(Chunker):
    """LangChain's recursive character splitter: paragraphs, then lines, then words."""

    kind = "recursive"
    config: RecursiveChunker

    def split(self, doc: ParsedDocument) -> list[Chunk]:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        splitter = RecursiveCharacterTextSplitter(
            chunk_size=self.config.chunk_size,
            chunk_overlap=self.config.chunk_overlap,
            strip_whitespace=True,
        )
        return spans_to_chunks(doc.text, splitter.split_text(doc.text))
