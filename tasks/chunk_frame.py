"""Options every chunker has: a cap in the embedder's tokens, and contextual headers.

`max_tokens` splits any chunk the embedder would otherwise truncate (all-MiniLM-L6-v2 reads 256 tokens,
special tokens included, and silently drops the rest); the header counts against the cap. A header
names the document (title, section path, file name): the embedder and the lexical index read it with
the chunk (`Chunk.embed_text`), while the span and the text the generator reads stay the chunk's own.

Headers use only what a rollout's re-chunk also has (document text, element kinds and spans, document
metadata), so re-chunking stored documents gives the same chunks as the first ingest.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

from sluice.errors import ConfigError
from tasks.chunk import CONTEXT_SEPARATOR, Chunk, Chunker, EncoderLike, spans_to_chunks
from tasks.embed import token_counts
from tasks.parse import ParsedDocument

_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
PART_CHARS = 150  # longest title, section or file name kept in a header
_MIN_BUDGET = 8  # fewer content tokens per chunk than this: the header leaves no room


def document_title(doc: ParsedDocument) -> str:
    """The document's title: its metadata, else its first Title element or markdown heading, else a short first line."""
    if doc.metadata.get("title"):
        return _short(str(doc.metadata["title"]))
    titles = [e for e in doc.elements if e.kind == "Title"]
    heading = _MD_HEADING.search(doc.text)
    starts = [(t.start, doc.text[t.start : t.end]) for t in titles[:1]]
    starts += [(heading.start(), heading.group(2))] if heading else []
    if starts:
        return _short(min(starts)[1])
    first = doc.text.strip().split("\n", 1)[0]
    return _short(first) if len(first) <= 2 * PART_CHARS else ""


def section_path(doc: ParsedDocument, offset: int) -> list[str]:
    """The headings enclosing `offset`: markdown headings by level, else the last Title element before it."""
    stack: list[tuple[int, str]] = []
    for m in _MD_HEADING.finditer(doc.text):
        if m.start() > offset:
            break
        level = len(m.group(1))
        stack = [(lvl, name) for lvl, name in stack if lvl < level] + [(level, _short(m.group(2)))]
    if stack:
        return [name for _, name in stack]
    titles = [e for e in doc.elements if e.kind == "Title" and e.start <= offset]
    return [_short(doc.text[titles[-1].start : titles[-1].end])] if titles else []


def file_name(doc: ParsedDocument) -> str:
    """The document's file name (its source id's last part when it came from no file)."""
    return _short(str(doc.metadata.get("filename") or PurePosixPath(doc.source_id).name))


def contextual_header(doc: ParsedDocument, offset: int) -> str:
    """A short header for the chunk starting at `offset`: title, section path and file name, one per line."""
    title = document_title(doc)
    path = [s for s in section_path(doc, offset) if s != title]
    lines = [f"Title: {title}" if title else "", f"Section: {' > '.join(path)}" if path else ""]
    lines.append(f"File: {file_name(doc)}")
    return "\n".join(line for line in lines if line)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PART_CHARS else text[: PART_CHARS - 1].rstrip() + "…"


def embedder_window(embedder: Any) -> int:
    """How many tokens the embedder reads (special tokens included); the rest of a text is dropped."""
    window = getattr(embedder, "window", None)
    if not isinstance(window, int):
        raise ConfigError("max_tokens: auto needs the embedder's window: pass make_chunker(config, embedder=...)")
    return window


class FramedChunker(Chunker):
    """Another chunker's chunks, split to fit `max_tokens` and given contextual headers when asked."""

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
        counts = token_counts(tokenizer, [c.embed_text for c in chunks])
        out: list[Chunk] = []
        for chunk, n in zip(chunks, counts, strict=True):
            out.extend([chunk] if n <= cap else fit(doc.text, chunk, tokenizer, cap))
        return out


def _headed(chunk: Chunk, header: str) -> Chunk:
    # The stored text is embed_text; retrieval strips this many leading characters (tasks.retrieve).
    return replace(
        chunk, context=header, metadata={**chunk.metadata, "context_chars": len(header) + len(CONTEXT_SEPARATOR)}
    )


def fit(text: str, chunk: Chunk, tokenizer: Any, cap: int) -> list[Chunk]:
    """Split one chunk at word boundaries into pieces of at most `cap` tokens, header included."""
    overhead = token_counts(tokenizer, [chunk.context + CONTEXT_SEPARATOR if chunk.context else ""])[0]
    budget = cap - overhead
    while budget >= _MIN_BUDGET:
        pieces = _pieces(text, chunk, tokenizer, budget)
        if all(n <= cap for n in token_counts(tokenizer, [p.embed_text for p in pieces])):
            return pieces
        budget -= max(1, budget // 10)  # a word cut by the splitter tokenised longer: shrink and split again
    raise ConfigError(
        f"max_tokens {cap} leaves no room for text after the {overhead}-token contextual header: raise max_tokens"
    )


def _pieces(text: str, chunk: Chunk, tokenizer: Any, budget: int) -> list[Chunk]:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    def length(piece: str) -> int:
        return len(tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"])

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=budget, chunk_overlap=0, length_function=length, strip_whitespace=True
    )
    body = text[chunk.start : chunk.end]
    spans = [(chunk.start + p.start, chunk.start + p.end) for p in spans_to_chunks(body, splitter.split_text(body), 0)]
    return [replace(chunk, start=s, end=e, text=text[s:e]) for s, e in spans]
