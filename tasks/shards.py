"""Shards of a distributed ingest run and their ledger: the same driver (`run_ingest`) on a slice of a listing.

A parent lists the source once, splits the listing into shards of N documents and writes one
`ingest_shards` row per shard (migration 0015). Any worker on any host runs a shard with `run_ingest` and
the shard's own listing step (`shard_steps`): it takes the shard over (`claim`: the attempt number is a
fencing token), skips the documents this run already settled, and settles each other document in the
transaction that stores it (`Ledger.settle`, an `ingest_run_documents` row). So a shard lost with its
worker and redelivered is redone elsewhere without storing any document twice, and an attempt that was
replaced while still running (a broker that redelivered early) stops at its next store.

The run's summary is counted from the ledger, so it is the same however many attempts a shard took.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from sluice.errors import DocumentError, SluiceError
from tasks.ingest import DIRECT, IngestSummary, Run, Settled, SourceFile, Steps
from tasks.parse_process import parse_pool
from tasks.store import register_index


class ShardSuperseded(SluiceError):
    """A newer attempt took this shard over (it was redelivered): this attempt stops storing."""


class ShardAlreadyDone(SluiceError):
    """The shard was finished by an earlier attempt (a redelivered message): this one does nothing."""


@dataclass(frozen=True)
class Shard:
    """One slice of a run's listing, as the parent wrote it."""

    run_id: str
    number: int
    files: list[SourceFile]


def new_run_id() -> str:
    """A fresh run id (also the `run_id` of the run's ingest errors)."""
    return uuid.uuid4().hex


def split(files: list[SourceFile], size: int) -> list[list[SourceFile]]:
    """The listing in consecutive shards of at most `size` files."""
    if size < 1:
        raise ValueError(f"shard size must be at least 1, not {size}")
    return [files[i : i + size] for i in range(0, len(files), size)]


def write_shards(conn: psycopg.Connection, run_id: str, shards: list[list[SourceFile]]) -> None:
    """Write one queued ledger row per shard, with the files it names."""
    rows = [(run_id, n, Jsonb([[str(f.path), f.source_id] for f in files])) for n, files in enumerate(shards)]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ingest_shards (tenant_id, run_id, shard, files) "
            "VALUES (current_setting('app.tenant_id'), %s, %s, %s)",
            rows,
        )


def read_shard(conn: psycopg.Connection, run_id: str, number: int) -> Shard:
    """The shard as the parent listed it; SluiceError naming it when no such shard exists for this tenant."""
    row = conn.execute("SELECT files FROM ingest_shards WHERE run_id = %s AND shard = %s", (run_id, number)).fetchone()
    if row is None:
        raise SluiceError(f"no shard {number} of ingest run {run_id} for this tenant: start the run again")
    return Shard(run_id, number, [SourceFile(Path(path), source_id) for path, source_id in row[0]])


class Ledger:
    """One attempt at one shard: takes it over, then settles each document in that document's transaction."""

    def __init__(self, shard: Shard, worker: str):
        self.shard = shard
        self.worker = worker
        self.attempt = 0

    def claim(self, conn: psycopg.Connection) -> set[str]:
        """Take the shard over (waits for the previous attempt's open store); the source ids already settled.

        A shard already done is left as it is (ShardAlreadyDone): its message was redelivered after it finished.
        """
        # The UPDATE waits on a running attempt's row lock, then re-reads `state`: a finish it waited for counts.
        row = conn.execute(
            "UPDATE ingest_shards SET attempt = attempt + 1, state = 'running', worker = %s, started_at = now() "
            "WHERE run_id = %s AND shard = %s AND state <> 'done' RETURNING attempt",
            (self.worker, self.shard.run_id, self.shard.number),
        ).fetchone()
        if row is None:
            raise ShardAlreadyDone(f"shard {self.shard.number} of run {self.shard.run_id} is already done")
        self.attempt = row[0]
        rows = conn.execute(
            "SELECT source_id FROM ingest_run_documents WHERE run_id = %s AND shard = %s",
            (self.shard.run_id, self.shard.number),
        )
        return {r[0] for r in rows}

    def settle(self, conn: psycopg.Connection, settled: Settled) -> None:
        """Record one document's outcome, in its own transaction, if this attempt still holds the shard."""
        self._fence(conn)
        conn.execute(
            "INSERT INTO ingest_run_documents "
            "(tenant_id, run_id, source_id, shard, outcome, chunks, truncated, error, attempt) "
            "VALUES (current_setting('app.tenant_id'), %s, %s, %s, %s, %s, %s, %s, %s)",
            (self.shard.run_id, settled.source_id, self.shard.number, settled.outcome, settled.chunks)
            + (settled.truncated, settled.error, self.attempt),
        )

    def finish(self, conn: psycopg.Connection, index_id: str, embedded: int) -> None:
        """Mark the shard done (its documents are all settled)."""
        self._fence(conn)
        conn.execute(
            "UPDATE ingest_shards SET state = 'done', index_id = %s, embedded = embedded + %s, finished_at = now() "
            "WHERE run_id = %s AND shard = %s",
            (index_id, embedded, self.shard.run_id, self.shard.number),
        )

    def _fence(self, conn: psycopg.Connection) -> None:
        # FOR SHARE: a newer attempt's claim (an UPDATE of this row) waits until this transaction ends.
        row = conn.execute(
            "SELECT attempt FROM ingest_shards WHERE run_id = %s AND shard = %s FOR SHARE",
            (self.shard.run_id, self.shard.number),
        ).fetchone()
        if row is None or row[0] != self.attempt:
            raise ShardSuperseded(f"shard {self.shard.number} of run {self.shard.run_id} was taken over")


