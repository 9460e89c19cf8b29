"""What every chunker's two options need: contextual headers, and spans fitted to a cap in the embedder's tokens.

`max_tokens` splits any chunk the embedder would otherwise truncate (all-MiniLM-L6-v2 reads 256 tokens,
special tokens included, and silently drops the rest); the header counts against the cap. A header
names the document (title, section path, file name): the embedder and the lexical index read it with
the chunk (`Chunk.embed_text`), while the span and the text the generator reads stay the chunk's own.
`tasks.chunk.FramedChunker` applies both to any chunker's chunks.

Headers use only what a rollout's re-chunk also has (document text, element kinds and spans, document
metadata), so re-chunking stored documents gives the same chunks as the first ingest.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from sluice.errors import ConfigError
from tasks.embed import token_counts
from tasks.parse import ParsedDocument

Span = tuple[int, int]
CONTEXT_SEPARATOR = "\n\n"  # between a contextual header and the chunk's text

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


def with_header(header: str, text: str) -> str:
    """What the embedder and the lexical index read of a chunk: its header, a blank line, its text."""
    return f"{header}{CONTEXT_SEPARATOR}{text}" if header else text


def fit_span(text: str, span: Span, header: str, tokenizer: Any, cap: int) -> list[Span]:
    """Split text[span] at word boundaries into spans of at most `cap` tokens each, header included."""
    overhead = token_counts(tokenizer, [with_header(header, "")])[0]
    budget = cap - overhead
    while budget >= _MIN_BUDGET:
        spans = _token_split(text, span, tokenizer, budget)
        if all(n <= cap for n in token_counts(tokenizer, [with_header(header, text[s:e]) for s, e in spans])):
            return spans
        budget -= max(1, budget // 10)  # a word cut by the splitter tokenised longer: shrink and split again
    raise ConfigError(
        f"max_tokens {cap} leaves no room for text after the {overhead}-token contextual header: raise max_tokens"
    )


def _token_split(text: str, span: Span, tokenizer: Any, budget: int) -> list[Span]:
    """LangChain's recursive split of text[span] measured in tokens (no overlap), as document spans."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    def length(piece: str) -> int:
        return len(tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"])

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=budget, chunk_overlap=0, length_function=length, strip_whitespace=True
    )
    spans: list[Span] = []
    at = span[0]
    for piece in splitter.split_text(text[span[0] : span[1]]):
        start = text.find(piece, at, span[1])  # pieces come in order and, without overlap, never share text
        if start < 0:
            raise ValueError(f"token split piece not found in the chunk at or after offset {at}")
        spans.append((start, start + len(piece)))
        at = start + len(piece)
    return spans
