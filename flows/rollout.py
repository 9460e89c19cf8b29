"""Prefect flow `rollout`: the rollout driver (tasks/rollout.py) with one task run per tenant.

Tenants start smallest first, at most SLUICE_ROLLOUT_CONCURRENCY at a time, each retried on transient
database errors (a retried tenant continues where it stopped, as does a rerun of the whole flow after a
crash); one tenant's failure leaves the others running. A progress artifact shows the share of tenants
finished; each tenant's documents done/total/failed are in `sluice champion status` and the
`sluice_rollout_*` metrics. `sluice champion promote` and `rollback` call the same driver directly.
"""

from __future__ import annotations

from collections import deque

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from prefect.futures import wait
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows.ingest import RETRIES, retry_transient
from sluice.db import Database
from sluice.metrics import observe_rollout
from sluice.settings import load_settings
from tasks import rollout_state as state
from tasks.rollout import Rollout, begin, finish, roll_tenant, tenants_in_scope

MAX_PARALLEL = 64  # threads of the task runner; SLUICE_ROLLOUT_CONCURRENCY bounds how many are used


@task(
    name="roll-tenant",
    task_run_name="rollout {tenant}",
    retries=RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_condition_fn=retry_transient,
    cache_policy=NONE,  # the input holds a pool: nothing to hash; the target index is the state
)
def tenant_task(ro: Rollout, tenant: str) -> str:
    return roll_tenant(ro, tenant)


@flow(name="rollout", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL))
def rollout(tenant: str | None = None, reason: str = "", force: bool = False) -> State:
    """Build and switch every tenant (or one) onto its champion's index; resumable, cancellable."""
    settings = load_settings()
    with Database(settings) as db:
        ro = begin(settings, db, tenant, reason, force)
        ro.on_progress = observe_rollout
        tenants = tenants_in_scope(db, tenant)
        get_run_logger().info("rollout %s: %d tenant(s), smallest first", ro.rollout_id, len(tenants))
        _run_window(ro, tenants, settings.rollout_concurrency)
        status = finish(ro)
    counts = ", ".join(f"{o} {sum(v == o for v in ro.outcomes.values())}" for o in sorted(set(ro.outcomes.values())))
    message = f"rollout {ro.rollout_id} {status}: {counts or 'no tenant'}"
    if ro.deferred_graphs:  # switched, searched exactly until the next ingest or `sluice index build-graph`
        message += f"; HNSW graph deferred for {', '.join(sorted(ro.deferred_graphs))}"
    data = {
        "rollout_id": ro.rollout_id,
        "status": status,
        "tenants": ro.outcomes,
        "deferred_graphs": ro.deferred_graphs,
    }
    return Completed(message=message, data=data) if status == "completed" else Failed(message=message, data=data)


def _run_window(ro: Rollout, tenants: list[str], width: int) -> None:
    """Keep `width` tenant tasks running, in the given order, until every tenant is done."""
    waiting, running = deque(tenants), {}
    artifact = create_progress_artifact(0.0, description=f"rollout {ro.rollout_id}: tenants finished")
    while waiting or running:
        while waiting and len(running) < width:
            tenant = waiting.popleft()
            running[tenant_task.submit(ro, tenant)] = tenant
        for future in wait(list(running), timeout=1.0).done:
            tenant = running.pop(future)
            if future.state.is_failed():  # an error roll_tenant does not absorb, after the retries
                get_run_logger().error("tenant %s failed: %s", tenant, future.state.message)
                ro.outcomes[tenant] = "failed"
                state.finish_tenant(ro.db, tenant, ro.rollout_id, "failed", future.state.message or "")
        finished = len(tenants) - len(waiting) - len(running)
        update_progress_artifact(artifact, 100.0 * finished / max(len(tenants), 1))
