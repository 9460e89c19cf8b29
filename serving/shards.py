"""Distributed ingestion over the Celery `ingest` queue: a parent fans a source out in shards, workers run them.

The parent (`ingest_distributed`: the Prefect flow's `shard_size` option, `sluice ingest --shard-size`, the
benchmark) lists the source once, writes the shards to the ledger (tasks/shards.py) and sends one
`sluice.ingest_shard` task per shard. Each worker process runs `run_shard`: the ingest driver of
tasks/ingest.py on that shard's documents, into the tenant's served index (tasks/ingest_served.py), as the
single-process paths do. The parent waits on the ledger, not on results, and counts the run's summary
from it. Why Celery and not a Dask/Ray task runner: docs/deploy.md, "Distributed ingestion".

A shard names files by path: every worker host must reach them (a shared mount, or an object store).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from celery import Celery, states

from serving.celery_app import INGEST_QUEUE, SHARD_TASK, create_celery
from serving.outcome import TaskOutcome
from sluice import metrics
from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.errors import QueryError, SluiceError
from sluice.settings import Settings
from tasks.ingest import IngestSummary, Run, SourceFile, list_source, run_ingest
from tasks.ingest_served import ingest_served
from tasks.shards import (
    Ledger,
    RunState,
    ShardAlreadyDone,
    ShardSuperseded,
    new_run_id,
    plain_steps,
    read_shard,
    run_state,
    shard_steps,
    write_shards,
)
from tasks.shards import split as split_shards
from tasks.store import delete_documents_except, validate_collection

# The parent looks at the shards' task results (a dead-lettered shard, a refused one) every this many polls.
RESULT_CHECK_EVERY = 10


def shard_task_id(run_id: str, number: int) -> str:
    """The task id of a shard: a redelivery keeps it, a second send of the same shard is the same job."""
    return f"{run_id}-shard-{number}"


# ---------------------------------------------------------------- the worker's side
def run_shard(settings: Settings, db: Database, payload: dict) -> dict:
    """Run one shard with the ingest driver; the shard's counts (from the ledger) when it is done."""
    tenant, run_id, number, collection = _checked(payload)
    with db.tenant(tenant) as conn:
        shard = read_shard(conn, run_id, number)
    ledger = Ledger(shard, f"{socket.gethostname()}:{os.getpid()}")
    rounds: list[str] = []

    def once(config: PipelineConfig, embedder) -> IngestSummary:
        # Only the first round is the shard's: later ones rebuild it for an index switched meanwhile.
        first = not rounds
        rounds.append(config.index_id)
        run = Run.configured(
            settings, db, tenant, config, embedder, collection=collection,
            summary=IngestSummary(run_id), on_settled=ledger.settle if first else None,
        )  # fmt: skip
        return run_ingest(run, run_id, steps=shard_steps(ledger) if first else plain_steps(shard))

    try:
        served = ingest_served(settings, db, tenant, collection, once)
    except ShardSuperseded:
        return {"run_id": run_id, "shard": number, "attempt": ledger.attempt, "superseded": True}
    except ShardAlreadyDone:  # a redelivered message of a finished shard: nothing to do, nothing stored
        return {"run_id": run_id, "shard": number, "already_done": True}
    with db.tenant(tenant) as conn:
        ledger.finish(conn, served.index_id, served.summary.embedded)
    counts = {k: getattr(served.summary, k) for k in ("ingested", "updated", "unchanged", "failed", "chunks")}
    for outcome in ("ingested", "updated", "unchanged", "failed"):
        metrics.INGEST_DOCS.labels(outcome).inc(counts[outcome])
    return {"run_id": run_id, "shard": number, "attempt": ledger.attempt, "index_id": served.index_id, **counts}


def _checked(payload: object) -> tuple[str, str, int, str]:
    """(tenant, run id, shard, collection) of a shard task's payload; QueryError when it is not one."""
    if not isinstance(payload, dict) or not isinstance(payload.get("tenant"), str):
        raise QueryError(
            "an ingest shard's argument must name its tenant: start runs with `sluice ingest --shard-size`"
        )
    run_id, number = payload.get("run_id"), payload.get("shard")
    if not isinstance(run_id, str) or not isinstance(number, int) or number < 0:
        raise QueryError("an ingest shard names its run (`run_id`) and its shard number (`shard` >= 0)")
    return payload["tenant"], run_id, number, validate_collection(payload.get("collection", "default"))


