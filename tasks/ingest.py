"""Ingest one source into one tenant's index: list, then parse, chunk, embed and store each file.

One bad document never stops the others: its failure is recorded in `ingest_errors` and the
run goes on. Unchanged documents (same bytes, already in this index) are skipped before parsing.

Embedding is batched across documents (`prepare` several, embed their chunks in one model call)
so the model is never idle on small documents; each document is still stored in its own
transaction, so a crash leaves every document either fully old or fully new.

One driver, `run_ingest`, serves every entry point (`sluice ingest`, `sluice demo`, API uploads through
the worker, evaluation indexes, the Prefect flow): list → prepare window by window → store batch by
batch → sync → graph. The flow passes the same steps wrapped as Prefect tasks (`Steps`).

A first ingest into an index that has no HNSW graph yet (no tenant has built it) stores its chunks
without one and builds the graph once at the end, in parallel (`tasks.bulk`), instead of inserting
every chunk into a live graph; until then a dense query of that index is an exact scan (correct, slower).
An index that has its graph gets each chunk inserted into it, as before.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from sluice import filter_columns
from sluice.config import PipelineConfig
from sluice.confine import inside, private_copy, read_inside, too_big
from sluice.db import Database
from sluice.errors import ConfigError, DocumentError, SourceError
from sluice.settings import GRAPH_LOCK_TIMEOUT_S, OWN_GRAPH_ROWS, Settings
from tasks.bulk import ensure_vector_index
from tasks.chunk import Chunk, make_chunker
from tasks.embed import Embedder
from tasks.graph import Graph, deferred_fix
from tasks.indexes import hold_store_lock
from tasks.metadata import MetadataError, check_object, gather, is_metadata_file, store_user_metadata
from tasks.parse import ParsedDocument, content_hash
from tasks.parse_limits import ParseLimits
from tasks.parse_process import parse_bounded, parse_pool
from tasks.store import (
    DocumentState,
    cache_embeddings,
    cached_embeddings,
    delete_documents_except,
    document_state,
    record_error,
    register_index,
    replace_chunks,
    set_collection,
    upsert_document,
    validate_collection,
)
from tasks.text import text_hash

log = logging.getLogger(__name__)

OUTCOMES = ("ingested", "updated", "unchanged", "deleted", "failed")
COUNTS = (*OUTCOMES, "chunks", "embedded", "truncated")


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
    truncated: int = 0  # chunks longer than the embedder's window: embedded from their first tokens only
    errors: list[DocumentError] = field(default_factory=list)
    graph: str = ""  # the index's HNSW graph at the end of the run (a Graph value; "" before that step)

    @property
    def total(self) -> int:
        return self.ingested + self.updated + self.unchanged + self.failed

    def merge(self, other: IngestSummary) -> None:
        """Add another (partial) summary's counts and errors to this one."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors)

    def as_dict(self) -> dict:
        """Counts and error messages, JSON-ready."""
        counts = {k: getattr(self, k) for k in COUNTS}
        return {"run_id": self.run_id, **counts, "graph": self.graph, "errors": [str(e) for e in self.errors]}

    def graph_note(self, index_id: str, tenant: str = "<tenant>") -> str | None:
        """What a deferred graph means and how to build it; None when the graph is there."""
        if self.graph != Graph.DEFERRED:
            return None
        return (
            f"index {index_id}'s HNSW graph was deferred: another transaction held a lock on the chunks table "
            "past SLUICE_GRAPH_BUILD_LOCK_TIMEOUT_S. Every document is stored and searchable (dense search scans "
            f"exactly, slower); {deferred_fix(index_id, tenant)}"
        )


@dataclass
class Prepared:
    """A parsed and chunked document waiting for its vectors."""

    item: SourceFile
    doc: ParsedDocument
    chunks: list[Chunk]
    previous: DocumentState | None
    user_metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settled:
    """How a run settled one document, told to `Run.on_settled` inside the transaction that settled it."""

    source_id: str
    outcome: str
    chunks: int = 0
    truncated: int = 0
    error: str | None = None


