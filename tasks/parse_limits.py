"""Per-document parse limits and the cheap checks that refuse obvious bombs before a parser sees them.

The checks here run inside the parse process (`tasks.parse_process`), whose memory limit and deadline
are the real guarantee; these only turn the common cases into a precise reason, early:
- zip containers (DOCX/XLSX/PPTX/EPUB): declared and real inflated sizes, and the per-member ratio;
- PDFs: the page count, and the real inflated size of every Flate stream but images (pdfminer's text
  extraction inflates content, font and form streams, never image data), counted in pieces and
  discarded, so a 1 MB file claiming 1 GiB of font is refused after reading 512 MiB of nothing;
- every format, after parsing: the number of elements and of pages.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Any

ZIP_CONTAINERS = frozenset({".docx", ".pptx", ".xlsx", ".epub"})
RATIO_FLOOR = 1024 * 1024  # members smaller than this are not ratio-checked: tiny XML parts compress wildly
INFLATE_PIECE = 1024 * 1024
FLATE = frozenset({"/FlateDecode", "/Fl"})


@dataclass(frozen=True)
class ParseLimits:
    """What one document may cost to parse; values come from Settings (see `from_settings`)."""

    max_unzipped_bytes: int
    max_zip_ratio: float
    memory_bytes: int
    timeout_s: float
    max_pages: int
    max_elements: int

    @classmethod
    def from_settings(cls, settings: Any) -> ParseLimits:
        """The limits configured by SLUICE_MAX_UNZIPPED_BYTES, SLUICE_MAX_ZIP_RATIO, SLUICE_PARSE_* and SLUICE_MAX_*."""
        return cls(**{name: getattr(settings, _SETTING[name]) for name in _SETTING})

    @classmethod
    def default(cls) -> ParseLimits:
        """The Settings defaults (for callers without Settings at hand)."""
        from sluice.settings import Settings

        return cls(**{name: Settings.model_fields[_SETTING[name]].default for name in _SETTING})


_SETTING = {
    "max_unzipped_bytes": "max_unzipped_bytes",
    "max_zip_ratio": "max_zip_ratio",
    "memory_bytes": "parse_memory_bytes",
    "timeout_s": "parse_timeout_s",
    "max_pages": "max_pages",
    "max_elements": "max_elements",
}


def over_memory(limits: ParseLimits) -> str:
    """The reason a document fails when its parse passed SLUICE_PARSE_MEMORY_BYTES."""
    return (
        f"parsing took more than the parser's memory limit of {limits.memory_bytes} bytes "
        "(SLUICE_PARSE_MEMORY_BYTES) and was stopped: a decompression bomb, or raise the limit if the file is genuine"
    )


def check_before(suffix: str, data: bytes, limits: ParseLimits) -> None:
    """Raise ValueError naming the limit or the fix when the bytes must not reach the parser."""
    if suffix == ".pdf":
        check_pdf(data, limits)
        check_pdf_streams(data, limits)
    elif suffix in ZIP_CONTAINERS:
        check_archive(data, limits)


def check_elements(elements: list, limits: ParseLimits) -> None:
    """Raise ValueError naming the limit when a parse gave too many elements or pages."""
    if len(elements) > limits.max_elements:
        raise ValueError(
            f"the file gives {len(elements)} elements, above the limit of {limits.max_elements} "
            "(SLUICE_MAX_ELEMENTS): split it, or raise the limit if the file is genuine"
        )
    pages = max((getattr(e.metadata, "page_number", None) or 0 for e in elements), default=0)
    if pages > limits.max_pages:
        raise ValueError(_too_many_pages(pages, limits))


def _too_many_pages(pages: int, limits: ParseLimits) -> str:
    return (
        f"the file has {pages} pages, above the limit of {limits.max_pages} (SLUICE_MAX_PAGES): "
        "split it, or raise the limit if the file is genuine"
    )


def check_pdf(data: bytes, limits: ParseLimits) -> None:
    """Raise ValueError naming the fix when the bytes are not a readable PDF, or have too many pages."""
    import pypdf

    if not data.lstrip().startswith(b"%PDF"):
        raise ValueError("not a PDF (no %PDF header): the file is corrupt or has the wrong extension")
    try:
        pages = len(pypdf.PdfReader(io.BytesIO(data)).pages)
    except Exception as exc:  # pypdf raises several types for broken files
        raise ValueError(f"corrupt or truncated PDF ({exc}): re-export or re-download it") from exc
    if pages == 0:
        raise ValueError("the PDF has no pages: re-export or re-download it")
    if pages > limits.max_pages:
        raise ValueError(_too_many_pages(pages, limits))


def check_pdf_streams(data: bytes, limits: ParseLimits) -> None:
    """Raise ValueError naming the limit when the PDF's non-image Flate streams inflate past it."""
    import pikepdf

    try:
        pdf = pikepdf.open(io.BytesIO(data))
    except pikepdf.PdfError:
        return  # pypdf read it (check_pdf); the parse process's own limits still hold
    with pdf:
        total = 0
        for stream in _text_flate_streams(pdf, pikepdf):
            total += _inflated(stream.read_raw_bytes(), limits.max_unzipped_bytes - total, stream.objgen, limits)


