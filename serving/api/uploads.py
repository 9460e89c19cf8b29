"""Uploaded files: names and sizes checked before a byte is stored, decoded piece by piece straight into the
upload store (the database or a bucket: never this host's disk), and nothing left behind by a request that fails."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from pathlib import Path

from serving.api.errors import ApiError
from serving.schemas import IngestJob, UploadedFile
from serving.upload_store import NewFile, Store, discard, save
from sluice.db import Database
from sluice.settings import Settings
from tasks.metadata import MANIFEST, is_metadata_file

NAME_MAX_BYTES = 255  # NAME_MAX of Linux file systems (ext4, xfs, btrfs): a longer name cannot be created
PIECE = 4 * 1024 * 1024  # base64 characters decoded at a time (3 MiB of file bytes); a multiple of 4


def save_uploads(settings: Settings, db: Database, store: Store, tenant: str, job: IngestJob) -> list[str]:
    """Store the uploaded files for a worker to fetch; their upload ids (the only thing the job message carries)."""
    files = job.files or []
    seen: set[str] = set()
    for f in files:
        check_name(f.name)
        if f.name in seen:  # the worker's folder, and the metadata manifest, would keep only one of them
            raise ApiError(422, f"file name {f.name!r} is given twice in this job: give each file its own name")
        seen.add(f.name)
    sizes = [decoded_size(f) for f in files]
    if sum(sizes) > settings.max_upload_bytes:
        raise ApiError(
            413,
            f"uploads of {sum(sizes)} bytes exceed SLUICE_MAX_UPLOAD_BYTES ({settings.max_upload_bytes} bytes): "
            "split them over several jobs",
        )
    new = [NewFile(f.name, size, _decoded(f)) for f, size in zip(files, sizes, strict=True)]
    manifest = {f.name: f.metadata for f in files if f.metadata}
    if manifest:  # stored beside the files: the worker reads it as any folder's manifest (tasks/metadata.py)
        data = json.dumps(manifest, ensure_ascii=False).encode()
        new.append(NewFile(MANIFEST, len(data), [data]))
    return save(db, store, tenant, new)


def drop_uploads(db: Database, store: Store, tenant: str, ids: list[str]) -> None:
    """Remove uploads that no queued job names (the request failed after storing them)."""
    discard(db, store, tenant, ids)


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


def _decoded(f: UploadedFile) -> Iterator[bytes]:
    # Piece by piece: the decoded file is never whole in memory, next to the request's base64 text.
    text = f.content_base64
    for start in range(0, len(text), PIECE):
        try:
            yield base64.b64decode(text[start : start + PIECE], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _not_base64(f) from exc


def _not_base64(f: UploadedFile) -> ApiError:
    return ApiError(422, f"file {f.name!r}: content_base64 is not valid base64")
