"""Parse files into one text with element spans, using unstructured, offline.

How unstructured is made to work offline (a deliberate choice):
- Its element classifier (title vs narrative text) asks spaCy's `en_core_web_sm` for sentence
  boundaries and part-of-speech tags, and downloads that model on first use, which fails here.
  We hand it a pipeline that needs no download instead: spaCy's blank English tokenizer, the
  rule of its sentencizer, and a small closed-class verb tagger (below, `_OfflineNLP`). Only the Title /
  NarrativeText heuristics read these tags; the text itself is unaffected. Markup-driven formats
  (HTML headings, DOCX heading styles, Markdown) still take titles from their markup.
- PDFs use the text layer (`fast`: pdfminer, no model). `hi_res` needs layout models from a hub,
  so it is never used. When the text layer is empty (a scan) and tesseract is installed, the
  pages are OCR'd (`ocr_only`); without tesseract an empty scan is an error naming the fix.

Plain text (.txt, .md) is decoded here, not by unstructured's encoding guess (which reads
Latin-1 as windows-1250): UTF-8 first, then line by line with cp1252 as the fallback, so a
file mixing encodings keeps its UTF-8 lines intact. Mojibake (UTF-8 read as Latin-1/cp1252,
e.g. "1985â\x80\x9386" in norwich-city.txt) is repaired in every format's element text by
`tasks.text.repair_mojibake`; the number of repairs is kept in the document metadata.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from sluice.config import ParserConfig
from sluice.errors import DocumentError
from tasks.metadata import split_front_matter
from tasks.parse_limits import ParseLimits, check_before, check_elements
from tasks.text import decode_text, repair_mojibake

SEPARATOR = "\n\n"
PLAIN_TEXT = frozenset({".txt", ".text", ".md", ".markdown"})
SUPPORTED = PLAIN_TEXT | frozenset(
    {".rst", ".html", ".htm", ".pdf", ".docx", ".pptx", ".xlsx", ".csv", ".tsv", ".epub", ".eml", ".json"}
)

# Closed-class verbs and auxiliaries; with the -ed/-ing/-es suffix rule this is enough for
# unstructured's "contains a verb" test, which only separates prose from labels and headings.
_VERBS = frozenset(
    """is are was were be been being am has have had having do does did done can could will would
    shall should may might must get gets got make makes made take takes took go goes went see saw
    seen know knew known use uses used find found give gave given tell told work works call called
    try tried need needs feel felt become became leave left put mean means keep kept let begin began
    seem seems help helps show shows showed hear heard play run runs move live lives believe hold
    held bring brought happen write wrote provide provides sit stand lose lost pay paid meet include
    includes continue set learn change lead understand watch follow stop create speak read allow add
    spend grow open walk win offer remember love consider appear buy wait serve die send expect build
    stay fall cut reach kill remain suggest raise pass sell require report decide pull says said""".split()
)
_VERB_SUFFIX = re.compile(r"[a-z]{3,}(ed|ing)$")


@dataclass(frozen=True)
class Element:
    kind: str
    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedDocument:
    source_id: str
    text: str
    elements: tuple[Element, ...]
    content_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)


def content_hash(data: bytes) -> str:
    """Hash of a file's bytes: equal bytes, equal document version."""
    return hashlib.sha256(data).hexdigest()


class _Token(NamedTuple):
    text: str
    tag_: str


class _Sentence(NamedTuple):
    text: str


def _tag(word: str) -> str:
    low = word.lower()
    return "VB" if low in _VERBS or _VERB_SUFFIX.match(low) else "NN"


class _Doc:
    """What unstructured reads of a spaCy Doc: tokens (`text`, `tag_`) in order, and `sents`."""

    __slots__ = ("_words", "sents")

    def __init__(self, words: list[str], sents: list[_Sentence]):
        self._words = words
        self.sents = sents

    def __iter__(self):
        return (_Token(w, _tag(w)) for w in self._words)


class _OfflineNLP:
    """spaCy's blank English tokenizer, then the sentencizer's rule and the verb tagger in plain Python.

    The same tokens, sentences and tags as `spacy.blank("en")` + sentencizer + a tagger component,
    without building spaCy Token objects for every word of every paragraph. With language detection
    off too, plain-text parsing is ~2.2x faster (bench/embed_parse.py, docs/benchmarks.md).
    """

    max_length = 1_000_000  # spaCy's limit; unstructured truncates longer text to it

    def __init__(self):
        import spacy
        from spacy.attrs import IDX, LENGTH
        from spacy.lang.lex_attrs import is_punct
        from spacy.pipeline.sentencizer import Sentencizer

        self._tokenizer = spacy.blank("en").tokenizer
        self._ends = frozenset(Sentencizer.default_punct_chars)
        self._is_punct = is_punct
        self._columns = [IDX, LENGTH]  # each token's offset and length, read in one array

    def __call__(self, text: str) -> _Doc:
        spans = self._tokenizer(text).to_array(self._columns).tolist()
        words = [text[i : i + n] for i, n in spans]
        sents: list[_Sentence] = []
        first, seen_end = 0, False
        for k, word in enumerate(words):  # Sentencizer.predict
            is_end = word in self._ends
            if seen_end and not is_end and not self._is_punct(word):
                sents.append(self._sentence(text, spans, first, k - 1))
                first, seen_end = k, False
            elif is_end:
                seen_end = True
        if words:
            sents.append(self._sentence(text, spans, first, len(words) - 1))
        return _Doc(words, sents)

    @staticmethod
    def _sentence(text: str, spans: list[list[int]], first: int, last: int) -> _Sentence:
        return _Sentence(text[spans[first][0] : spans[last][0] + spans[last][1]])


