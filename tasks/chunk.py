"""Chunking strategies: one small class per kind, registered by the config's `kind`.

Every chunk carries its character span in the parsed document text, so any strategy
can be scored against the same gold evidence spans.

Two options apply to every kind (`FramedChunker`, `tasks.chunk_context`): `max_tokens` splits chunks the embedder
would truncate, and `contextual` gives each chunk a header from its document (title, section path,
file name) that is embedded and indexed lexically with it (`Chunk.embed_text`), while its span and
the text handed to the generator stay its own.
"""

from __future__ import annotations

import bisect
import contextlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

import numpy as np

from sluice.config import (
    ChunkerConfig,
    FixedTokensChunker,
    ParentChildChunker,
    RecursiveChunker,
    SemanticChunker,
    SentenceChunker,
    StructureChunker,
)
from sluice.errors import ConfigError
from sluice.registry import Registry
from tasks.chunk_context import CONTEXT_SEPARATOR, contextual_header, embedder_window, fit_span, with_header
from tasks.embed import token_counts
from tasks.parse import ParsedDocument
from tasks.text import sentence_spans

Span = tuple[int, int]
_MD_HEADER = re.compile(r"^#{1,6}[ \t]+\S", re.MULTILINE)


class EncoderLike(Protocol):
    """What model-aware chunkers need from the embedder (tasks.embed.Embedder satisfies it)."""

    @property
    def tokenizer(self) -> Any: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    start: int
    end: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    context: str = ""  # contextual header: read by the embedder and the lexical index, never by the generator

    @property
    def embed_text(self) -> str:
        """What the embedder and the lexical index read: the header, a blank line, then the chunk's own text."""
        return with_header(self.context, self.text)


class Chunker(ABC):
    """Split a parsed document into chunks with exact source spans."""

    needs_embedder: ClassVar[bool] = False

    def __init__(self, config: Any, embedder: EncoderLike | None = None):
        if self.needs_embedder and embedder is None:
            raise ConfigError(f"chunker {config.kind!r} needs the embedder: pass make_chunker(config, embedder=...)")
        self.config = config
        self.embedder = embedder

    @abstractmethod
    def split(self, doc: ParsedDocument) -> list[Chunk]:
        """Return the document's chunks in order."""


CHUNKERS: Registry[type[Chunker]] = Registry("chunker kind", key="kind")


def make_chunker(config: ChunkerConfig, embedder: EncoderLike | None = None) -> Chunker:
    """Build the chunker a config names; model-aware kinds use `embedder` (tokenizer, encode).

    With `max_tokens` or `contextual` set, its chunks are capped and given headers (`FramedChunker`).
    """
    chunker = CHUNKERS.build(config, embedder)
    if config.max_tokens is None and not config.contextual:
        return chunker
    return FramedChunker(chunker, embedder)


class FramedChunker(Chunker):
    """Another chunker's chunks, given contextual headers and split to fit `max_tokens` when asked."""

    def __init__(self, inner: Chunker, embedder: EncoderLike | None):
        config = inner.config
        if config.max_tokens is not None and embedder is None:
            raise ConfigError(f"chunker {config.kind!r} with max_tokens needs the embedder's tokenizer: pass embedder=")
        super().__init__(config, embedder)
        self.inner = inner

    def split(self, doc: ParsedDocument) -> list[Chunk]:
        chunks = self.inner.split(doc)
        if self.config.contextual:
            chunks = [_headed(c, contextual_header(doc, c.start)) for c in chunks]
        if self.config.max_tokens is not None:
            with getattr(self.embedder, "encode_lock", contextlib.nullcontext()):  # tokenizers are not thread-safe
                chunks = self._capped(doc, chunks)
        return [replace(c, ordinal=i) for i, c in enumerate(chunks)]

    def cap(self) -> int:
        """The cap in tokens: the configured number, or the embedder's window for `auto`."""
        mt = self.config.max_tokens
        return embedder_window(self.embedder) if mt == "auto" else int(mt)

    def _capped(self, doc: ParsedDocument, chunks: list[Chunk]) -> list[Chunk]:
        cap, tokenizer = self.cap(), self.embedder.tokenizer
        out: list[Chunk] = []
        for chunk, n in zip(chunks, token_counts(tokenizer, [c.embed_text for c in chunks]), strict=True):
            if n <= cap:
                out.append(chunk)
                continue
            spans = fit_span(doc.text, (chunk.start, chunk.end), chunk.context, tokenizer, cap)
            out.extend(replace(chunk, start=s, end=e, text=doc.text[s:e]) for s, e in spans)
        return out


