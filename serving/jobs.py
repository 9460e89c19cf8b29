"""Job rows after the API wrote them: the worker marks a job finished, a periodic sweep expires it.

`jobs` rows used to live forever. Now a task that ends (answered, refused, failed or dead-lettered)
sets `finished_at`, and every worker node's housekeeping timer (the heartbeat step) calls the
`expire_jobs` SQL function, which deletes jobs finished more than SLUICE_JOB_RETENTION_S ago
across tenants. A job still queued or running is never expired. The same sweep expires answers' records
(`expire_answers`, migration 0009) made more than the same retention ago, unless they were rated.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from celery import states

from sluice import metrics
from sluice.db import Database
from sluice.errors import SluiceError

log = logging.getLogger(__name__)

FINISH = "UPDATE jobs SET finished_at = now() WHERE job_id = %s AND finished_at IS NULL"
EXPIRE = "SELECT expire_jobs(%(retention_s)s)"
EXPIRE_ANSWERS = "SELECT expire_answers(%(retention_s)s)"


def tenant_of(payload: Any) -> str | None:
    """The tenant a task's payload names (the API puts it there from the API key), or None."""
    tenant = payload.get("tenant") if isinstance(payload, dict) else None
    return tenant if isinstance(tenant, str) and 0 < len(tenant) <= 63 else None


def mark_finished(db: Database, task_id: str | None, args: Any, state: str | None) -> None:
    """After a task ran: a final state marks its job finished (a retry does not); a failed write is only logged."""
    tenant = tenant_of(args[0]) if isinstance(args, (list, tuple)) and args else None
    if state not in states.READY_STATES or tenant is None or not task_id:
        return
    try:
        db.execute_as(tenant, FINISH, (task_id,))  # one pipelined round trip, after the result is stored
    except (psycopg.Error, SluiceError) as exc:
        log.warning("job %s not marked finished (it will not expire): %s", task_id, exc)


def sweep_interval(retention_s: float) -> float:
    """Seconds between two sweeps: a quarter of the retention, between 1 s and 5 min."""
    return min(max(retention_s / 4, 1.0), 300.0)


def expire(conn: psycopg.Connection, retention_s: float) -> int:
    """Delete jobs finished, and unrated answers made, over `retention_s` ago (all tenants); return the jobs gone."""
    gone = conn.execute(EXPIRE, {"retention_s": retention_s}).fetchone()[0]
    metrics.JOBS_EXPIRED.inc(gone)
    answers = conn.execute(EXPIRE_ANSWERS, {"retention_s": retention_s}).fetchone()[0]
    if answers:
        log.info("expired %d unrated answer records", answers)
    return gone
