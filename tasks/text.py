"""Text helpers shared by chunkers and the extractive answerer."""

from __future__ import annotations

import hashlib
import re

# A sentence ends at . ! or ? (optionally closed by quotes/brackets) followed by whitespace and
# an upper-case letter, digit or opening quote; or at a blank line. Abbreviations like "e.g." or
# "Dr." followed by a capital are a known miss, acceptable for windows and answer extraction.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n")


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Return (start, end) spans of the sentences in text[start:end], whitespace-trimmed."""
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    cursor = start
    for match in _SENTENCE_END.finditer(text, start, end):
        _append_trimmed(text, cursor, match.start(), spans)
        cursor = match.end()
    _append_trimmed(text, cursor, end, spans)
    return spans


def _append_trimmed(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        spans.append((start, end))


def text_hash(text: str) -> str:
    """Stable hash of a text, the embedding cache key."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# Mojibake: UTF-8 bytes that were decoded as Latin-1 or cp1252. A lead byte 0xC2-0xF4 shows up as
# 'Â'..'ô', each continuation byte 0x80-0xBF as a C1 control (Latin-1) or a cp1252 symbol. A run of
# such characters whose bytes decode as strict UTF-8 is replaced by what they decode to; runs that
# do not decode (real "Âge", "été") are left alone. Covers the common case ftfy fixes, no new dependency.
_CP1252_BACK = {bytes([b]).decode("cp1252"): b for b in range(0x80, 0xC0) if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
_CONT = "".join(sorted({chr(b) for b in range(0x80, 0xC0)} | set(_CP1252_BACK)))
_MOJIBAKE = re.compile(f"(?:[\u00c2-\u00f4][{re.escape(_CONT)}]{{1,3}})+")


def _to_byte(ch: str) -> int:
    return _CP1252_BACK.get(ch, ord(ch))


def _repair(match: re.Match) -> str:
    raw = match.group(0)
    try:
        return bytes(_to_byte(ch) for ch in raw).decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        return raw


def repair_mojibake(text: str) -> tuple[str, int]:
    """Undo UTF-8-read-as-Latin-1/cp1252 sequences; return the text and how many runs were repaired."""
    count = 0

    def sub(match: re.Match) -> str:
        nonlocal count
        fixed = _repair(match)
        count += fixed != match.group(0)
        return fixed

    return _MOJIBAKE.sub(sub, text), count


_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")


def decode_text(data: bytes, name: str) -> str:
    """Decode a plain-text file: UTF-8, else line by line with a cp1252 fallback; ValueError on binary bytes."""
    head = data[:65536]
    if b"\x00" in head or len(_CONTROL.findall(head)) > max(8, len(head) // 100):
        raise ValueError(f"{name} holds binary bytes, not text: give it its real extension or remove it")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "".join(_decode_line(line) for line in data.splitlines(keepends=True))


def _decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("cp1252", errors="replace")