def _headed(chunk: Chunk, header: str) -> Chunk:
    # The stored text is embed_text; retrieval strips this many leading characters (tasks.retrieve).
    meta = {**chunk.metadata, "context_chars": len(header) + len(CONTEXT_SEPARATOR)}
    return replace(chunk, context=header, metadata=meta)


def spans_to_chunks(text: str, pieces: list[str], overlap: int | None = None) -> list[Chunk]:
    """Locate each piece in `text` in order and return chunks with their spans.

    Splitters return substrings of the text (whitespace-stripped at the edges), in order, that together cover every
    character of it but whitespace. In repeated text a piece occurs more than once near where it belongs
    ("River.\n\nRiver." both ends a paragraph and starts the next), so the pieces are aligned as a whole (`_align`):
    each starts or ends after the previous one (the overlap may repeat all of it), leaves no non-whitespace between
    them uncovered, and the last leaves none after it; among a piece's places the one nearest `overlap` before the
    previous end is tried first. Pieces that do not tile the text that way are located one by one, as a fallback.
    """
    pieces = [piece for piece in pieces if piece.strip()]
    starts = _align(text, pieces, overlap)
    if starts is None:
        starts, prev_start, prev_end = [], -1, 0
        for piece in pieces:
            prev_start = _locate(text, piece, prev_start, prev_end, overlap)
            prev_end = prev_start + len(piece)
            starts.append(prev_start)
    spans = zip(starts, pieces, strict=True)
    return [Chunk(ordinal=i, start=s, end=s + len(p), text=p) for i, (s, p) in enumerate(spans)]


_NON_SPACE = re.compile(r"\S")
_ALIGN_STEPS = 20_000  # places tried before falling back to locating pieces one by one


def _align(text: str, pieces: list[str], overlap: int | None) -> list[int] | None:
    """Starts of `pieces` that tile `text`'s non-whitespace in order (a depth-first search), or None."""

    def next_text(at: int) -> int:
        found = _NON_SPACE.search(text, at)
        return found.start() if found else len(text)

    def places(i: int, starts: list[int]) -> list[int]:
        prev_start = starts[-1] if starts else -1
        prev_end = prev_start + len(pieces[i - 1]) if starts else 0
        last, out = next_text(prev_end), []  # a later start would leave text between the two uncovered
        at = text.find(pieces[i], max(prev_start, 0))  # the overlap may repeat the whole previous piece
        while 0 <= at <= last:
            if at > prev_start or at + len(pieces[i]) > prev_end:  # each piece reaches further
                out.append(at)
            at = text.find(pieces[i], at + 1)
        target = prev_end - (overlap or 0)
        return sorted(out, key=lambda s: (abs(s - target), s))

    if not pieces:
        return []
    starts: list[int] = []
    stack = [places(0, starts)]  # stack[i]: the places of piece i not tried yet
    for _ in range(_ALIGN_STEPS):
        if not stack:
            return None
        if not stack[-1]:  # piece len(stack) - 1 has no place left: try the previous piece's next one
            stack.pop()
            if starts:
                starts.pop()
            continue
        starts.append(stack[-1].pop(0))
        if len(starts) == len(pieces):
            if next_text(starts[-1] + len(pieces[-1])) == len(text):
                return starts
            starts.pop()
            continue
        stack.append(places(len(starts), starts))
    return None  # no tiling, or not found within _ALIGN_STEPS


def _locate(text: str, piece: str, prev_start: int, prev_end: int, overlap: int | None) -> int:
    """Start of `piece`: the tightest plausible floor first, then looser ones (the merge may overlap a
    separator more than `overlap`), then anywhere after the previous start."""
    loose = max(prev_start + 1, prev_end - len(piece) + 1)
    floors = [max(loose, prev_end - overlap - 2)] if overlap is not None else []
    for floor in [*floors, loose, prev_start + 1]:
        start = text.find(piece, floor)
        if start >= 0:
            return start
    raise ValueError(f"chunk text not found in source at or after offset {prev_start + 1}")


