"""Ingest one source into one tenant's index: list, then parse, chunk, embed and store each file.

One bad document never stops the others: its failure is recorded in `ingest_errors` and the
run goes on. Unchanged documents (same bytes, already in this index) are skipped before parsing.
"""

from __future__ import annotations

import glob
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.errors import DocumentError, SourceError
from tasks.chunk import make_chunker
from tasks.embed import Embedder
from tasks.parse import content_hash, parse_file
from tasks.store import (
    cache_embeddings,
    cached_embeddings,
    document_state,
    record_error,
    register_index,
    replace_chunks,
    upsert_document,
)
from tasks.text import text_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceFile:
    path: Path
    source_id: str


@dataclass
class IngestSummary:
    run_id: str
    ingested: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    chunks: int = 0
    embedded: int = 0
    errors: list[DocumentError] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ingested + self.updated + self.unchanged + self.failed


def list_source(source: str | Path) -> list[SourceFile]:
    """List the files of a folder (recursively), a single file, or a glob; source ids are relative paths."""
    text = str(source)
    if any(ch in text for ch in "*?["):
        root = Path(glob.escape(text).split("*")[0]).parent if "*" in text else Path(text).parent
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not paths:
            raise SourceError(f"source glob {text!r} matches no files: check the pattern")
        return [SourceFile(p, _source_id(p, root)) for p in paths]
    path = Path(text).expanduser()
    if not path.exists():
        raise SourceError(f"source {text!r} does not exist: pass a folder, a file or a glob")
    if path.is_file():
        return [SourceFile(path, path.name)]
    files = sorted(p for p in _walk(path) if p.is_file())
    if not files:
        raise SourceError(f"source folder {text!r} contains no files: add documents or point at another folder")
    return [SourceFile(p, _source_id(p, path)) for p in files]


def _walk(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if not any(part.startswith(".") for part in path.relative_to(root).parts):
            yield path


def _source_id(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def embed_texts(db: Database, tenant: str, embedder: Embedder, texts: list[str]) -> tuple[np.ndarray, dict]:
    """Vectors for texts, from the tenant's embedding cache where possible; also return the new entries."""
    key = embedder.identity.key
    hashes = [text_hash(t) for t in texts]
    with db.tenant(tenant) as conn:
        cached = cached_embeddings(conn, key, hashes)
    missing = [i for i, h in enumerate(hashes) if h not in cached]
    fresh: dict[str, np.ndarray] = {}
    if missing:
        vectors = embedder.encode([texts[i] for i in missing])
        fresh = {hashes[i]: vectors[j] for j, i in enumerate(missing)}
    rows = [cached.get(h) if h in cached else fresh[h] for h in hashes]
    dim = embedder.config.dim
    return (np.vstack(rows) if rows else np.zeros((0, dim), dtype=np.float32)), fresh


def ingest_file(
    db: Database, tenant: str, config: PipelineConfig, embedder: Embedder, item: SourceFile, max_bytes: int
) -> tuple[str, int, int]:
    """Ingest one file; return (outcome, chunks, texts embedded). Raises DocumentError."""
    try:
        size = item.path.stat().st_size
        if size > max_bytes:
            raise DocumentError(
                item.source_id, "read", f"file is {size} bytes, above the limit of {max_bytes} (SLUICE_MAX_FILE_BYTES)"
            )
        data = item.path.read_bytes()
    except OSError as exc:
        raise DocumentError(item.source_id, "read", f"cannot read the file: {exc.strerror or exc}") from exc
    digest = content_hash(data)
    with db.tenant(tenant) as conn:
        state = document_state(conn, item.source_id, config.index_id)
    if state and state.content_hash == digest and state.indexed_hash == digest:
        return "unchanged", 0, 0
    doc = parse_file(item.path, item.source_id, config.parser, data)
    chunks = make_chunker(config.chunker, embedder).split(doc)
    if not chunks:
        raise DocumentError(item.source_id, "chunk", "the chunker produced no chunks")
    before = embedder.encoded
    try:
        vectors, fresh = embed_texts(db, tenant, embedder, [c.text for c in chunks])
    except Exception as exc:
        raise DocumentError(item.source_id, "embed", f"{type(exc).__name__}: {exc}") from exc
    with db.tenant(tenant) as conn:
        cache_embeddings(conn, embedder.identity.key, fresh)
        document_id, changed = upsert_document(conn, doc, {**doc.metadata, "source": item.source_id})
        replace_chunks(conn, document_id, config.index_id, digest, chunks, vectors)
    outcome = "updated" if state and state.content_hash != digest else "ingested"
    return outcome, len(chunks), embedder.encoded - before


def ingest_source(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    embedder: Embedder,
    source: str | Path,
    max_bytes: int,
    on_file: Callable[[SourceFile, str], None] | None = None,
) -> IngestSummary:
    """Ingest every file of a source; failures are recorded per document and the run goes on."""
    with db.tenant(tenant):
        pass  # fail fast on an unknown tenant, before listing or loading anything
    files = list_source(source)
    summary = IngestSummary(run_id=uuid.uuid4().hex)
    with db.tenant(tenant) as conn:
        register_index(conn, config, embedder.identity)
    for item in files:
        try:
            outcome, n_chunks, n_embedded = ingest_file(db, tenant, config, embedder, item, max_bytes)
        except DocumentError as err:
            summary.failed += 1
            summary.errors.append(err)
            with db.tenant(tenant) as conn:
                record_error(conn, err.source_id, err.stage, err.reason, summary.run_id)
            outcome = "failed"
        else:
            setattr(summary, outcome, getattr(summary, outcome) + 1)
            summary.chunks += n_chunks
            summary.embedded += n_embedded
        if on_file:
            on_file(item, outcome)
    return summary