def shard_steps(ledger: Ledger) -> Steps:
    """The driver's steps for one attempt at a shard: its listing is the shard's documents not yet settled."""

    def listing(run: Run, _source: object) -> list[SourceFile]:
        with run.db.tenant(run.tenant) as conn:
            settled = ledger.claim(conn)
            register_index(conn, run.config, run.embedder.identity, lock_timeout_s=run.graph_lock_timeout_s)
        parse_pool(run.parse_limits).prestart()
        return [f for f in ledger.shard.files if f.source_id not in settled]

    return dataclasses.replace(DIRECT, listing=listing)


def plain_steps(shard: Shard) -> Steps:
    """Steps for a shard without the ledger (a rebuild for an index switched during the run): its files, all."""

    def listing(run: Run, _source: object) -> list[SourceFile]:
        with run.db.tenant(run.tenant) as conn:
            register_index(conn, run.config, run.embedder.identity, lock_timeout_s=run.graph_lock_timeout_s)
        return shard.files

    return dataclasses.replace(DIRECT, listing=listing)


# ---------------------------------------------------------------- the run's state, from the ledger
@dataclass(frozen=True)
class RunState:
    """How far a run is: shards in each state, the summary of every settled document, the index written."""

    shards: int
    done: int
    summary: IngestSummary
    index_ids: list[str]

    @property
    def finished(self) -> bool:
        return self.done == self.shards


def run_state(conn: psycopg.Connection, run_id: str) -> RunState:
    """The run's shards and its summary counted from the ledger (the same however many attempts it took)."""
    shards, done, embedded, index_ids = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE state = 'done'), coalesce(sum(embedded), 0), "
        "coalesce(array_agg(DISTINCT index_id) FILTER (WHERE index_id IS NOT NULL), '{}') "
        "FROM ingest_shards WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    summary = IngestSummary(run_id=run_id, embedded=int(embedded))
    for outcome, n, chunks, truncated in conn.execute(
        "SELECT outcome, count(*), sum(chunks), sum(truncated) FROM ingest_run_documents WHERE run_id = %s "
        "GROUP BY outcome",
        (run_id,),
    ):
        setattr(summary, outcome, n)
        summary.chunks += int(chunks)
        summary.truncated += int(truncated)
    summary.errors.extend(_errors(conn, run_id))
    return RunState(shards, done, summary, list(index_ids))


def _errors(conn: psycopg.Connection, run_id: str) -> Iterator[DocumentError]:
    """The run's failed documents, as the errors their attempts recorded ("<source>: <stage> failed: <reason>")."""
    rows = conn.execute(
        "SELECT source_id, error FROM ingest_run_documents WHERE run_id = %s AND outcome = 'failed' ORDER BY source_id",
        (run_id,),
    )
    for source_id, error in rows:
        stage, _, reason = (error or "").removeprefix(f"{source_id}: ").partition(" failed: ")
        yield DocumentError(source_id, stage, reason)