def recursive_spans(text: str, start: int, end: int, size: int, overlap: int) -> list[Span]:
    """Spans of LangChain's recursive character split of text[start:end], in document offsets."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    piece = text[start:end]
    if len(piece) <= size:
        return _trim(text, start, end)
    splitter = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap, strip_whitespace=True)
    pieces = splitter.split_text(piece)
    return [(start + c.start, start + c.end) for c in spans_to_chunks(piece, pieces, overlap)]


def _trim(text: str, start: int, end: int) -> list[Span]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [(start, end)] if end > start else []


def capped(text: str, spans: list[Span], max_chars: int) -> list[Span]:
    """Keep spans up to max_chars; split longer ones recursively (no overlap)."""
    out: list[Span] = []
    for start, end in spans:
        too_long = end - start > max_chars
        out.extend(recursive_spans(text, start, end, max_chars, 0) if too_long else _trim(text, start, end))
    return out


def to_chunks(text: str, spans: list[Span], metadata: list[dict[str, Any]] | None = None) -> list[Chunk]:
    """Number spans into chunks whose text is exactly text[start:end]."""
    metadata = metadata or [{} for _ in spans]
    return [
        Chunk(ordinal=i, start=s, end=e, text=text[s:e], metadata=m)
        for i, ((s, e), m) in enumerate(zip(spans, metadata, strict=True))
    ]


@CHUNKERS.register("recursive")
class RecursiveCharacterChunker(Chunker):
    """LangChain's recursive character splitter: paragraphs, then lines, then words."""

    config: RecursiveChunker

    def split(self, doc: ParsedDocument) -> list[Chunk]:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        splitter = RecursiveCharacterTextSplitter(
            chunk_size=self.config.chunk_size,
            chunk_overlap=self.config.chunk_overlap,
            strip_whitespace=True,
        )
        return spans_to_chunks(doc.text, splitter.split_text(doc.text), self.config.chunk_overlap)


@CHUNKERS.register("fixed_tokens")
class FixedTokenChunker(Chunker):
    """Windows of N tokens of the embedding model's own tokenizer, with overlap; spans from offset mapping."""

    needs_embedder = True
    config: FixedTokensChunker

    def split(self, doc: ParsedDocument) -> list[Chunk]:
        with getattr(self.embedder, "encode_lock", contextlib.nullcontext()):  # tokenizers are not thread-safe
            offsets = token_offsets(self.embedder.tokenizer, doc.text)
        size, step = self.config.chunk_tokens, self.config.chunk_tokens - self.config.overlap_tokens
        spans: list[Span] = []
        for first in range(0, len(offsets), step):
            window = offsets[first : first + size]
            spans.append((window[0][0], window[-1][1]))
            if first + size >= len(offsets):
                break
        return to_chunks(doc.text, spans)


