"""Uploaded files between the API and the worker that ingests them, by id: in Postgres or an object store.

The API writes each file of an ingest job (`save`) and enqueues only the files' ids; the worker that takes
the job copies them into a temporary folder of its own (`fetch`), ingests it, and once the job has
finished deletes them (`discard`). Nothing is written to, or read from, one host's disk that another
process needs: API and workers share only the database (and, with SLUICE_UPLOAD_STORE=s3://..., a bucket).

Every file has a row in `uploads` (migration 0013) under its tenant's policy, whichever store holds
its bytes: a worker fetches only its job's tenant's files, and the orphan sweep (`expire`) finds every
file, wherever it is.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import psycopg

from sluice.db import Database
from sluice.errors import SourceError
from sluice.objects import copy_out, filesystem, protocol_of, write_pieces
from sluice.settings import Settings

INSERT = "INSERT INTO uploads (tenant_id, upload_id, name, size, location) VALUES (%s, %s, %s, %s, %s)"
PART = "INSERT INTO upload_parts (tenant_id, upload_id, part, data) VALUES (%s, %s, %s, %s)"
PART_MAX = 4 * 1024 * 1024  # upload_parts.data's limit
EXPIRE_BATCH = 1000  # uploads settled per transaction of the sweep
STUCK_SHOWN = 20  # objects a sweep's warning names one by one
EXPIRED = "SELECT tenant_id, upload_id, location, delete_attempts FROM expired_uploads(%s, %s, %s)"
SETTLE = "SELECT settle_expired_uploads(%s, %s::text[], %s::uuid[], %s::boolean[])"
MAX_IDS = 101  # a job's files (at most 100: serving/schemas.py IngestJob.files), plus their metadata's manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewFile:
    """A file to store: its base name, its size in bytes, and its bytes as pieces (each <= 4 MiB)."""

    name: str
    size: int
    pieces: Iterable[bytes]


class Store(ABC):
    """Where the bytes of uploaded files are kept; their rows in `uploads` are the same for every store."""

    @abstractmethod
    def location(self, tenant: str, upload_id: uuid.UUID) -> str | None:
        """The URL the file's bytes will be written to; None: inside the database itself."""

    @abstractmethod
    def write(self, conn: psycopg.Connection, tenant: str, upload_id: uuid.UUID, where: str | None, pieces) -> None:
        """Store the file's pieces, in the tenant's transaction `conn` (its `uploads` row is committed already)."""

    @abstractmethod
    def read(self, conn: psycopg.Connection, upload_id: uuid.UUID, where: str | None, out: BinaryIO) -> None:
        """Copy the file's bytes into `out`, piece by piece."""

    @abstractmethod
    def remove(self, locations: list[str]) -> None:
        """Delete bytes kept outside the database, before their rows' deletion commits; gone ones are no error."""

    @abstractmethod
    def remove_each(self, locations: list[str]) -> dict[str, Exception]:
        """Delete each object on its own; those that could not be deleted, with why (gone ones are no error)."""


# Reading and deleting follow each row's `location`, whichever store this process writes to: an API
# and workers configured apart, or SLUICE_UPLOAD_STORE switched while jobs wait, lose no file.
def _read_parts(conn: psycopg.Connection, upload_id: uuid.UUID, out: BinaryIO) -> None:
    # A server-side cursor: one part at a time crosses the wire, whatever the file's size.
    with conn.cursor(name=f"upload_{upload_id.hex}") as cur:
        cur.itersize = 1
        cur.execute("SELECT data FROM upload_parts WHERE upload_id = %s ORDER BY part", (upload_id,))
        for (data,) in cur:
            out.write(data)


def _objects_of(settings: Settings | None, where: str) -> Settings:
    if settings is None:
        raise SourceError(f"an upload is kept at {where}: give this process the store's settings (SLUICE_S3_*)")
    return settings


