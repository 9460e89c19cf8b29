"""Build real PDF decompression bombs quickly: a one-page PDF whose embedded font inflates to gigabytes.

pdfminer (unstructured's `fast` PDF strategy) inflates a Type1 font's FontFile stream whole when the
font has no /Encoding. The stream is a valid zlib stream of zeros built like tests/reliability/zipbomb.py
does: deflate with a full flush resets the window, so one compressed MiB is repeated; the Adler-32 is
computed piece by piece. 1 GiB of font costs ~1 MB of PDF and ~1 MB of this process's memory.
"""

from __future__ import annotations

import struct
import zlib

BLOCK = 1024 * 1024


def flate_zeros(mib: int, prefix: bytes = b"") -> bytes:
    """A zlib (FlateDecode) stream inflating to `prefix` and then `mib` MiB of zero bytes."""
    block = bytes(BLOCK)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    piece = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    adler = zlib.adler32(prefix)
    for _ in range(mib):
        adler = zlib.adler32(block, adler)
    return b"\x78\xda" + head + piece * mib + c.flush() + struct.pack(">I", adler)


# The part of a Type1 font pdfminer reads (the first /Length1 bytes): an encoding for plain ASCII text.
GLYPHS = {" ": "space", ".": "period", **{c: c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}}
TYPE1_HEADER = b"%!FontType1-1.0: HiveBomb\n/Encoding 256 array\n" + b"".join(
    b"dup %d /%s put\n" % (ord(c), name.encode()) for c, name in GLYPHS.items()
)


def pdf(objects: list[bytes]) -> bytes:
    """A PDF of numbered objects (1 = the catalog) with a correct cross-reference table."""
    out, offsets = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def stream(dictionary: bytes, data: bytes) -> bytes:
    return b"<< " + dictionary + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def font_bomb(inflated_mib: int, text: str = "Bees fan their wings to cool the hive.") -> bytes:
    """A valid one-page PDF showing `text` in a font whose FontFile inflates to `inflated_mib` MiB."""
    font = flate_zeros(inflated_mib, TYPE1_HEADER)
    content = b"BT /F1 12 Tf 72 720 Td (" + text.encode("latin-1") + b") Tj ET"
    descriptor = (
        b"<< /Type /FontDescriptor /FontName /HiveBomb /Flags 32 /FontBBox [0 0 1000 1000] /ItalicAngle 0 "
        b"/Ascent 800 /Descent -200 /CapHeight 700 /StemV 80 /FontFile 7 0 R >>"
    )
    return pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> "
            b"/Contents 4 0 R >>",
            stream(b"", content),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /HiveBomb /FirstChar 32 /LastChar 126 /Widths [%s] "
            b"/FontDescriptor 6 0 R >>" % b" ".join([b"600"] * 95),
            descriptor,
            stream(b"/Filter /FlateDecode /Length1 %d /Length2 0 /Length3 0" % len(TYPE1_HEADER), font),
        ]
    )


def text_pdf(pages: list[str]) -> bytes:
    """An ordinary PDF with one line of text per page, in the standard Helvetica font."""
    n = len(pages)
    kids = b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(n))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, n),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects.append(stream(b"", b"BT /F1 12 Tf 72 720 Td (" + text.encode("latin-1") + b") Tj ET"))
    return pdf(objects)
