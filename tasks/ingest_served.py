"""Ingest into a tenant's served index, even when a rollout switches it while the run goes on.

Every ingestion entry point (`sluice ingest`, the Prefect `ingest` flow and its deployments, API uploads
through the worker) asks `sluice.served` which config serves the tenant and writes that config's index.
The first ingestion pins the tenant to it (`sluice.served.pin`), so a later promotion leaves the tenant
where it is until a rollout has built and switched its new index.

A rollout's switch waits for a catch-up pass (tasks/rollout.py) that covers every document stored before
it. A document prepared for the old index and stored after the switch would miss the new one: so after a
run the served index is read again, and when it changed the run is repeated for the new config (documents
already there are skipped by content hash, so only those stragglers are built).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.errors import SluiceError
from sluice.served import Resolver, pin
from sluice.settings import Settings
from tasks.embed import Embedder, get_embedder
from tasks.ingest import IngestSummary
from tasks.store import register_index, validate_collection

MAX_ROUNDS = 3  # a run that sees more switches than this is racing a loop of rollouts: say so

IngestOnce = Callable[[PipelineConfig, Embedder], IngestSummary]


@dataclass
class ServedRun:
    """The first round's summary (what the user asked for) and every index written, first to last."""

    summary: IngestSummary
    indexes: list[str]

    @property
    def index_id(self) -> str:
        return self.indexes[-1]


def ingest_served(settings: Settings, db: Database, tenant: str, collection: str, ingest_once: IngestOnce) -> ServedRun:
    """Run `ingest_once` with the served config, again with the new one if the served index switched meanwhile."""
    validate_collection(collection)
    resolver = Resolver()
    config = resolver.served(settings, db, tenant, collection).config
    run: ServedRun | None = None
    for _ in range(MAX_ROUNDS):
        embedder = get_embedder(config.embedder, settings.embed_batch_size, settings.data_dir)
        with db.tenant(tenant) as conn:  # also the tenant check, before anything is read
            register_index(conn, config, embedder.identity, lock_timeout_s=settings.graph_build_lock_timeout_s)
            pin(conn, config)
        summary = ingest_once(config, embedder)
        run = run or ServedRun(summary, [])
        run.indexes.append(config.index_id)
        now = resolver.served(settings, db, tenant, collection).config
        if now.index_id == config.index_id:
            return run
        config = now
    raise SluiceError(
        f"tenant {tenant}'s served index switched {MAX_ROUNDS} times during one ingestion "
        f"(indexes {', '.join(run.indexes if run else [])}): run the ingestion again once the rollouts finish"
    )