class PostgresStore(Store):
    """Bytes in `upload_parts`, pieces of at most 4 MiB, deleted with their row (ON DELETE CASCADE)."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings  # for files an object-store API wrote (their rows have a location)

    def location(self, tenant: str, upload_id: uuid.UUID) -> str | None:
        return None

    def write(self, conn: psycopg.Connection, tenant: str, upload_id: uuid.UUID, where: str | None, pieces) -> None:
        for number, piece in enumerate(pieces):
            conn.execute(PART, (tenant, upload_id, number, piece))

    def read(self, conn: psycopg.Connection, upload_id: uuid.UUID, where: str | None, out: BinaryIO) -> None:
        if where is None:
            _read_parts(conn, upload_id, out)
        else:
            copy_out(filesystem(_objects_of(self.settings, where), where), where, out)

    def remove(self, locations: list[str]) -> None:
        # The database's parts go with their `uploads` rows (ON DELETE CASCADE); objects are deleted here.
        # Rows may name objects in stores of different kinds (SLUICE_UPLOAD_STORE switched while jobs
        # waited): each protocol's objects are deleted by its own filesystem.
        by_protocol: dict[str, list[str]] = {}
        for where in locations:
            by_protocol.setdefault(protocol_of(where), []).append(where)
        for group in by_protocol.values():
            fs = filesystem(_objects_of(self.settings, group[0]), group[0])
            try:
                fs.rm(group)
            except (FileNotFoundError, ValueError):  # a bucket gone, or several (s3fs deletes in bulk from one)
                for where in group:
                    with contextlib.suppress(FileNotFoundError):
                        fs.rm(where)

    def remove_each(self, locations: list[str]) -> dict[str, Exception]:
        # One request per object: s3fs's bulk delete drops a key's own refusal (AccessDenied) without a word.
        failed: dict[str, Exception] = {}
        for where in locations:
            try:
                filesystem(_objects_of(self.settings, where), where).rm_file(where)
            except FileNotFoundError:
                pass
            except Exception as exc:  # noqa: BLE001 - one object's refusal is reported; the others go on
                failed[where] = exc
        return failed


class ObjectStore(PostgresStore):
    """Bytes in an object store (SLUICE_UPLOAD_STORE=s3://bucket/prefix): one object per file, under its tenant."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.base = settings.upload_store

    def location(self, tenant: str, upload_id: uuid.UUID) -> str | None:
        return f"{self.base}/{tenant}/{upload_id.hex}"

    def write(self, conn: psycopg.Connection, tenant: str, upload_id: uuid.UUID, where: str | None, pieces) -> None:
        write_pieces(filesystem(self.settings, str(where)), str(where), iter(pieces))


def upload_store(settings: Settings) -> Store:
    """The store SLUICE_UPLOAD_STORE names: `postgres`, or an object-store URL."""
    return PostgresStore(settings) if settings.upload_store == "postgres" else ObjectStore(settings)


def save(db: Database, store: Store, tenant: str, files: list[NewFile]) -> list[str]:
    """Store the files of one job; their ids. Nothing is left behind if any write fails.

    The rows are committed before any byte is written: an API that dies midway leaves rows the sweep
    (`expire`) finds, never an object no row names. No job names the ids until they are returned.
    """
    rows = [(uuid.uuid4(), f) for f in files]
    with db.tenant(tenant) as conn:
        for upload_id, f in rows:
            conn.execute(INSERT, (tenant, upload_id, f.name, f.size, store.location(tenant, upload_id)))
    ids = [str(upload_id) for upload_id, _ in rows]
    try:
        with db.tenant(tenant) as conn:
            for upload_id, f in rows:
                store.write(conn, tenant, upload_id, store.location(tenant, upload_id), f.pieces)
    except BaseException:
        _quietly_discard(db, store, tenant, ids)
        raise
    return ids


def fetch(db: Database, store: Store, tenant: str, ids: list[str], folder: Path) -> None:
    """Copy the job's files into `folder` (this worker's own), each under its uploaded name."""
    with db.tenant(tenant) as conn:
        rows = conn.execute(
            "SELECT upload_id, name, location FROM uploads WHERE upload_id = ANY(%s::uuid[])", (ids,)
        ).fetchall()
        missing = set(ids) - {str(row[0]) for row in rows}
        if missing:
            raise SourceError(
                f"uploaded files {sorted(missing)} of this job no longer exist (already ingested, or older than "
                "SLUICE_UPLOAD_RETENTION_H): upload them again"
            )
        for upload_id, name, where in rows:
            if Path(name).name != name or name.startswith("."):  # the API checked; the row is not trusted blindly
                raise SourceError(f"uploaded file name {name!r} is not a plain base name: upload it again")
            with (folder / name).open("wb") as out:
                store.read(conn, upload_id, where, out)


def discard(db: Database, store: Store, tenant: str, ids: list[str]) -> int:
    """Delete the job's files (its ingest finished, or it was never queued); how many were still there.

    Objects go before their rows commit: if they cannot be deleted, the rows stay for the sweep to retry.
    """
    with db.tenant(tenant, check=False) as conn:
        rows = conn.execute(
            "DELETE FROM uploads WHERE upload_id = ANY(%s::uuid[]) RETURNING location", (ids,)
        ).fetchall()
        store.remove([row[0] for row in rows if row[0] is not None])
    return len(rows)


def expire(conn: psycopg.Connection, store: Store, retention_h: float, batch: int = EXPIRE_BATCH) -> int:
    """Delete every tenant's uploads older than the retention (orphans: no finished job removed them); how many.

    Each upload is settled on its own, oldest first, a batch per transaction: its row is deleted once its
    object is (one already gone is no error); an object that cannot be deleted keeps its row, is logged, and
    is tried again on the next pass. A pass tries each upload once, so such rows never hold up the others.
    """
    age_s = retention_h * 3600
    started = conn.execute("SELECT now()").fetchone()[0]  # what failed since then, this pass has tried
    gone = 0
    while True:
        with conn.transaction():
            rows = conn.execute(EXPIRED, (age_s, started, batch)).fetchall()
            failed = store.remove_each([row[2] for row in rows if row[2] is not None])
            removed = [row[2] not in failed for row in rows]
            tenants, ids = [row[0] for row in rows], [row[1] for row in rows]
            gone += conn.execute(SETTLE, (age_s, tenants, ids, removed)).fetchone()[0] if rows else 0
        if failed:
            _report_stuck(rows, failed)
        if len(rows) < batch:
            return gone


def _report_stuck(rows: list[tuple], failed: dict[str, Exception]) -> None:
    attempts = {row[2]: row[3] + 1 for row in rows}
    shown = [f"{where} ({type(exc).__name__}: {exc}; attempt {attempts[where]})" for where, exc in failed.items()]
    more = f" and {len(shown) - STUCK_SHOWN} more" if len(shown) > STUCK_SHOWN else ""
    log.warning(
        "%d expired uploads kept, their objects could not be deleted: %s%s. Each pass retries them; delete the "
        "objects by hand (a row whose object is gone goes on the next pass) or let the workers delete them",
        len(failed),
        ", ".join(shown[:STUCK_SHOWN]),
        more,
    )


def pieces_of(data: bytes) -> Iterator[bytes]:
    """`data` in pieces a store takes (for callers that already hold a file whole)."""
    for start in range(0, len(data), PART_MAX):
        yield data[start : start + PART_MAX]


def _quietly_discard(db: Database, store: Store, tenant: str, ids: list[str]) -> None:
    try:
        discard(db, store, tenant, ids)
    except Exception:  # noqa: BLE001 - the original error matters; the sweep removes what is left
        pass


def is_upload_ids(value: Any) -> bool:
    """Whether `value` is a non-empty list (at most MAX_IDS) of upload ids, as the API sends them."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_IDS:
        return False
    try:
        return all(isinstance(v, str) and str(uuid.UUID(v)) == v for v in value)
    except ValueError:
        return False
