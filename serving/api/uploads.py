"""Uploaded files: names and sizes checked before a byte is written, decoded piece by piece straight to
disk, and nothing left behind by a request that fails."""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import uuid
from pathlib import Path

from serving.api.errors import ApiError
from serving.schemas import IngestJob, UploadedFile
from sluice.settings import Settings
from tasks.metadata import MANIFEST, is_metadata_file

NAME_MAX_BYTES = 255  # NAME_MAX of Linux file systems (ext4, xfs, btrfs): a longer name cannot be created
PIECE = 4 * 1024 * 1024  # base64 characters decoded at a time (3 MiB of file bytes); a multiple of 4


def save_uploads(settings: Settings, tenant: str, job: IngestJob) -> Path:
    """Write uploaded files into a fresh folder the worker ingests (and then removes)."""
    files = job.files or []
    for f in files:
        check_name(f.name)
    total = sum(decoded_size(f) for f in files)
    if total > settings.max_upload_bytes:
        raise ApiError(
            413,
            f"uploads of {total} bytes exceed SLUICE_MAX_UPLOAD_BYTES ({settings.max_upload_bytes} bytes): "
            "split them over several jobs",
        )
    folder = settings.data_dir / "uploads" / tenant / uuid.uuid4().hex
    folder.mkdir(parents=True)
    try:
        for f in files:
            _write_decoded(folder / f.name, f)
        manifest = {f.name: f.metadata for f in files if f.metadata}
        if manifest:  # the worker reads it as any folder's manifest (tasks/metadata.py)
            (folder / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    except BaseException:
        discard(folder)
        raise
    return folder


def discard(folder: Path) -> None:
    """Remove uploads that no queued job names (the request failed after writing them)."""
    shutil.rmtree(folder, ignore_errors=True)


def check_name(name: str) -> None:
    """A plain base name the file system can hold, else 422."""
    if Path(name).name != name or name.startswith(".") or "\x00" in name:
        raise ApiError(422, f"file name {name!r} must be a plain base name such as report.pdf")
    if is_metadata_file(Path(name)):
        raise ApiError(422, f"file name {name!r} is a metadata file's name: give metadata in its `metadata` field")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > NAME_MAX_BYTES:
        raise ApiError(
            422,
            f"file name {name[:32]!r}... is {size} bytes in UTF-8; the limit is {NAME_MAX_BYTES} bytes: shorten it",
        )


def decoded_size(f: UploadedFile) -> int:
    """Bytes the file's base64 text decodes to, from its length alone (decoding checks the text itself)."""
    text = f.content_base64
    if len(text) % 4 or "=" in text[:-2]:
        raise _not_base64(f)
    return len(text) // 4 * 3 - text[-2:].count("=")


def _write_decoded(path: Path, f: UploadedFile) -> None:
    # Piece by piece: the decoded file is never whole in memory, next to the request's base64 text.
    text = f.content_base64
    with path.open("wb") as out:
        for start in range(0, len(text), PIECE):
            try:
                out.write(base64.b64decode(text[start : start + PIECE], validate=True))
            except (binascii.Error, ValueError) as exc:
                raise _not_base64(f) from exc


def _not_base64(f: UploadedFile) -> ApiError:
    return ApiError(422, f"file {f.name!r}: content_base64 is not valid base64")
