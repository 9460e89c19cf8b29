"""The rollout driver: move every tenant in scope onto its target config's index, with no gap in serving.

Per tenant (smallest first, several at once up to a bound; one tenant's failure never stops the others):
1. ask `sluice.served` what the tenant is served and what it should be (its target); nothing to build
   when the target's index is the served one;
2. build the target index beside the served one from the stored documents (tasks/rebuild.py), a batch at
   a time, recording progress (tasks/rollout_state.py) and stopping between batches when cancelled;
3. switch, in one transaction holding the tenant's serving lock exclusively (every document store holds
   it shared): when the target lacks no document, documents ingested meanwhile included, the tenant's
   rows move to the target config and index and its corpus version is bumped, so its answer cache
   starts empty; when something is missing, build it (the catch-up pass) and try again.
   The target's HNSW graph is built before the switch; a build deferred by a lock on `chunks` does not
   hold the switch (see `_roll`): the tenant is switched, its dense search scans exactly until the graph
   is built, and `Rollout.deferred_graphs`, the log and the tenant's rollout row (`sluice champion status`) say so.
Serving reads the old index until that commit and the new one after it, never a half-built one. The old
index keeps its chunks for an instant rollback until `sluice index gc` (or SLUICE_INDEX_RETENTION_DAYS).
What is built is read from the target index itself, so a rollout killed anywhere continues where it
stopped when run again, building each document once. `flows/rollout.py` runs these steps as Prefect
tasks; `sluice champion promote|rollback|rollout` calls `run_rollout`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sluice.champion import store_config
from sluice.db import Database
from sluice.errors import SluiceError
from sluice.served import Resolver, all_tenants
from sluice.settings import Settings
from tasks import rollout_state as state
from tasks.bulk import ensure_vector_index
from tasks.embed import get_embedder
from tasks.graph import Graph, claim_own_graph, index_rows
from tasks.indexes import collect_garbage, hold_switch_lock, switch_served
from tasks.parse_limits import ParseLimits
from tasks.rebuild import Builder, count_lacking, lacking
from tasks.store import record_error, register_index

log = logging.getLogger(__name__)

OnProgress = Callable[[str, int, int, int], None]  # tenant, documents done, total, failed
FINAL = ("switched", "blocked", "failed", "cancelled")


class RolloutCancelled(SluiceError):
    """Someone asked the rollout to stop (`sluice champion cancel`)."""


@dataclass
class Rollout:
    """One rollout run: its id, its scope (None = every tenant) and what every tenant step shares."""

    settings: Settings
    db: Database
    rollout_id: str
    scope: str | None
    force: bool = False  # switch even when some documents could not be built (they are reported)
    on_progress: OnProgress | None = None
    outcomes: dict[str, str] = field(default_factory=dict)
    deferred_graphs: dict[str, str] = field(default_factory=dict)  # switched tenant -> its index without a graph


def begin(settings: Settings, db: Database, scope: str | None, reason: str = "", force: bool = False) -> Rollout:
    """Open (or resume) the rollout of a scope towards its current champion."""
    if scope is not None:
        with db.tenant(scope):
            pass  # UnknownTenantError names the fix before anything is recorded
    target = Resolver().target(settings, db, scope)
    store_config(db, target)
    return Rollout(settings, db, state.open_rollout(db, scope, target, reason), scope, force)


def tenants_in_scope(db: Database, scope: str | None) -> list[str]:
    """The tenants a rollout visits, smallest (fewest documents) first."""
    if scope is not None:
        return [scope]
    tenants = all_tenants(db)
    sizes = {t: db.execute_as(t, "SELECT count(*) FROM documents")[0][0] for t in tenants}
    return sorted(tenants, key=lambda t: (sizes[t], t))


def roll_tenant(ro: Rollout, tenant: str) -> str:
    """Build and switch one tenant; return its outcome (switched, blocked, failed or cancelled)."""
    try:
        outcome = _roll(ro, tenant)
    except RolloutCancelled:
        state.finish_tenant(ro.db, tenant, ro.rollout_id, "cancelled")
        outcome = "cancelled"
    except SluiceError as exc:
        log.error("rollout %s: tenant %s failed: %s", ro.rollout_id, tenant, exc)
        state.finish_tenant(ro.db, tenant, ro.rollout_id, "failed", str(exc))
        outcome = "failed"
    ro.outcomes[tenant] = outcome
    return outcome


def _roll(ro: Rollout, tenant: str) -> str:
    served = Resolver().served(ro.settings, ro.db, tenant)
    target = served.target
    state.start_tenant(ro.db, tenant, ro.rollout_id, served.index_id if served.pinned else None, target)
    embedder = get_embedder(target.embedder, ro.settings.embed_batch_size, ro.settings.data_dir)
    with ro.db.tenant(tenant) as conn:  # a new index gets its graph once built (tasks.bulk), before the switch
        register_index(conn, target, embedder.identity, vector_index=False)
        # A tenant large in the index it is served from is large in the target: its graph of its own is claimed
        # before its rows go in, so none of them is inserted into the graph the target's other tenants share.
        incoming = index_rows(conn, served.index_id) if served.index_id != target.index_id else 0
        claim_own_graph(conn, target.index_id, incoming, ro.settings.own_graph_rows)
    limits = ParseLimits.from_settings(ro.settings)
    reparse = served.config.parser != target.parser
    builder = Builder(ro.db, tenant, target, embedder, reparse, limits, ro.settings.max_file_bytes)
    while True:
        _build_lacking(ro, builder)
        # A graph deferred by a lock on `chunks` (another tenant's open write transaction: tasks/graph.py) does
        # not hold the switch. Without it the target answers the same (its dense search is exact, only slower),
        # while holding the switch would let any tenant's stuck transaction stall every tenant's rollout, the
        # coupling the bounded wait is there to break. One bounded attempt per pass (a catch-up pass tries
        # again); after the switch the next ingest into the index, or `sluice index build-graph`, builds it.
        with ro.db.tenant(tenant) as conn:
            timeout, own_rows = ro.settings.graph_build_lock_timeout_s, ro.settings.own_graph_rows
            graph = ensure_vector_index(conn, target.index_id, embedder.identity.dim, timeout, own_rows)
        outcome = _switch(ro, builder, graph)
        if outcome is not None:
            if outcome == "switched" and graph == Graph.DEFERRED:
                ro.deferred_graphs[tenant] = target.index_id
                note = state.graph_deferred(tenant, target.index_id)
                log.warning("rollout %s: tenant %s %s", ro.rollout_id, tenant, note)
            return outcome


def _build_lacking(ro: Rollout, builder: Builder) -> None:
    """One pass over the documents the target lacks, a batch at a time (documents that failed are skipped)."""
    after, recorded = 0, set(builder.failures)
    total, done = _counts(ro, builder)
    while True:
        if state.cancel_requested(ro.db, ro.rollout_id):
            raise RolloutCancelled(f"rollout {ro.rollout_id} was cancelled")
        with ro.db.tenant(builder.tenant) as conn:
            docs = lacking(conn, builder.target.index_id, after, ro.settings.rollout_batch_docs, list(builder.failures))
        if not docs:
            return
        done += builder.build(docs)
        after = docs[-1].document_id
        with ro.db.tenant(builder.tenant) as conn:
            for document_id in set(builder.failures) - recorded:
                err = builder.failures[document_id]
                record_error(conn, err.source_id, err.stage, err.reason, ro.rollout_id)
            state.progress(conn, ro.rollout_id, total, done, len(builder.failures))
        recorded = set(builder.failures)
        _tell(ro, builder.tenant, done, total, len(builder.failures))


def _counts(ro: Rollout, builder: Builder) -> tuple[int, int]:
    """(documents, documents already in the target) of the tenant."""
    with ro.db.tenant(builder.tenant) as conn:
        total = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        done = total - count_lacking(conn, builder.target.index_id)
        state.progress(conn, ro.rollout_id, total, done, len(builder.failures))
    _tell(ro, builder.tenant, done, total, len(builder.failures))
    return total, done


def _switch(ro: Rollout, builder: Builder, graph: Graph) -> str | None:
    """Switch the tenant if its target is complete (None: documents arrived meanwhile, build them first).

    A switch without the target's graph says so on the tenant's row, in the switch's own transaction.
    """
    failed = list(builder.failures)
    with ro.db.tenant(builder.tenant) as conn:
        hold_switch_lock(conn)  # no document store commits until this transaction ends
        if count_lacking(conn, builder.target.index_id, failed):
            return None
        total = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        if failed and not ro.force:
            state.progress(conn, ro.rollout_id, total, total - len(failed), len(failed), "blocked")
            return "blocked"
        switch_served(conn, builder.target)
        state.progress(conn, ro.rollout_id, total, total - len(failed), len(failed), "switched")
        if graph == Graph.DEFERRED:
            state.note(conn, ro.rollout_id, state.graph_deferred(builder.tenant, builder.target.index_id))
    _tell(ro, builder.tenant, total - len(failed), total, len(failed))
    return "switched"


def _tell(ro: Rollout, tenant: str, done: int, total: int, failed: int) -> None:
    if ro.on_progress:
        ro.on_progress(tenant, done, total, failed)


def finish(ro: Rollout) -> str:
    """Close the rollout with an overall status from its tenants' outcomes; apply the index retention."""
    outcomes = set(ro.outcomes.values())
    status = "cancelled" if "cancelled" in outcomes else "completed" if outcomes <= {"switched"} else "partial"
    state.close_rollout(ro.db, ro.rollout_id, status)
    if ro.settings.index_retention_days is not None:
        collect_garbage(ro.settings, ro.db, sorted(ro.outcomes), ro.settings.index_retention_days)
    return status


def run_rollout(
    settings: Settings,
    db: Database,
    scope: str | None = None,
    reason: str = "",
    *,
    force: bool = False,
    concurrency: int | None = None,
    on_progress: OnProgress | None = None,
) -> Rollout:
    """Roll every tenant in scope out to its target, `concurrency` tenants at a time (CLI; the flow runs the same)."""
    ro = begin(settings, db, scope, reason, force)
    ro.on_progress = on_progress
    tenants = tenants_in_scope(db, scope)
    with ThreadPoolExecutor(max_workers=concurrency or settings.rollout_concurrency) as pool:
        list(pool.map(lambda tenant: _guarded(ro, tenant), tenants))
    finish(ro)
    return ro


def _guarded(ro: Rollout, tenant: str) -> str:
    """roll_tenant, with any other error recorded as that tenant's failure (the others go on)."""
    try:
        return roll_tenant(ro, tenant)
    except Exception as exc:
        log.exception("rollout %s: tenant %s failed", ro.rollout_id, tenant)
        state.finish_tenant(ro.db, tenant, ro.rollout_id, "failed", f"{type(exc).__name__}: {exc}")
        ro.outcomes[tenant] = "failed"
        return "failed"