Settle = Callable[[psycopg.Connection, Settled], None]


# ---------------------------------------------------------------- listing
def list_source(source: str | Path, confine_to: Path | None = None) -> list[SourceFile]:
    """List the files of a folder (recursively), a single file, or a glob; source ids are relative paths.

    Metadata files (a folder's `_metadata.json`, sidecars `NAME.meta.json`) are not documents: never listed.

    With `confine_to` (a real path: a tenant's folder, for sources named through the API) the source
    must resolve inside it and is a literal path, never a glob; each file is checked when it is read.
    """
    text = str(source)
    if confine_to is not None and not inside(Path(os.path.realpath(text)), confine_to):
        raise SourceError(f"source {text!r} resolves outside this tenant's ingest folder")
    if confine_to is None and any(ch in text for ch in "*?["):
        root = Path(glob.escape(text).split("*")[0]).parent if "*" in text else Path(text).parent
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True) if not Path(p).is_dir())
        if not paths:
            raise SourceError(f"source glob {text!r} matches no files: check the pattern")
        return [SourceFile(p, _source_id(p, root)) for p in paths if not is_metadata_file(p)]
    path = Path(text).expanduser()
    if not path.exists() and not path.is_symlink():
        raise SourceError(f"source {text!r} does not exist: pass a folder, a file or a glob")
    if not path.is_dir():
        return [SourceFile(path, path.name)]
    files = sorted(p for p in _walk(path) if not is_metadata_file(p))
    if not files:
        raise SourceError(f"source folder {text!r} contains no files: add documents or point at another folder")
    return [SourceFile(p, _source_id(p, path)) for p in files]


def _walk(root: Path) -> Iterator[Path]:
    """Every non-directory entry under root, hidden ones excluded; directory symlinks are not followed.

    Broken symlinks and symlink loops are listed too, so they fail loudly (named) at read time.
    """
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield from (Path(folder) / f for f in files if not f.startswith("."))