def token_offsets(tokenizer: Any, text: str) -> list[Span]:
    """Character span of every token of `text` (no special tokens); needs a fast tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("chunker 'fixed_tokens' needs a fast (Rust) tokenizer for character offsets")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [(s, e) for s, e in encoded["offset_mapping"] if e > s]


def section_starts(doc: ParsedDocument) -> list[int]:
    """Offsets where a section begins: unstructured Title elements and markdown header lines."""
    starts = {e.start for e in doc.elements if e.kind == "Title"}
    starts.update(m.start() for m in _MD_HEADER.finditer(doc.text))
    return sorted(starts | {0})


def sections(doc: ParsedDocument, min_chars: int) -> list[Span]:
    """Title-to-title sections; one shorter than min_chars merges into the next."""
    bounds = section_starts(doc) + [len(doc.text)]
    merged: list[Span] = []
    start = 0
    for end in bounds[1:]:
        if end - start >= min_chars or end == len(doc.text):
            merged.extend(_trim(doc.text, start, end))
            start = end
    return merged


@CHUNKERS.register("structure")
class StructureAwareChunker(Chunker):
    """Sections from markdown headers and unstructured titles; long sections split recursively."""

    config: StructureChunker

    def split(self, doc: ParsedDocument) -> list[Chunk]:
        spans = capped(doc.text, sections(doc, self.config.min_chars), self.config.max_chars)
        starts = section_starts(doc)
        meta = [{"section_start": starts[bisect.bisect_right(starts, s) - 1]} for s, _ in spans]
        return to_chunks(doc.text, spans, meta)


@CHUNKERS.register("sentence")
class SentenceWindowChunker(Chunker):
    """Windows of N sentences sharing `overlap` sentences with the previous window."""

    config: SentenceChunker

    def split(self, doc: ParsedDocument) -> list[Chunk]:
        return to_chunks(doc.text, sentence_windows(doc.text, self.config))


def sentence_windows(text: str, cfg: SentenceChunker) -> list[Span]:
    """Up to `window` sentences per span (fewer when max_chars is reached), sharing `overlap` sentences."""
    sents = sentence_spans(text)
    spans: list[Span] = []
    first = 0
    while first < len(sents):
        last = first
        while (
            last + 1 < len(sents)
            and last + 1 - first < cfg.window
            and sents[last + 1][1] - sents[first][0] <= cfg.max_chars
        ):
            last += 1
        spans.extend(capped(text, [(sents[first][0], sents[last][1])], cfg.max_chars))
        if last == len(sents) - 1:
            break
        first = max(first + 1, last + 1 - cfg.overlap)
    return spans


@CHUNKERS.register("semantic")
class SemanticBreakChunker(Chunker):
    """Group sentences; start a new chunk where neighbour embedding distance jumps above a percentile."""

    needs_embedder = True
    config: SemanticChunker

    def split(self, doc: ParsedDocument) -> list[Chunk]:
        sents = sentence_spans(doc.text)
        if len(sents) < 2:
            return to_chunks(doc.text, capped(doc.text, sents, self.config.max_chars))
        vectors = self.embedder.encode([doc.text[s:e] for s, e in sents])
        breaks = semantic_breaks(vectors, self.config.breakpoint_percentile)
        spans = group_sentences(sents, breaks, self.config.min_sentences, self.config.max_chars)
        return to_chunks(doc.text, capped(doc.text, spans, self.config.max_chars))


def semantic_breaks(vectors: np.ndarray, percentile: float) -> set[int]:
    """Indices i where a chunk should end after sentence i: distance(i, i+1) above the percentile."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.maximum(norms, 1e-12)
    distances = 1.0 - np.sum(unit[:-1] * unit[1:], axis=1)
    threshold = np.percentile(distances, percentile)
    return {int(i) for i in np.flatnonzero(distances > threshold)}


def group_sentences(sents: list[Span], breaks: set[int], min_sentences: int, max_chars: int) -> list[Span]:
    """Join consecutive sentences into spans, ending at breaks (once min_sentences) or before max_chars."""
    spans: list[Span] = []
    first = 0
    for i in range(len(sents)):
        last = i == len(sents) - 1
        too_long = not last and sents[i + 1][1] - sents[first][0] > max_chars
        if last or too_long or (i in breaks and i - first + 1 >= min_sentences):
            spans.append((sents[first][0], sents[i][1]))
            first = i + 1
    return spans


@CHUNKERS.register("parent_child")
class ParentChildSplitter(Chunker):
    """Small child chunks for retrieval, each naming its parent section's span for context."""

    config: ParentChildChunker

    def split(self, doc: ParsedDocument) -> list[Chunk]:
        cfg = self.config
        parents = capped(doc.text, sections(doc, cfg.child_chars), cfg.parent_max_chars)
        spans: list[Span] = []
        meta: list[dict[str, Any]] = []
        for p_start, p_end in parents:
            for span in recursive_spans(doc.text, p_start, p_end, cfg.child_chars, cfg.child_overlap):
                spans.append(span)
                meta.append({"parent_start": p_start, "parent_end": p_end})
        return to_chunks(doc.text, spans, meta)


def parent_text(doc_text: str, metadata: dict[str, Any]) -> str | None:
    """The parent section of a parent_child chunk, given its document text and chunk metadata."""
    if "parent_start" not in metadata:
        return None
    return doc_text[metadata["parent_start"] : metadata["parent_end"]]
