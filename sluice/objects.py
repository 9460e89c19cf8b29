"""Remote files through fsspec: one way to reach an object store (s3://...) for uploads and named sources.

A filesystem is built on first use (never at import) from the URL's protocol and the
settings (`SLUICE_S3_ENDPOINT_URL` for S3-compatible servers); credentials come from the provider's
usual chain (AWS variables, instance role), never from a URL, so none is ever logged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sluice.errors import SourceError, SourceUnavailableError
from sluice.settings import Settings

COPY_PIECE = 4 * 1024 * 1024


def protocol_of(url: str) -> str:
    """The scheme of a URL (`s3` of s3://bucket/key); SourceError when there is none."""
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme.isidentifier():
        raise SourceError(f"{url!r} is not a URL such as s3://bucket/prefix")
    return scheme.lower()


def filesystem(settings: Settings, url: str) -> Any:
    """The fsspec filesystem of the URL's protocol for these settings.

    fsspec caches instances by arguments and drops its cache in a forked child (a Celery pool process
    must not reuse its parent's event loop and connections), so no cache of our own is kept here.
    """
    import fsspec

    protocol = protocol_of(url)
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a") and settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    try:
        return fsspec.filesystem(protocol, **options)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"no filesystem for {protocol}:// URLs ({exc}): install s3fs for s3://") from exc


def copy_out(fs: Any, url: str, out: BinaryIO, max_bytes: int | None = None) -> int:
    """Copy the object at `url` into `out` piece by piece; bytes copied. None of it is held whole in memory."""
    copied = 0
    with fs.open(url, "rb") as f:
        while piece := f.read(COPY_PIECE):
            copied += len(piece)
            if max_bytes is not None and copied > max_bytes:
                raise SourceError(f"{url} is larger than {max_bytes} bytes")
            out.write(piece)
    return copied


def write_pieces(fs: Any, url: str, pieces: Iterator[bytes]) -> None:
    """Write the pieces, in order, as the object at `url`."""
    with fs.open(url, "wb") as f:
        for piece in pieces:
            f.write(piece)


def under(url: str, prefix: str) -> bool:
    """Whether `url` is `prefix` or below it, compared path segment by segment (no `..` allowed)."""
    url, prefix = url.rstrip("/"), prefix.rstrip("/")
    if any(part in (".", "..") for part in url.split("://", 1)[-1].split("/")):
        return False
    return url == prefix or url.startswith(prefix + "/")


def download_tree(settings: Settings, url: str, folder: Path, max_bytes: int) -> int:
    """Copy the object at `url`, or every object below it, into `folder` under their relative keys; how many.

    An object over `max_bytes` is not downloaded: a sparse file of its size stands in for it, so the
    ingest records it as too big (SLUICE_MAX_FILE_BYTES) like a local file, without the transfer. A listing
    over SLUICE_MAX_SOURCE_OBJECTS or SLUICE_MAX_SOURCE_BYTES fails before any download (a worker's disk).
    """
    fs = filesystem(settings, url)
    root = fs._strip_protocol(url).rstrip("/")
    fs.invalidate_cache(root)  # a listing cached by an earlier job of this process may be stale
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    if not found:
        raise SourceError(f"source {url!r} names no object: check the bucket and prefix")
    check_listing(settings, url, found, max_bytes)
    for key, info in found.items():
        rel = key[len(root) + 1 :] if key != root else key.rsplit("/", 1)[-1]
        if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
            continue  # a key no file can be named after is not a document
        _download(fs, key, info, folder / rel, max_bytes)
    return len(found)


def check_listing(settings: Settings, url: str, found: dict[str, dict], max_bytes: int) -> None:
    """SourceError naming the source and the setting when its listing holds too many objects or bytes to fetch."""
    if len(found) > settings.max_source_objects:
        raise SourceError(
            f"source {url!r} holds {len(found)} objects, more than SLUICE_MAX_SOURCE_OBJECTS "
            f"({settings.max_source_objects}): name a narrower prefix, or raise that setting on the workers"
        )
    sizes = (info.get("size") or 0 for info in found.values())
    total = sum(size for size in sizes if size <= max_bytes)  # bigger objects are not fetched (see _download)
    if total > settings.max_source_bytes:
        raise SourceError(
            f"source {url!r} holds {total} bytes to download, more than SLUICE_MAX_SOURCE_BYTES "
            f"({settings.max_source_bytes}): name a narrower prefix, or raise that setting on the workers"
        )


def _download(fs: Any, key: str, info: dict, target: Path, max_bytes: int) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = target.open("wb")
    except (FileExistsError, NotADirectoryError, IsADirectoryError):  # keys `a` and `a/b`: S3 has both, a disk not
        raise SourceError(
            f"object {key!r} collides with another object named like its folder (keys `x` and `x/...`): rename one"
        ) from None
    with out:
        if (info.get("size") or 0) > max_bytes:
            out.truncate(info["size"])
        else:
            copy_out(fs, key, out, max_bytes)


def exists(settings: Settings, url: str) -> bool:
    """Whether the object store holds `url` (an object or a prefix), asked now rather than from a cached listing.

    SourceError when these credentials may not read it, SourceUnavailableError when the store does not answer:
    each names the URL (never a credential) and the fix.
    """
    fs = filesystem(settings, url)
    fs.invalidate_cache(fs._strip_protocol(url))
    try:
        return fs.exists(url)
    except PermissionError:
        raise SourceError(
            f"access to source {url!r} is denied: grant the credentials of the API and workers read and list "
            "access to it (e.g. s3:GetObject and s3:ListBucket)"
        ) from None
    except _store_errors() as exc:
        raise SourceUnavailableError(
            f"the object store of source {url!r} did not answer ({type(exc).__name__}): check that it is up and "
            "SLUICE_S3_ENDPOINT_URL, then try again"
        ) from None


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a store that cannot be reached raises: OSError (fsspec's own), and botocore's errors when installed."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError)