def _text_flate_streams(pdf, pikepdf):
    """Every stream but images whose first filter is Flate (others are left to the process limits)."""
    for obj in pdf.objects:
        if not isinstance(obj, pikepdf.Stream) or obj.get("/Subtype") == pikepdf.Name.Image:
            continue
        first = obj.get("/Filter")
        if isinstance(first, pikepdf.Array):
            first = first[0] if len(first) else None
        if first is not None and str(first) in FLATE:
            yield obj


def _inflated(raw: bytes, budget: int, objgen: tuple[int, int], limits: ParseLimits) -> int:
    """Bytes `raw` inflates to, in pieces kept for no longer than their count; ValueError past `budget`."""
    inflater, size, pending = zlib.decompressobj(), 0, raw
    try:
        while True:
            piece = inflater.decompress(pending, INFLATE_PIECE)
            size += len(piece)
            if size > budget:
                raise ValueError(
                    f"PDF stream {objgen[0]} {objgen[1]} R inflates the document past the limit of "
                    f"{limits.max_unzipped_bytes} bytes (SLUICE_MAX_UNZIPPED_BYTES): a decompression bomb, "
                    "or raise the limit if the file is genuine"
                )
            pending = inflater.unconsumed_tail
            if not piece and not pending:
                return size
    except zlib.error:
        return size  # a corrupt stream: pdfminer decides what it makes of it


def check_archive(data: bytes, limits: ParseLimits) -> None:
    """Raise ValueError naming the limit when a zip container would expand too far (a zip bomb).

    Declared sizes are checked first (cheap). Python's zipfile (python-docx, openpyxl) stops at a
    member's declared size, but EPUB goes to pandoc, which may not: so every member is also inflated
    in pieces, output discarded, until the real total passes the limit.
    """
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            _check_declared(members, limits)
            total = 0
            for member in members:
                total += _inflated_size(zf, member, total, limits)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not a valid zip container ({exc}): the file is corrupt or has the wrong extension") from exc


def _check_declared(members: list, limits: ParseLimits) -> None:
    total = sum(m.file_size for m in members)
    if total > limits.max_unzipped_bytes:
        raise ValueError(
            f"the zip container expands to {total} bytes, above the limit of {limits.max_unzipped_bytes} "
            "(SLUICE_MAX_UNZIPPED_BYTES): a zip bomb, or raise the limit if the file is genuine"
        )
    for m in members:
        ratio = m.file_size / max(m.compress_size, 1)
        if m.file_size > RATIO_FLOOR and ratio > limits.max_zip_ratio:
            raise ValueError(
                f"member {m.filename!r} expands {ratio:.0f}x ({m.compress_size} -> {m.file_size} bytes), above the "
                f"limit of {limits.max_zip_ratio:g}x (SLUICE_MAX_ZIP_RATIO): a zip bomb, or raise the limit if genuine"
            )


def _inflated_size(zf, member, before: int, limits: ParseLimits) -> int:
    """Bytes `member` really inflates to, stopping (with ValueError) once the total passes the limit."""
    size = 0
    with zf.open(member) as fh:
        while piece := fh.read(INFLATE_PIECE):
            size += len(piece)
            if before + size > limits.max_unzipped_bytes:
                raise ValueError(
                    f"member {member.filename!r} (declared {member.file_size} bytes) inflates the container past "
                    f"the limit of {limits.max_unzipped_bytes} bytes (SLUICE_MAX_UNZIPPED_BYTES): a zip bomb, "
                    "or raise the limit if the file is genuine"
                )
    return size
