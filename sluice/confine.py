"""Named ingest sources stay inside their tenant's folder: `<SLUICE_INGEST_ROOT>/<tenant>/…`.

The API resolves a name here to refuse early; the worker resolves it again (with its own root) and
checks every file when it opens it, because the folder can change after the job was accepted: a file
is judged by the real path of what was opened, so a symlink, a symlinked folder or a swap at any
depth cannot lead outside. The operator's own CLI ingestion of local paths is not confined.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sluice.errors import DocumentError, SourceError
from sluice.objects import protocol_of, under
from sluice.settings import Settings

ESCAPED = "resolves outside this tenant's ingest folder (a symlink or a moved file?): it was not read"


def tenant_folder(ingest_root: Path | None, tenant: str) -> Path:
    """The real path of a tenant's folder under the ingest root; SourceError when named sources are off."""
    if ingest_root is None:
        raise SourceError("named sources are disabled: set SLUICE_INGEST_ROOT on the server, or upload `files`")
    if Path(tenant).name != tenant or tenant in (".", ".."):
        raise SourceError(f"tenant id {tenant!r} cannot name a folder")  # ids are checked at creation: defensive
    return Path(os.path.realpath(ingest_root / tenant))


def resolve_source(settings: Settings, tenant: str, name: str) -> Path | str:
    """A named source of a tenant: a real path in its folder, or a URL below its prefix of SLUICE_INGEST_URL.

    `file:///...` names a path as an absolute URL, held to the tenant's folder like a relative name;
    any other URL (s3://...) must lie below `<SLUICE_INGEST_URL>/<tenant>`; anything else is a name
    relative to the tenant's folder. Refusals are SourceErrors naming the fix.
    """
    if name.startswith("file://"):
        folder = tenant_folder(settings.ingest_root, tenant)
        path = Path(os.path.realpath(name[len("file://") :] or "/"))
        if not name[len("file://") :].startswith("/") or not inside(path, folder):
            raise SourceError(f"source {name!r} must be a file:/// URL inside your ingest folder")
        return resolve_named(folder, os.path.relpath(path, folder))
    if "://" in name:
        protocol_of(name)
        if settings.ingest_url is None:
            raise SourceError("remote sources are disabled: set SLUICE_INGEST_URL on the server, or upload `files`")
        prefix = f"{settings.ingest_url.rstrip('/')}/{tenant}"
        if not under(name, prefix):
            raise SourceError(f"source {name!r} is outside your ingest prefix {prefix}/")
        return name
    return resolve_named(tenant_folder(settings.ingest_root, tenant), name)


def resolve_named(folder: Path, name: str) -> Path:
    """The real path of source `name` inside `folder` (a tenant's folder); SourceError for escapes or absence.

    An escape is refused before existence is checked, so a name pointing into another tenant's folder
    gets the same answer whether that folder exists or not.
    """
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or "\x00" in name:
        raise SourceError(f"source {name!r} must be a relative path inside your ingest folder, without '..'")
    path = Path(os.path.realpath(folder / rel))
    if not inside(path, folder):
        raise SourceError(f"source {name!r} resolves outside your ingest folder")
    if not path.exists():
        raise SourceError(f"source {name!r} does not exist in your ingest folder: name a folder or file inside it")
    return path


def inside(path: Path, folder: Path) -> bool:
    """Whether a real (resolved) path is `folder` or below it."""
    return path == folder or path.is_relative_to(folder)


def read_inside(path: Path, source_id: str, folder: Path, max_bytes: int) -> bytes:
    """Read a regular file whose real path is inside `folder`; DocumentError (not read) otherwise.

    Checked before opening (an outside file is never even opened) and again on the file actually
    opened: its real path must still name the same inode, so a swap in between is refused, not followed.
    """
    if not inside(Path(os.path.realpath(path)), folder):
        raise DocumentError(source_id, "read", ESCAPED)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # NONBLOCK: opening a FIFO cannot hang
    with os.fdopen(fd, "rb") as f:
        opened, real = os.fstat(fd), Path(os.path.realpath(path))
        if not inside(real, folder) or not _names(real, opened):
            raise DocumentError(source_id, "read", ESCAPED)
        if not stat.S_ISREG(opened.st_mode):
            raise DocumentError(source_id, "read", "not a regular file (a pipe, socket or device): it was not read")
        data = f.read(max_bytes + 1) if opened.st_size <= max_bytes else b""
    size = max(opened.st_size, len(data))  # a file that grew after fstat is caught by the read
    if size > max_bytes:
        raise too_big(source_id, size, max_bytes)
    return data


def too_big(source_id: str, size: int, max_bytes: int) -> DocumentError:
    """The error of a file above SLUICE_MAX_FILE_BYTES."""
    return DocumentError(
        source_id, "read", f"file is {size} bytes, above the limit of {max_bytes} (SLUICE_MAX_FILE_BYTES)"
    )


def _names(real: Path, opened: os.stat_result) -> bool:
    """Whether `real` is the file that was opened (same device and inode)."""
    try:
        st = os.stat(real)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)


@contextmanager
def private_copy(name: str, data: bytes) -> Iterator[Path]:
    """`data` in a file called `name` that only this process reaches, for parsers that re-open files by name.

    A confined file is parsed from the bytes that passed the check, never from its path again.
    """
    with tempfile.TemporaryDirectory(prefix="sluice-confined-") as scratch:
        path = Path(scratch) / name
        path.write_bytes(data)
        yield path