def _source_id(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# ---------------------------------------------------------------- per-document steps
def read_file(item: SourceFile, max_bytes: int, confine_to: Path | None = None) -> bytes:
    """Read a file's bytes; DocumentError naming it when it is too big, gone, unreadable or (confined) outside."""
    try:
        if confine_to is not None:
            return read_inside(item.path, item.source_id, confine_to, max_bytes)
        size = item.path.stat().st_size
        if size > max_bytes:
            raise too_big(item.source_id, size, max_bytes)
        return item.path.read_bytes()
    except FileNotFoundError as exc:
        raise DocumentError(item.source_id, "read", "the file vanished after listing: re-run the ingest") from exc
    except OSError as exc:
        raise DocumentError(item.source_id, "read", f"cannot read the file: {exc.strerror or exc}") from exc


def prepare_file(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    embedder: Embedder,
    item: SourceFile,
    max_bytes: int,
    collection: str = "default",
    limits: ParseLimits | None = None,
    confine_to: Path | None = None,
    run_metadata: dict[str, Any] | None = None,
) -> Prepared | None:
    """Read, parse (in a bounded child process) and chunk one file; None when this index already holds this version.

    The user's metadata (tasks/metadata.py) is gathered and checked first: refused, nothing is stored.
    """
    data = read_file(item, max_bytes, confine_to)
    digest = content_hash(data)
    with db.tenant(tenant) as conn:
        state = document_state(conn, item.source_id, config.index_id)
        promoted = filter_columns.promoted(conn)
    user = gather(item.path, item.source_id, data, run_metadata, promoted, confine_to)
    if state and state.content_hash == digest and state.indexed_hash == digest:
        with db.tenant(tenant) as conn:
            set_collection(conn, item.source_id, collection)
            store_user_metadata(conn, item.source_id, user)  # a sidecar or manifest may have changed
        return None
    if confine_to is None:
        doc = parse_bounded(item.path, item.source_id, config.parser, data, limits)
    else:  # parsers may re-open the file by name: give them the bytes that passed the check
        with private_copy(item.path.name, data) as copy:
            doc = parse_bounded(copy, item.source_id, config.parser, data, limits)
    doc = dataclasses.replace(doc, metadata={**doc.metadata, **user})  # chunkers may read it (contextual titles)
    try:
        chunks = make_chunker(config.chunker, CachedEncoder(db, tenant, embedder)).split(doc)
    except Exception as exc:
        raise DocumentError(item.source_id, "chunk", f"{type(exc).__name__}: {exc}") from exc
    if not chunks:
        raise DocumentError(item.source_id, "chunk", "the chunker produced no chunks")
    return Prepared(item, doc, chunks, state, user)


def embed_texts(db: Database, tenant: str, embedder: Embedder, texts: list[str]) -> tuple[dict, dict]:
    """Vectors by text hash for texts, from the tenant's embedding cache where possible.

    Returns (all vectors, the freshly computed subset) so the caller can cache the fresh ones.
    """
    key = embedder.identity.key
    hashes = list(dict.fromkeys(text_hash(t) for t in texts))
    with db.tenant(tenant) as conn:
        cached = cached_embeddings(conn, key, hashes)
    by_hash = {text_hash(t): t for t in texts}
    missing = [h for h in hashes if h not in cached]
    fresh: dict[str, np.ndarray] = {}
    if missing:
        vectors = embedder.encode([by_hash[h] for h in missing])
        fresh = dict(zip(missing, vectors, strict=True))
    return {**cached, **fresh}, fresh


class CachedEncoder:
    """The embedder seen through the tenant's embedding cache, for chunkers that embed (semantic).

    Vectors it computes are cached at once, in their own transaction: a cache row names only
    (model key, text hash), so it is valid whatever happens to the document that needed it,
    and a re-chunk or re-ingest of the same sentences never reaches the model again.
    """

    def __init__(self, db: Database, tenant: str, embedder: Embedder):
        self.db = db
        self.tenant = tenant
        self.embedder = embedder

    @property
    def tokenizer(self):
        """The model's own tokenizer (token counting needs no cache)."""
        return self.embedder.tokenizer

    @property
    def encode_lock(self):
        """The embedder's lock: its tokenizer is not thread-safe."""
        return self.embedder.encode_lock

    @property
    def window(self) -> int:
        """The embedder's window in tokens (`max_tokens: auto`)."""
        return self.embedder.window

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors for texts, in order; only texts the cache lacks reach the model."""
        if not texts:
            return np.zeros((0, self.embedder.config.dim), dtype=np.float32)
        vectors, fresh = embed_texts(self.db, self.tenant, self.embedder, texts)
        if fresh:
            with self.db.tenant(self.tenant) as conn:
                cache_embeddings(conn, self.embedder.identity.key, fresh)
        return np.vstack([vectors[text_hash(t)] for t in texts])


def source_uri(item: SourceFile) -> str | None:
    """The file's absolute path, kept so a rollout can re-read it when the parser changes (None: no file)."""
    return str(item.path.resolve()) if item.path.is_file() else None


def store_prepared(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    model_key: str,
    prep: Prepared,
    vectors: dict,
    fresh: dict,
    collection: str = "default",
    settle: Callable[[psycopg.Connection, str], None] | None = None,
) -> str:
    """Write one document, its chunks and its new cache entries in one transaction; return the outcome.

    `settle(conn, outcome)` runs last in that transaction (a shard's ledger row: stored together or not at all).
    """
    hashes = [text_hash(c.embed_text) for c in prep.chunks]
    matrix = np.vstack([vectors[h] for h in hashes])
    previous = prep.previous
    outcome = "updated" if previous and previous.content_hash != prep.doc.content_hash else "ingested"
    try:
        with db.tenant(tenant) as conn:
            hold_store_lock(conn)  # first, before any row lock: a rollout's switch waits for this store
            cache_embeddings(conn, model_key, {h: fresh[h] for h in hashes if h in fresh})
            meta = {**prep.doc.metadata, "source": prep.item.source_id}
            where = source_uri(prep.item)
            document_id, _ = upsert_document(conn, prep.doc, meta, collection, where, storing=config.index_id)
            replace_chunks(conn, document_id, config.index_id, prep.doc.content_hash, prep.chunks, matrix)
            store_user_metadata(conn, prep.item.source_id, prep.user_metadata)
            if settle is not None:
                settle(conn, outcome)
    except (psycopg.DataError, psycopg.IntegrityError) as exc:  # this document's data, not the database
        raise DocumentError(prep.item.source_id, "store", f"{type(exc).__name__}: {exc}") from exc
    return outcome


# ---------------------------------------------------------------- the run
Prepare = Callable[["Run", list[SourceFile]], list["Prepared | DocumentError | None"]]


@dataclass
class Run:
    """Everything one ingest run shares, built once; `on_list`, `on_file` and `on_embed` feed progress displays.

    `window` documents are prepared per step, `concurrency` of them at once (the flow's prepare tasks);
    the direct path prepares one document per step, so a batch is stored as soon as it is full.
    """

    db: Database
    tenant: str
    config: PipelineConfig
    embedder: Embedder
    max_bytes: int
    batch_chunks: int = 256
    on_file: Callable[[SourceFile, str, int], None] | None = None
    on_embed: Callable[[int], None] | None = None
    summary: IngestSummary = field(default_factory=lambda: IngestSummary(run_id=uuid.uuid4().hex))
    collection: str = "default"
    parse_limits: ParseLimits | None = None  # None = the Settings defaults
    confine_to: Path | None = None  # a tenant's folder (API-named sources): no file read outside it
    on_list: Callable[[int], None] | None = None
    window: int = 1
    concurrency: int = 1
    metadata: dict[str, Any] | None = None  # the run's metadata, under every document's own (tasks/metadata.py)
    # Told each settled document inside the transaction that settled it (a shard's ledger, tasks/shards.py).
    on_settled: Settle | None = None
    graph_lock_timeout_s: float = GRAPH_LOCK_TIMEOUT_S  # the graph build's wait for its lock (tasks/graph.py)
    own_graph_rows: int = OWN_GRAPH_ROWS  # the tenant's rows in the index from which it has a graph of its own

    def __post_init__(self) -> None:
        validate_collection(self.collection)
        if self.metadata is not None:
            try:
                check_object(self.metadata)
            except MetadataError as exc:
                raise ConfigError(f"the run's metadata is refused: {exc}") from None

    @classmethod
    def configured(
        cls, settings: Settings, db: Database, tenant: str, config: PipelineConfig, embedder: Embedder, **options
    ) -> Run:
        """A run with the settings' file cap, embedding batch, parse limits and graph lock timeout."""
        limits = ParseLimits.from_settings(settings)
        cap, batch = settings.max_file_bytes, settings.ingest_batch_chunks
        options.setdefault("graph_lock_timeout_s", settings.graph_build_lock_timeout_s)
        options.setdefault("own_graph_rows", settings.own_graph_rows)
        return cls(db, tenant, config, embedder, cap, batch, parse_limits=limits, **options)

    def part(self) -> Run:
        """The same run counting into a summary of its own, without displays: one retried step's share."""
        return dataclasses.replace(self, summary=IngestSummary(self.summary.run_id), on_file=None, on_embed=None)

    def fail(self, err: DocumentError, item: SourceFile) -> None:
        self.summary.failed += 1
        self.summary.errors.append(err)
        with self.db.tenant(self.tenant) as conn:
            record_error(conn, err.source_id, err.stage, err.reason, self.summary.run_id)
            if self.on_settled:
                self.on_settled(conn, Settled(err.source_id, "failed", error=str(err)))
        self._tell(item, "failed", 0)

    def done(self, item: SourceFile, outcome: str, chunks: int = 0) -> None:
        if outcome == "unchanged" and self.on_settled:  # stored documents were settled in their own transaction
            with self.db.tenant(self.tenant) as conn:
                self.on_settled(conn, Settled(item.source_id, outcome))
        setattr(self.summary, outcome, getattr(self.summary, outcome) + 1)
        self.summary.chunks += chunks
        self._tell(item, outcome, chunks)

    def _tell(self, item: SourceFile, outcome: str, chunks: int) -> None:
        if self.on_file:
            self.on_file(item, outcome, chunks)


def begin(run: Run, source: str | Path) -> list[SourceFile]:
    """Check the tenant, list the source, register the index (cheap failures first)."""
    with run.db.tenant(run.tenant):
        pass  # UnknownTenantError before listing or loading anything
    files = list_source(source, run.confine_to)
    parse_pool(run.parse_limits).prestart()  # its imports overlap the model's load (embedder.identity)
    with run.db.tenant(run.tenant) as conn:  # without a graph, if none exists: `build_graph` ends the run
        register_index(conn, run.config, run.embedder.identity, vector_index=False)
    return files


def prepare_window(run: Run, window: list[SourceFile]) -> list[Prepared | DocumentError | None]:
    """Prepare a window of files, `run.concurrency` at a time; a file's DocumentError is its result."""
    if run.concurrency <= 1:
        return [_prepare(run, item) for item in window]
    with ThreadPoolExecutor(max_workers=run.concurrency) as pool:
        return list(pool.map(lambda item: _prepare(run, item), window))


def _prepare(run: Run, item: SourceFile) -> Prepared | DocumentError | None:
    try:
        return prepare_file(
            run.db,
            run.tenant,
            run.config,
            run.embedder,
            item,
            run.max_bytes,
            run.collection,
            run.parse_limits,
            run.confine_to,
            run.metadata,
        )
    except DocumentError as err:
        return err


def flush(run: Run, batch: list[Prepared]) -> None:
    """Embed a batch of prepared documents in one model call, then store each in its own transaction."""
    if not batch:
        return
    try:
        vectors, fresh = embed_texts(run.db, run.tenant, run.embedder, [c.embed_text for p in batch for c in p.chunks])
    except psycopg.OperationalError:
        raise  # the database (its cache lookup), not a document: the caller retries the batch
    except Exception:
        for prep in batch:  # isolate the document the model cannot take
            _flush_one(run, prep)
        return
    _count_embedded(run, len(fresh))
    for prep in batch:
        _store(run, prep, vectors, fresh)


def _flush_one(run: Run, prep: Prepared) -> None:
    try:
        vectors, fresh = embed_texts(run.db, run.tenant, run.embedder, [c.embed_text for c in prep.chunks])
    except psycopg.OperationalError:
        raise
    except Exception as exc:
        run.fail(DocumentError(prep.item.source_id, "embed", f"{type(exc).__name__}: {exc}"), prep.item)
        return
    _count_embedded(run, len(fresh))
    _store(run, prep, vectors, fresh)


def _store(run: Run, prep: Prepared, vectors: dict, fresh: dict) -> None:
    truncated = run.embedder.count_truncated([c.embed_text for c in prep.chunks])
    settle = None
    if run.on_settled is not None:
        on_settled, source_id, chunks = run.on_settled, prep.item.source_id, len(prep.chunks)
        settle = lambda conn, outcome: on_settled(conn, Settled(source_id, outcome, chunks, truncated))  # noqa: E731
    try:
        key = run.embedder.identity.key
        outcome = store_prepared(run.db, run.tenant, run.config, key, prep, vectors, fresh, run.collection, settle)
    except DocumentError as err:
        run.fail(err, prep.item)
    else:
        run.summary.truncated += truncated
        run.done(prep.item, outcome, len(prep.chunks))


def _count_embedded(run: Run, n: int) -> None:
    run.summary.embedded += n
    if run.on_embed:
        run.on_embed(n)


def sync_deletions(run: Run, files: list[SourceFile]) -> int:
    """Delete the collection's documents whose source ids are no longer in the listing."""
    with run.db.tenant(run.tenant) as conn:
        deleted = delete_documents_except(conn, [f.source_id for f in files], run.collection)
    run.summary.deleted += deleted
    return deleted


def build_graph(run: Run) -> Graph:
    """Build the index's HNSW graph from its rows unless it exists (BUILT: a first ingest, or the tenant's own
    graph once its rows reached `own_graph_rows`), waiting a bounded time for its lock (DEFERRED: the next run
    tries again)."""
    with run.db.tenant(run.tenant) as conn:
        dim, timeout = run.embedder.identity.dim, run.graph_lock_timeout_s
        return ensure_vector_index(conn, run.config.index_id, dim, timeout, run.own_graph_rows)


@dataclass(frozen=True)
class Steps:
    """The five steps of a run; the Prefect flow passes the same steps wrapped as tasks with retries."""

    listing: Callable[[Run, str | Path], list[SourceFile]] = begin
    prepare: Prepare = prepare_window
    store: Callable[[Run, list[Prepared]], None] = flush  # counts into run.summary
    sync: Callable[[Run, list[SourceFile]], int] = sync_deletions
    graph: Callable[[Run], Graph] = build_graph


DIRECT = Steps()


def windows(files: list[SourceFile], size: int) -> Iterator[list[SourceFile]]:
    """The listing in windows of `size` files, in listing order."""
    for start in range(0, len(files), size):
        yield files[start : start + size]


def prepared(run: Run, files: Iterable[SourceFile], prepare: Prepare) -> Iterator[tuple[SourceFile, Any]]:
    """Each file with its prepare result (Prepared, DocumentError, or None when unchanged), window by window."""
    for window in windows(list(files), run.window):
        yield from zip(window, prepare(run, window), strict=True)


def store_batches(run: Run, results: Iterable[tuple[SourceFile, Any]]) -> Iterator[list[Prepared]]:
    """Count failed and unchanged files; yield the prepared ones whenever `batch_chunks` chunks wait, then the rest."""
    batch: list[Prepared] = []
    waiting = 0
    for item, result in results:
        if isinstance(result, DocumentError):
            run.fail(result, item)
        elif result is None:
            run.done(item, "unchanged")
        else:
            batch.append(result)
            waiting += len(result.chunks)
        if waiting >= run.batch_chunks:
            yield batch
            batch, waiting = [], 0
    if batch:
        yield batch


def ingest_files(run: Run, files: Iterable[SourceFile], steps: Steps = DIRECT) -> IngestSummary:
    """Prepare files, storing a batch whenever `batch_chunks` chunks are waiting; failures recorded per file."""
    for batch in store_batches(run, prepared(run, files, steps.prepare)):
        steps.store(run, batch)
    return run.summary


def run_ingest(run: Run, source: str | Path, *, sync: bool = False, steps: Steps = DIRECT) -> IngestSummary:
    """The ingest driver: list the source, prepare and store its files, (with `sync`) delete the vanished,
    then build the index's graph if the run stored its first rows without one."""
    files = steps.listing(run, source)
    if run.on_list:
        run.on_list(len(files))
    ingest_files(run, files, steps)
    if sync:
        steps.sync(run, files)
    run.summary.graph = str(steps.graph(run))  # a deferred graph ends the run too: the rows are in
    return run.summary


def ingest_source(
    db: Database,
    tenant: str,
    config: PipelineConfig,
    embedder: Embedder,
    source: str | Path,
    max_bytes: int,
    on_file: Callable[[SourceFile, str, int], None] | None = None,
    *,
    sync: bool = False,
    batch_chunks: int = 256,
    on_embed: Callable[[int], None] | None = None,
    collection: str = "default",
    parse_limits: ParseLimits | None = None,
    confine_to: Path | None = None,
    metadata: dict[str, Any] | None = None,
) -> IngestSummary:
    """Ingest every file of a source into a collection; failures are recorded per document, the run goes on.

    `metadata` is the run's: every document gets it, under its own (manifest, sidecar, front matter).

    `confine_to` (a tenant's real folder) keeps every file read inside it: a file resolving elsewhere
    is recorded as failed, not read. The operator's own local paths (CLI, flows) pass None.
    """
    options = {"collection": collection, "parse_limits": parse_limits, "confine_to": confine_to, "metadata": metadata}
    run = Run(db, tenant, config, embedder, max_bytes, batch_chunks, on_file, on_embed, **options)
    return run_ingest(run, source, sync=sync)