@lru_cache(maxsize=1)
def _offline_nlp() -> _OfflineNLP:
    return _OfflineNLP()


def install_offline_nlp() -> None:
    """Point unstructured's NLP helpers at the download-free pipeline (idempotent)."""
    import unstructured.nlp.tokenize as tokenize

    tokenize._get_nlp = _offline_nlp


def _partition(path: Path, config: ParserConfig, strategy: str | None, data: bytes) -> list:
    suffix = path.suffix.lower()
    if suffix in PLAIN_TEXT:
        return _partition_plain(path, decode_text(data, path.name))
    from unstructured.partition.auto import partition

    # languages=[""] turns off unstructured's per-document language detection (langdetect, a third
    # of the parse time on plain text): it only fills element metadata we do not keep. PDFs name
    # their OCR languages instead.
    kwargs: dict[str, Any] = {"filename": str(path), "languages": [""]}
    if suffix == ".pdf":
        kwargs["strategy"] = strategy or "fast"
        kwargs["languages"] = config.ocr_languages.split("+")
    return partition(**kwargs)


def _partition_plain(path: Path, text: str) -> list:
    if path.suffix.lower() in (".md", ".markdown"):
        from unstructured.partition.md import partition_md

        _, body = split_front_matter(text)  # metadata (tasks/metadata.py), not text to index
        return partition_md(text=body, languages=[""])
    from unstructured.partition.text import partition_text

    return partition_text(text=text, languages=[""])


def _elements_from(path: Path, config: ParserConfig, data: bytes, limits: ParseLimits) -> list:
    is_pdf = path.suffix.lower() == ".pdf"
    check_before(path.suffix.lower(), data, limits)
    strategy = None if config.pdf_strategy == "auto" else config.pdf_strategy
    elements = _kept(_partition(path, config, strategy, data), limits)
    if elements or not is_pdf or config.pdf_strategy != "auto":
        return elements
    if shutil.which("tesseract") is None:
        raise ValueError(
            "the PDF has no text layer (a scan?) and tesseract is not installed: "
            "install tesseract-ocr and poppler-utils to OCR it"
        )
    return _kept(_partition(path, config, "ocr_only", data), limits)


def _kept(elements: list, limits: ParseLimits) -> list:
    """The elements that carry text, once they are known to be within the limits."""
    kept = [e for e in elements if (e.text or "").strip()]
    check_elements(kept, limits)
    return kept


def assemble(source_id: str, pieces: list[tuple[str, str, dict]], digest: str, metadata: dict) -> ParsedDocument:
    """Join element texts into one document text, recording each element's span."""
    parts: list[str] = []
    elements: list[Element] = []
    offset = 0
    for kind, text, meta in pieces:
        text = text.replace("\x00", "").strip()  # PostgreSQL text cannot hold NUL
        if not text:
            continue
        if parts:
            parts.append(SEPARATOR)
            offset += len(SEPARATOR)
        parts.append(text)
        elements.append(Element(kind=kind, start=offset, end=offset + len(text), metadata=meta))
        offset += len(text)
    return ParsedDocument(source_id, "".join(parts), tuple(elements), digest, metadata)


def parse_file(
    path: Path, source_id: str, config: ParserConfig, data: bytes | None = None, limits: ParseLimits | None = None
) -> ParsedDocument:
    """Parse one file in this process; raise DocumentError naming the file and the fix when it cannot give text.

    Ingestion calls it through `tasks.parse_process`, in a child process whose memory and time are bounded.
    """
    install_offline_nlp()
    data = _readable(path, source_id, data)
    raw = _raw_elements(path, source_id, config, data, limits or ParseLimits.default())
    repaired = 0
    pieces = []
    for e in raw:
        text, n = repair_mojibake(e.text)
        repaired += n
        pieces.append((e.category, text, _element_meta(e)))
    meta = {"filename": path.name, "filetype": path.suffix.lower().lstrip(".")}
    if repaired:
        meta["mojibake_repaired"] = repaired
    return assemble(source_id, pieces, content_hash(data), meta)


def _readable(path: Path, source_id: str, data: bytes | None) -> bytes:
    """The file's bytes, once its type is one we parse and it holds more than whitespace."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise DocumentError(
            source_id,
            "parse",
            f"unsupported file type {suffix or '(no extension)'!r}: supported are "
            f"{', '.join(sorted(SUPPORTED))}; convert the file or remove it from the source",
        )
    data = path.read_bytes() if data is None else data
    if not data.strip():
        raise DocumentError(
            source_id,
            "parse",
            "the file is empty or whitespace only (no text): add content or remove it from the source",
        )
    return data


def _raw_elements(path: Path, source_id: str, config: ParserConfig, data: bytes, limits: ParseLimits) -> list:
    """The parser's elements; any failure of the parser becomes a DocumentError naming the file."""
    try:
        raw = _elements_from(path, config, data, limits)
    except DocumentError:
        raise
    except ValueError as exc:  # our own checks, worded for the user
        raise DocumentError(source_id, "parse", str(exc)) from exc
    except Exception as exc:  # unstructured raises many types for corrupt input
        raise DocumentError(source_id, "parse", f"{type(exc).__name__}: {exc}") from exc
    if not raw:
        raise DocumentError(source_id, "parse", "no text found in the file (empty, image-only or unsupported content)")
    return raw


def _element_meta(element) -> dict[str, Any]:
    meta = element.metadata
    out: dict[str, Any] = {}
    if getattr(meta, "page_number", None) is not None:
        out["page"] = meta.page_number
    if getattr(meta, "category_depth", None) is not None:
        out["depth"] = meta.category_depth
    return out
