"""Build real zip bombs quickly: a valid DOCX/XLSX whose extra member inflates to a gigabyte.

Deflate with a full flush resets the window, so the compressed form of one 1 MiB block can be
repeated: 1 GiB of inflated XML costs about 1 MB of zip and one CRC pass, not a minute of deflate.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

BLOCK = 1024 * 1024


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _repeated(block: bytes, times: int) -> tuple[bytes, int]:
    """Raw deflate of `block` repeated `times` times, and its CRC-32."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(times):
        crc = zlib.crc32(block, crc)
    return piece * times + c.flush(), crc


def write_zip(members: list[tuple[str, bytes, int, int]]) -> bytes:
    """A zip of already-deflated members: (name, raw deflate, crc, inflated size) each."""
    out, central = io.BytesIO(), []
    for name, data, crc, size in members:
        offset, encoded = out.tell(), name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(encoded), 0))
        out.write(encoded + data)
        sizes = (crc, len(data), size, len(encoded))
        header = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, *sizes, 0, 0, 0, 0, 0, offset)
        central.append(header + encoded)
    start = out.tell()
    for entry in central:
        out.write(entry)
    size = out.tell() - start
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), size, start, 0))
    return out.getvalue()


def bomb(base: bytes, member: str, inflated_mib: int) -> bytes:
    """`base` (a real OOXML file) plus `member`: XML-ish whitespace inflating to `inflated_mib` MiB."""
    members = []
    with zipfile.ZipFile(io.BytesIO(base)) as src:
        for info in src.infolist():
            data = src.read(info)
            members.append((info.filename, _deflate(data), zlib.crc32(data), len(data)))
    block = b"<x>" + b" " * (BLOCK - 7) + b"</x>"
    data, crc = _repeated(block, inflated_mib)
    members.append((member, data, crc, inflated_mib * BLOCK))
    return write_zip(members)