# ---------------------------------------------------------------- the parent's side
def start_run(app: Celery, db: Database, tenant: str, source: str | Path, shard_size: int, collection: str) -> tuple:
    """List the source, write its shards and send one task per shard: (run id, the listing)."""
    files = list_source(source)
    shards = split_shards(largest_first(files), shard_size)
    run_id = new_run_id()
    with db.tenant(tenant) as conn:
        write_shards(conn, run_id, shards)
    for number in range(len(shards)):
        payload = {"tenant": tenant, "run_id": run_id, "shard": number, "collection": collection}
        headers = {metrics.ENQUEUED_AT: time.time()}
        task_id = shard_task_id(run_id, number)
        app.send_task(SHARD_TASK, args=[payload], task_id=task_id, queue=INGEST_QUEUE, headers=headers)
    return run_id, files


def largest_first(files: list[SourceFile]) -> list[SourceFile]:
    """The listing, largest files first: shards are taken in order, so the run ends on small ones (less tail)."""

    def size(item: SourceFile) -> int:
        try:
            return item.path.stat().st_size
        except OSError:
            return 0  # read (and failed, named) by the worker

    return sorted(files, key=size, reverse=True)


def wait_run(app: Celery, db: Database, tenant: str, run_id: str, timeout_s: float, poll_s: float = 0.5) -> RunState:
    """Wait until every shard of the run is done; SluiceError naming a shard that failed for good, or on timeout."""
    deadline = time.monotonic() + timeout_s
    polls = 0
    while True:
        with db.tenant(tenant) as conn:
            state = run_state(conn, run_id)
        if state.finished:
            return state
        polls += 1
        if polls % RESULT_CHECK_EVERY == 0:
            _raise_failed_shards(app, db, tenant, run_id)
        if time.monotonic() > deadline:
            raise SluiceError(
                f"ingest run {run_id}: {state.done} of {state.shards} shards done after {timeout_s:.0f} s: "
                "are ingest workers running (`sluice worker --queues ingest`)?"
            )
        time.sleep(poll_s)


def _raise_failed_shards(app: Celery, db: Database, tenant: str, run_id: str) -> None:
    with db.tenant(tenant) as conn:
        waiting = [r[0] for r in conn.execute(
            "SELECT shard FROM ingest_shards WHERE run_id = %s AND state <> 'done' ORDER BY shard", (run_id,)
        )]  # fmt: skip
    for number in waiting:
        result = app.AsyncResult(shard_task_id(run_id, number))
        if result.state == states.FAILURE:
            raise SluiceError(
                f"ingest run {run_id}: shard {number} failed on every retry ({result.result!r}): "
                "see `sluice jobs dead`; run the ingest again (documents already stored are skipped as unchanged)"
            )
        if result.state == states.SUCCESS:
            outcome = TaskOutcome.from_wire(result.result)
            if outcome.error is not None:
                raise SluiceError(f"ingest run {run_id}: shard {number} refused: {outcome.error.message}")


def ingest_distributed(
    settings: Settings,
    db: Database,
    tenant: str,
    source: str | Path,
    shard_size: int,
    *,
    sync: bool = False,
    collection: str = "default",
    timeout_s: float = 86_400.0,
) -> RunState:
    """Ingest a source over the `ingest` queue in shards of `shard_size` documents; the run's state when done."""
    validate_collection(collection)
    with db.tenant(tenant):
        pass  # UnknownTenantError before anything is listed or sent
    app = create_celery(settings)
    try:
        run_id, files = start_run(app, db, tenant, source, shard_size, collection)
        state = wait_run(app, db, tenant, run_id, timeout_s)
    finally:
        app.close()
    if sync:
        with db.tenant(tenant) as conn:
            state.summary.deleted = delete_documents_except(conn, [f.source_id for f in files], collection)
    return state
